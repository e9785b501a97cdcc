"""train.grad_accum_steps: a step over micro-batches is the whole batch's step (tiny BERT, dropout off).

Autodiff accumulates the micro-batches' gradients weighted by their share of the batch's example
weights; the zeroth-order estimate evaluates both probes on every micro-batch with the same z and
projects the averaged losses, so each step still records one projected gradient per sample.
"""

import functools

import jax
import numpy as np
import pytest

from configs import fewshot
from fttpu import methods, step as step_lib
from fttpu.data import pipeline
from fttpu.state import TrainState
from tests.conftest import tiny_batch
from tests.test_methods import build


def batch_with_padding(step: int) -> dict:
  """A batch of 8 whose last row weighs 0 (as an evaluation's padding does): micro-batches weigh unequally."""
  batch = tiny_batch(step)
  batch["weights"] = np.array([1, 1, 1, 1, 1, 1, 1, 0], np.float32)
  return batch


def one_step(tiny, method_name: str, micro_batches: int):
  """(parameters before, after one SGD step, the step's metrics, the estimate's gradients), flattened."""
  config = fewshot.get_config(f"method={method_name}")
  config.optimizer.name = "sgd"
  config.train.grad_accum_steps = micro_batches
  methods.validate(config)
  method, tree, loss_fn = build(tiny, config, batches=batch_with_padding, weight_decay=0.0)
  state = TrainState.create(jax.tree_util.tree_map(np.array, tree), method.tx, 0)
  labels = method.labels(tree)
  view_loss = lambda t, b, r: loss_fn(method.view(t), b, r)
  estimate = jax.jit(
    lambda t, b: method.estimate(view_loss, t, labels, b, jax.random.key(1), micro_batches=micro_batches)
  )
  grads = estimate(tree, batch_with_padding(0))[2]
  step = jax.jit(functools.partial(step_lib.train_step, method=method, loss_fn=loss_fn, micro_batches=micro_batches))
  after, metrics = step(state, batch_with_padding(0))
  flat = lambda t: np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree_util.tree_leaves(t)])
  return flat(tree), flat(after.params), jax.tree_util.tree_map(np.asarray, metrics), flat(grads)


def test_micro_batches_split_the_rows_strided_and_keep_the_prompts():
  batch = tiny_batch(0)
  examples, prompts = pipeline.micro_batches(batch, 4)
  assert examples["input_ids"].shape == (4, 2, 12) and set(prompts) == {"label_input_ids", "label_attention_mask"}
  np.testing.assert_array_equal(examples["input_ids"][1], batch["input_ids"][[1, 5]])


# The accumulation is the same code for every autodiff method: LoRA's case runs in make test-all.
@pytest.mark.parametrize("method_name", ["full", pytest.param("lora", marks=pytest.mark.slow)])
def test_accumulated_autodiff_step_equals_the_whole_batch_step(tiny, method_name):
  """The gradients within 1e-6 of their largest entry; the parameters after a step within float32 rounding."""
  before, whole, whole_metrics, whole_grads = one_step(tiny, method_name, 1)
  _, accumulated, metrics, grads = one_step(tiny, method_name, 4)
  largest = np.abs(whole_grads).max()
  assert largest > 0 and np.abs(whole - before).max() > 0
  np.testing.assert_allclose(grads, whole_grads, rtol=0, atol=1e-6 * largest)
  np.testing.assert_allclose(accumulated, whole, rtol=2**-22, atol=1e-9)  # each stored in float32
  for name in ("train/loss", "train/accuracy", "train/grad_norm"):
    np.testing.assert_allclose(metrics[name], whole_metrics[name], rtol=1e-6, err_msg=name)


@pytest.mark.slow  # 41 s here (gaussian z on a step and an estimate, whole and in micro-batches): make test-all
def test_accumulated_zeroth_order_step_projects_the_averaged_losses_with_one_z(tiny):
  before, whole, whole_metrics, _ = one_step(tiny, "mezo", 1)
  _, accumulated, metrics, _ = one_step(tiny, "mezo", 4)
  projected, expected = metrics["train/projected_grad"], whole_metrics["train/projected_grad"]
  assert projected.shape == expected.shape == (1,)  # one projected gradient a step, as the trajectory keeps
  eps = fewshot.get_config("method=mezo").zo.eps
  # Each probe's loss is a float32 mean summed in another order (rows, then micro-batches): a few ulps
  # each, and the projection divides their difference by 2 eps.
  rounding = 8 * np.spacing(np.float32(whole_metrics["train/loss"])) / (2 * eps)
  assert abs(projected[0] - expected[0]) <= rounding, (projected, expected, rounding)
  assert abs(expected[0]) > 10 * rounding  # the estimate is well above its rounding
  step_size = np.abs(whole - before).max()
  # The updates differ by the projection's rounding; each parameter is then stored in float32.
  np.testing.assert_allclose(accumulated, whole, rtol=2**-22, atol=step_size * rounding / abs(expected[0]))


def test_grad_accum_steps_must_divide_the_batch():
  config = fewshot.get_config("method=full")
  config.train.grad_accum_steps = 3
  from fttpu import trainer
  from fttpu.errors import ConfigError

  with pytest.raises(ConfigError, match=r"train.grad_accum_steps.*divides train.batch_size=8"):
    trainer.validate(config)
