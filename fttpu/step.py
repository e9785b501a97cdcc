"""The pure train and eval steps: (state, batch) -> (state, metrics). Every method uses these."""
import jax
import jax.numpy as jnp
import optax

from fttpu.methods import masks
from fttpu.state import TrainState


def train_step(state: TrainState, batch: dict, *, method, loss_fn):
  """One update: estimate gradients, transform them under the mask, apply."""
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  loss, aux, grads = method.estimate(loss_fn, state.params, batch, rng)
  updates, opt_state = method.tx.update(grads, state.opt_state, state.params)
  params = masks.apply_updates(state.params, updates, method.labels(state.params))
  metrics = {"train/loss": loss, "train/accuracy": aux["accuracy"], "train/grad_norm": optax.global_norm(grads)}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch: dict, *, logits_fn):
  """Weighted sums over one batch: correct predictions, examples, and cross-entropy."""
  logits = logits_fn(params, batch, None)
  weights = batch["weights"]
  correct = (logits.argmax(-1) == batch["labels"]).astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
  return {"correct": (correct * weights).sum(), "count": weights.sum(), "loss_sum": (losses * weights).sum()}
