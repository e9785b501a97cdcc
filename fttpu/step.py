"""The pure train and eval steps: (state, batch) -> (state, metrics). Every method uses these."""
import jax
import optax

from fttpu import classifier
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
  """Weighted sums over one batch (no dropout): cross-entropy, correct predictions, examples."""
  return classifier.weighted_sums(logits_fn(params, batch, None), batch)
