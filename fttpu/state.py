"""The training state pytree."""

from typing import Any

import flax.struct
import jax
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any  # nested dict of arrays
  opt_state: Any  # only trainable leaves carry state (optax.partition)
  rng: jax.Array  # raw uint32 key data; per-step keys are fold_in(rng, step)

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation, seed: int) -> "TrainState":
    import jax.numpy as jnp

    return cls(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      rng=jax.random.key_data(jax.random.key(seed)),
    )
