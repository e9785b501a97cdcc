"""MeZO on the real checkpoint and real 16-shot SST-2: it learns, and a run's trajectory replays."""

import dataclasses
import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import fewshot
from fttpu import step as step_lib, trainer
from fttpu.data import pipeline
from fttpu.state import TrainState
from tests.conftest import REPO, data_dir
from tests.test_main import run_main


MEZO_STEPS = 60  # the loss falls to 0.63x in float32 and 0.64x in bfloat16 (0.68x at 50 steps, 0.50x at 150)
SENTENCE_TOKENS = 41  # the longest of the 32 training sentences has 40 tokens: padded to 41, none is cut


def mezo_training_loss(minilm, sst2_16shot, param_dtype) -> tuple[float, float]:
  """Training loss over all 32 examples before and after MEZO_STEPS gaussian ZO-SGD steps (lr 1e-4, batch
  8) over all 22.7M parameters, stored in `param_dtype` (computed in float32)."""
  config = fewshot.get_config("method=mezo")
  config.optimizer.learning_rate = 1e-4
  config.zo.noise = "gaussian"
  params = jax.tree_util.tree_map(lambda x: np.asarray(x).astype(param_dtype), minilm.params)
  batch_at = lambda i: {**pipeline.train_batch(sst2_16shot.train, i, 8, 42), **sst2_16shot.prompts}
  run = trainer.setup(config, dataclasses.replace(minilm, params=params), batch_at, {}, total_steps=MEZO_STEPS)
  whole = {**pipeline.whole(sst2_16shot.train), **sst2_16shot.prompts}
  train_loss = jax.jit(lambda tree: run.loss_fn(tree, whole)[0])
  step = jax.jit(functools.partial(step_lib.train_step, method=run.method, loss_fn=run.loss_fn), donate_argnums=0)
  state = TrainState.create(run.tree, run.method.tx, 42)
  before = float(train_loss(state.params))
  for i in range(MEZO_STEPS):
    state, _ = step(state, batch_at(i))
  assert all(x.dtype == param_dtype for x in jax.tree_util.tree_leaves(state.params))
  return before, float(train_loss(state.params))


def test_mezo_lowers_the_training_loss_on_sst2_in_bfloat16_as_in_float32(minilm, sst2_config):
  """MeZO's claim lives in half precision: with bfloat16 storage (updates rounded stochastically) the
  loss falls as with float32 storage. When the update drew z in the storage dtype while the losses drew
  it in float32, bfloat16 MeZO was a random walk (cosine with the true gradient -0.003)."""
  data_config = sst2_config.data.copy_and_resolve_references()
  data_config.max_length = SENTENCE_TOKENS
  data = pipeline.load_few_shot(data_config, minilm.tokenizer, sst2_config.seed)
  assert data.train.attention_mask.sum(axis=1).max() < SENTENCE_TOKENS  # no sentence is cut
  f32_before, f32_after = mezo_training_loss(minilm, data, np.float32)
  bf16_before, bf16_after = mezo_training_loss(minilm, data, jnp.bfloat16)
  assert f32_after < 0.8 * f32_before, (f32_before, f32_after)
  assert bf16_after < 0.8 * bf16_before, (bf16_before, bf16_after)
  assert bf16_before - bf16_after > 0.7 * (f32_before - f32_after), (f32_before, f32_after, bf16_before, bf16_after)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_a_mezo_run_replays_from_its_trajectory(tmp_path, tfds_dir, noise):
  """The CLI run saves trajectory.safetensors; `python -m fttpu.replay` rebuilds its final checkpoint:
  bit for bit with rademacher noise, within float32 rounding of erf_inv with gaussian (the README says so)."""
  workdir = tmp_path / "mezo"
  result = run_main(
    "--config=configs/fewshot.py:task=sst2,method=mezo,k=16,seed=42,steps=12",
    f"--config.data.dir={data_dir()}",
    "--config.data.num_test=64",  # the test split is not what these check
    f"--config.zo.noise={noise}",
    "--config.train.checkpoint_every=6",
    workdir=workdir,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert (workdir / "trajectory.safetensors").is_file()
  replay = subprocess.run(
    [sys.executable, "-m", "fttpu.replay", f"--workdir={workdir}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert replay.returncode == 0, replay.stderr[-3000:]
  out = json.loads(replay.stdout.strip().splitlines()[-1])
  assert out["steps"] == 12 and out["max_abs_update"] > 1e-5, out
  if noise == "rademacher":
    assert out["identical"] and out["max_abs_diff"] == 0.0, out
  else:  # a replay that drew another z, or skipped a step, would differ by the size of an update
    assert out["max_abs_diff"] <= 1e-3 * out["max_abs_update"], out


def test_replay_refuses_a_run_that_rechooses_its_trainable_set(tmp_path, tfds_dir):
  """LISA under zo.base=layers resamples its layers from the run's state every layers.every steps;
  the trajectory does not hold that choice, so replay says why it cannot rebuild the run."""
  workdir = tmp_path / "lisa"
  result = run_main(
    "--config=configs/fewshot.py:task=sst2,method=zo,zo_base=layers,k=16,seed=42,steps=4",
    f"--config.data.dir={data_dir()}",
    "--config.data.num_test=64",  # the test split is not what these check
    "--config.layers.sample=1",
    "--config.layers.every=2",
    "--config.train.checkpoint_every=4",
    workdir=workdir,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  replay = subprocess.run(
    [sys.executable, "-m", "fttpu.replay", f"--workdir={workdir}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert replay.returncode != 0
  assert "cannot replay a zo_layers run: it re-chooses its trainable set every 2 steps" in replay.stderr
  assert "Traceback" not in replay.stderr
