"""The pure train and eval steps: (state, batch) -> (state, metrics). Every method uses these."""
import jax

from fttpu import classifier
from fttpu.methods import masks
from fttpu.state import TrainState


def train_step(state: TrainState, batch: dict, *, method, loss_fn):
  """One update: estimate gradients of the trainable leaves, transform them under the mask, apply."""
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  labels = method.labels(state.params)
  view_loss = lambda tree, batch, rng: loss_fn(method.view(tree), batch, rng)
  loss, aux, grads = method.estimate(view_loss, state.params, labels, batch, rng)
  metrics = {"train/loss": loss, **{f"train/{name}": value for name, value in aux.items()}}
  return apply_gradients(state, grads, labels, method.tx), metrics


ROUNDING_STREAM = 0x5eed  # folded into the step key for stochastic rounding of low-precision weights


def apply_gradients(state: TrainState, grads, labels, tx) -> TrainState:
  """The optimizer's update of the trainable leaves; frozen leaves are returned as they are.
  Weights stored in bfloat16/float16 are rounded stochastically (masks.apply_updates)."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step), ROUNDING_STREAM)
  params = masks.apply_updates(state.params, updates, labels, key)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state)


def eval_step(tree, batch: dict, *, logits_fn):
  """Weighted sums over one batch (no dropout): cross-entropy, correct predictions, examples.
  `tree` is a method's merged tree: {"model": params, "head"?: ...}."""
  return classifier.weighted_sums(logits_fn(tree, batch, None), batch)
