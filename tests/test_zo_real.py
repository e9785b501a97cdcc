"""MeZO on the real checkpoint and real 16-shot SST-2: it learns, and a run's trajectory replays."""
import functools
import json
import subprocess
import sys

import jax
import numpy as np

from configs import fewshot
from fttpu import classifier, methods, optim, step as step_lib
from fttpu.data import pipeline
from fttpu.state import TrainState
from tests.conftest import REPO, data_dir
from tests.test_main import run_main


def test_mezo_steps_lower_the_training_loss_on_sst2(minilm, sst2_16shot):
  """150 ZO-SGD steps (learning rate 1e-4, batch 8) over all 22.7M parameters. Sign (rademacher) noise:
  the same identity covariance as gaussian noise, so the same expected descent, at a third of the step
  time on CPU (tests/test_zo.py checks both kinds' estimates against the true gradient)."""
  config = fewshot.get_config("method=mezo")
  config.optimizer.learning_rate = 1e-4
  config.zo.noise = "rademacher"
  method = methods.get_method(config, optim.make_optimizer(config.optimizer, 150), minilm)
  loss_fn = classifier.make_loss_fn(classifier.make_classifier(minilm.module, "similarity", config.model.logit_scale).logits)
  whole = {**pipeline.whole(sst2_16shot.train), **sst2_16shot.prompts}
  train_loss = jax.jit(lambda tree: loss_fn(tree, whole)[0])
  step = jax.jit(functools.partial(step_lib.train_step, method=method, loss_fn=loss_fn), donate_argnums=0)
  state = TrainState.create({"model": jax.tree_util.tree_map(np.array, minilm.params)}, method.tx, 42)
  before = float(train_loss(state.params))
  for i in range(150):
    state, _ = step(state, {**pipeline.train_batch(sst2_16shot.train, i, 8, 42), **sst2_16shot.prompts})
  after = float(train_loss(state.params))
  assert after < 0.8 * before, (before, after)


def test_a_mezo_run_replays_from_its_trajectory(tmp_path, tfds_dir):
  """The CLI run saves trajectory.safetensors; `python -m fttpu.replay` rebuilds its final checkpoint."""
  workdir = tmp_path / "mezo"
  result = run_main("--config=configs/fewshot.py:task=sst2,method=mezo,k=16,seed=42,steps=12",
                    f"--config.data.dir={data_dir()}", "--config.zo.noise=rademacher",
                    "--config.train.checkpoint_every=6", workdir=workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (workdir / "trajectory.safetensors").is_file()
  replay = subprocess.run([sys.executable, "-m", "fttpu.replay", f"--workdir={workdir}"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
  assert replay.returncode == 0, replay.stderr[-3000:]
  out = json.loads(replay.stdout.strip().splitlines()[-1])
  assert out == {"steps": 12, "max_abs_diff": 0.0, "identical": True}, out
