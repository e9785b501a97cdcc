"""The pure train step on the real checkpoint and real 16-shot SST-2."""

import functools

import jax
import numpy as np
import pytest

from fttpu import classifier, methods, optim, step as step_lib, trainer
from fttpu.data import pipeline
from fttpu.methods import masks
from fttpu.state import TrainState


@pytest.fixture(scope="module")
def setup(minilm, sst2_config, sst2_16shot):
  """(make_state, jitted donated step, loss_fn, data) for full fine-tuning, compiled once."""
  # No weight decay: only gradients may move a parameter, so an unchanged leaf means no gradient reached it.
  config = sst2_config.copy_and_resolve_references()
  config.optimizer.weight_decay = 0.0
  run = trainer.setup(config, minilm, functools.partial(batch_at, sst2_16shot), {}, total_steps=15)
  train_step = jax.jit(functools.partial(step_lib.train_step, method=run.method, loss_fn=run.loss_fn), donate_argnums=0)
  make_state = lambda: TrainState.create(jax.tree_util.tree_map(np.array, run.tree), run.method.tx, 42)
  return make_state, train_step, run.loss_fn, sst2_16shot


def batch_at(data, step):
  return {**pipeline.train_batch(data.train, step, 8, seed=42), **data.prompts}


def full_train_loss(loss_fn, params, data):
  batch = {
    "input_ids": data.train.input_ids,
    "attention_mask": data.train.attention_mask,
    "labels": data.train.labels,
    "weights": np.ones(len(data.train), np.float32),
    **data.prompts,
  }
  return float(jax.jit(loss_fn)(params, batch)[0])


def test_full_changes_every_parameter_and_lowers_the_training_loss(setup, minilm):
  make_state, train_step, loss_fn, data = setup
  before = jax.tree_util.tree_map(np.array, minilm.params)
  loss_before = full_train_loss(loss_fn, {"model": before}, data)
  state = make_state()
  state, first_metrics = train_step(state, batch_at(data, 0))
  unchanged = [
    masks.path_name(path)
    for (path, a), b in zip(
      jax.tree_util.tree_leaves_with_path(before), jax.tree_util.tree_leaves(state.params["model"])
    )
    if np.array_equal(a, np.asarray(b))
  ]
  assert not unchanged, f"full fine-tuning left these leaves unchanged: {unchanged}"
  for step in range(1, 15):
    state, step_metrics = train_step(state, batch_at(data, step))
  assert int(state.step) == 15
  loss_after = full_train_loss(loss_fn, state.params, data)
  assert np.isfinite(first_metrics["train/loss"]) and loss_after < 0.5 * loss_before, (loss_before, loss_after)


def test_padding_to_max_length_changes_neither_the_loss_nor_its_gradient(setup, minilm):
  """A training batch trimmed to its split's longest example (data.pad_to_multiple_of) and the same batch
  padded to max_length's 64 tokens: the same loss and gradient, up to float32 rounding."""
  _, _, loss_fn, data = setup
  batch = batch_at(data, 0)
  columns = batch["input_ids"].shape[1]
  pad = lambda x: np.pad(x, ((0, 0), (0, 64 - columns)))
  padded = {**batch, "input_ids": pad(batch["input_ids"]), "attention_mask": pad(batch["attention_mask"])}
  value_and_grad = jax.jit(jax.value_and_grad(lambda params, b: loss_fn(params, b)[0]))
  (loss, grads), (padded_loss, padded_grads) = (value_and_grad({"model": minilm.params}, b) for b in (batch, padded))
  assert columns == 48 and float(loss) > 0.1  # SST-2's 16-shot sample: 40 tokens at most
  np.testing.assert_allclose(padded_loss, loss, rtol=1e-5)
  largest = max(float(np.abs(g).max()) for g in jax.tree_util.tree_leaves(grads))
  for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(padded_grads)):
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5 * largest)  # (the key biases' gradient is 0: 1e-11 noise)


def test_zero_shot_step_keeps_params_bit_identical_with_no_optimizer_state(minilm, sst2_config, sst2_16shot):
  config = sst2_config.copy_and_resolve_references()
  config.method = "zero_shot"
  run = trainer.setup(config, minilm, functools.partial(batch_at, sst2_16shot), {}, total_steps=10)
  method, loss_fn = run.method, run.loss_fn
  assert not method.trains
  state = TrainState.create(jax.tree_util.tree_map(np.array, run.tree), method.tx, 42)
  state_entries = sum(np.size(x) for x in jax.tree_util.tree_leaves(state.opt_state) if np.ndim(x) > 0)
  assert state_entries == 0, "frozen leaves must carry no optimizer state (only scalar step counters)"
  new_state, _ = jax.jit(functools.partial(step_lib.train_step, method=method, loss_fn=loss_fn))(
    state, batch_at(sst2_16shot, 0)
  )
  for a, b in zip(jax.tree_util.tree_leaves(minilm.params), jax.tree_util.tree_leaves(new_state.params["model"])):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_full_optimizer_state_covers_exactly_the_params(minilm, sst2_config):
  method = methods.get_method(sst2_config, optim.make_optimizer(sst2_config.optimizer, 10), minilm)
  state = method.tx.init({"model": minilm.params})
  param_size = sum(p.size for p in jax.tree_util.tree_leaves(minilm.params))
  state_size = sum(np.size(x) for x in jax.tree_util.tree_leaves(state) if np.ndim(x) > 0)
  assert state_size == 2 * param_size  # Adam's two moments per trainable entry, nothing for frozen ones


def test_eval_padding_rows_and_columns_do_not_count(setup, minilm):
  """Accuracy over 20 examples is the same in batches of 20, of 8 (4 padding rows) and of 5, padded to the
  split's 64 tokens, and in batches of 8 trimmed each to its own longest example (a multiple of 16)."""
  from fttpu import train
  from fttpu.sharding import make_mesh

  _, _, _, data = setup
  logits_fn = classifier.make_classifier(minilm.module, "similarity", 20.0).logits
  eval_step = jax.jit(functools.partial(step_lib.eval_step, logits_fn=logits_fn))
  subset = data.test.take(np.arange(20))
  results = [
    train.evaluate(eval_step, {"model": minilm.params}, subset, data.prompts, size, make_mesh({"data": -1}), multiple)
    for size, multiple in ((20, 0), (8, 0), (5, 0), (8, 16))
  ]
  assert subset.input_ids.shape[1] == 64 and len({r["accuracy"] for r in results}) == 1
  np.testing.assert_allclose([r["loss"] for r in results], results[0]["loss"], rtol=1e-5)
