"""The pure train and eval steps: (state, batch) -> (state, metrics). Every method uses these."""

import jax
import jax.numpy as jnp

from fttpu import classifier
from fttpu.methods import masks
from fttpu.state import TrainState


def train_step(
  state: TrainState, batch: dict, *, method, loss_fn, skip_nonfinite: bool = False, micro_batches: int = 1
):
  """One update: estimate gradients of the trainable leaves, transform them under the mask, apply.

  A step whose loss or gradient is not finite (NaN or Inf) changes no parameter and no optimizer
  state, and reports train/nonfinite = 1. With `skip_nonfinite` its step still counts (the batch is
  skipped); otherwise the step counter stays too, so the returned state is the last good one.
  `micro_batches` (train.grad_accum_steps) splits the batch for the estimate; the step is still one update.
  """
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  labels = method.labels(state.params)
  view_loss = lambda tree, batch, rng: loss_fn(method.view(tree), batch, rng)
  loss, aux, grads = method.estimate(view_loss, state.params, labels, batch, rng, micro_batches=micro_batches)
  metrics = {"train/loss": loss, **{f"train/{name}": value for name, value in aux.items()}}
  finite = all_finite(loss, aux)
  metrics["train/nonfinite"] = 1 - finite.astype(jnp.int32)
  new_state = apply_gradients(state, grads, labels, method.tx, finite)
  if not skip_nonfinite:
    new_state = new_state.replace(step=jnp.where(finite, new_state.step, state.step))
  return new_state, metrics


def all_finite(loss, aux: dict) -> jax.Array:
  """Whether the loss and every metric the estimate reports are finite. An estimate reports a summary
  of its gradient (autodiff's grad_norm, zeroth-order's projected gradients) that is finite exactly
  when the gradient is."""
  values = [loss] + list(aux.values())
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in values]))


ROUNDING_STREAM = 0x5EED  # folded into the step key for stochastic rounding of low-precision weights


def apply_gradients(state: TrainState, grads, labels, tx, finite=True) -> TrainState:
  """The optimizer's update of the trainable leaves; frozen leaves are returned as they are.
  Weights stored in bfloat16/float16 are rounded stochastically (masks.apply_updates).
  Where `finite` is false, params and optimizer state stay as they were (element-wise selects,
  which fuse into the update and keep it in place on donated buffers)."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  # float32 gradients of half-precision weights (zeroth-order's) must not promote the state's dtype
  opt_state = jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), opt_state, state.opt_state)
  key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step), ROUNDING_STREAM)
  params = masks.apply_updates(state.params, updates, labels, key)
  if finite is not True:
    keep = lambda new, old: jnp.where(finite, new, old)
    params = jax.tree_util.tree_map(
      lambda label, new, old: keep(new, old) if label == masks.TRAIN else old, labels, params, state.params
    )
    opt_state = jax.tree_util.tree_map(keep, opt_state, state.opt_state)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state)


def eval_step(tree, batch: dict, *, logits_fn):
  """Weighted sums over one batch (no dropout): cross-entropy, correct predictions, examples.
  `tree` is a method's merged tree: {"model": params, "head"?: ...}."""
  return classifier.weighted_sums(logits_fn(tree, batch, None), batch)
