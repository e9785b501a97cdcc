"""The method interface: a bundle of pure functions that the one train step uses."""
from typing import Callable, NamedTuple

import jax
import optax


class Method(NamedTuple):
  name: str
  prepare: Callable   # (params, rng) -> params with any added leaves
  labels: Callable    # params -> tree of "train"/"freeze": the optax parameter mask
  tx: optax.GradientTransformation
  estimate: Callable  # (loss_fn, params, batch, rng) -> (loss, aux, grads)
  merge: Callable     # params -> plain model params for evaluation and export
  trains: bool        # False for evaluation-only methods


def autodiff(loss_fn, params, batch, rng):
  """Exact gradients by reverse-mode autodiff (dropout on: rng is given)."""
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
  return loss, aux, grads


def identity(params, *unused):
  return params
