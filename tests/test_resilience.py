"""Runs that survive: SIGKILL then resume bit for bit, SIGTERM preemption, damaged checkpoints,
NaN/Inf steps, and export. The end-to-end runs use `python -m fttpu.main` on a tiny random RoBERTa
(its steps take 10-30 ms, so 150 of them leave time to kill a run in the middle)."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from fttpu import checkpoint
from fttpu.metrics import read_metrics
from fttpu.state import TrainState
from tests.conftest import REPO, data_dir, with_fake_devices

STEPS = 150
KILL_AT = 80  # the run is killed (or sent SIGTERM) once it logs this step; it checkpoints every 25


# The runs of the kill test: a method, or a method with train.grad_accum_steps ("full/2": 2 micro-batches).
def main_args(checkpoint_dir: str, method: str, workdir, steps: int = STEPS) -> list:
  method, _, micro_batches = method.partition("/")
  return [
    sys.executable,
    "-m",
    "fttpu.main",
    f"--config=configs/fewshot.py:family=roberta,checkpoint={checkpoint_dir},method={method},steps={steps}",
    f"--config.train.grad_accum_steps={micro_batches or 1}",
    f"--config.data.dir={data_dir()}",
    "--config.train.log_every=10",
    "--config.train.eval_every=100",
    "--config.train.checkpoint_every=25",
    "--config.spiel.every=7",
    f"--workdir={workdir}",
  ]


def saved_state(workdir, step: int) -> list:
  """The leaves of the TrainState saved at `step` (params, optimizer state, rng, step)."""
  state = ocp.StandardCheckpointer().restore(os.path.join(str(workdir), "checkpoints", str(step), "state"))
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(state)]


def train_losses(workdir) -> list:
  return [(r["step"], r["train/loss"]) for r in read_metrics(str(workdir)) if "train/loss" in r]


def start_and_signal(args, sig: int):
  """Starts a run, sends `sig` once it logs step KILL_AT; returns (process, seconds from signal to exit, stderr)."""
  process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  lines = []
  for line in process.stderr:
    lines.append(line)
    if f"step {KILL_AT}/{STEPS}" in line:
      sent = time.perf_counter()
      process.send_signal(sig)
      break
  else:
    pytest.fail("the run ended before step %d: %s" % (KILL_AT, "".join(lines[-20:])))
  _, rest = process.communicate(timeout=120)
  waited = time.perf_counter() - sent
  return process, waited, "".join(lines) + (rest or "")


class References:
  """Uninterrupted runs, one per method: `start` launches one in the background (it shares the
  2 cores with the run under test), `get` waits for it (launching it first if needed)."""

  def __init__(self, checkpoint_dir, tmp_path_factory):
    self.checkpoint_dir, self.tmp = checkpoint_dir, tmp_path_factory
    self.runs = {}

  def start(self, method):
    if method not in self.runs:
      workdir = self.tmp.mktemp(f"uninterrupted-{method.replace('/', '-')}")
      log = open(workdir / "log.txt", "w")
      self.runs[method] = (
        workdir,
        subprocess.Popen(
          main_args(self.checkpoint_dir, method, workdir), cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        ),
      )

  def get(self, method):
    self.start(method)
    workdir, process = self.runs[method]
    assert process.wait(timeout=600) == 0, (workdir / "log.txt").read_text()[-3000:]
    return workdir


@pytest.fixture(scope="module")
def references(tiny_roberta, tmp_path_factory):
  return References(tiny_roberta, tmp_path_factory)


# full over 2 micro-batches in make test; LoRA, SpIEL and MeZO (whose replay from its trajectory
# tests/test_zo.py checks in make test) in make test-all
@pytest.mark.parametrize(
  "method",
  ["full/2", *(pytest.param(method, marks=pytest.mark.slow) for method in ("lora", "spiel", "mezo"))],
)
def test_a_killed_run_resumes_to_the_uninterrupted_parameters_bit_for_bit(method, references, tiny_roberta, tmp_path):
  """SIGKILL after step KILL_AT, restart with the same workdir: the final state (params, optimizer state,
  rng), the logged losses and, for MeZO, the trajectory equal the uninterrupted run's exactly. SpIEL
  refreshes its mask every 7 steps, so the resumed run crosses refreshes on both sides of the kill.
  full/2 is full fine-tuning with each step split into 2 micro-batches (train.grad_accum_steps), accumulated
  inside the one compiled step: a checkpoint holds whole steps, so the resume never replays half of one."""
  references.start(method)
  args = main_args(tiny_roberta, method, tmp_path)
  process, _, _ = start_and_signal(args, signal.SIGKILL)
  assert process.returncode == -signal.SIGKILL
  resumed = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  line = next((l for l in resumed.stderr.splitlines() if "resumed from" in l), resumed.stderr[-3000:])
  resumed_at = int(line.rsplit("at step ", 1)[1])
  assert 25 <= resumed_at <= KILL_AT, line  # a checkpoint saved before the kill (asynchronously)
  reference = references.get(method)
  ours, theirs = saved_state(tmp_path, STEPS), saved_state(reference, STEPS)
  assert len(ours) == len(theirs) and all(np.array_equal(a, b) for a, b in zip(ours, theirs))
  assert train_losses(tmp_path) == train_losses(reference)
  if method == "mezo":
    import safetensors.numpy

    load = lambda w: safetensors.numpy.load_file(os.path.join(str(w), "trajectory.safetensors"))["projected_grad"]
    assert load(tmp_path).shape == (STEPS, 1) and np.array_equal(load(tmp_path), load(reference))


@pytest.mark.parametrize(
  "sig,status,said",
  [(signal.SIGTERM, 0, "preempted (SIGTERM)"), (signal.SIGINT, 130, "interrupted (Ctrl-C)")],
  ids=["SIGTERM", "Ctrl-C"],
)
def test_sigterm_or_ctrl_c_checkpoints_at_the_next_step_and_exits_then_resumes(
  references, tiny_roberta, tmp_path, sig, status, said
):
  """The signal checkpoints at the next step boundary and exits with one line (Ctrl-C used to print a
  KeyboardInterrupt traceback and save nothing); the resumed run ends as the uninterrupted one (after
  SIGTERM: a Ctrl-C's checkpoint is saved by the same code, and checked as far as the resume's start)."""
  args = main_args(tiny_roberta, "full/2", tmp_path)
  process, waited, stderr = start_and_signal(args, sig)
  assert process.returncode == status, stderr[-3000:]
  assert waited < 15, waited  # one step plus a checkpoint of 0.8 MB; measured ~0.3 s
  assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
  line = next(l for l in stderr.splitlines() if f"{said}: saved checkpoint" in l)
  step = int(line.split("saved checkpoint ", 1)[1].split()[0])
  assert KILL_AT <= step < STEPS and os.path.isdir(tmp_path / "checkpoints" / str(step))
  if sig == signal.SIGINT:  # saved by the code that saves SIGTERM's, whose resume is checked below
    assert int(checkpoint.restore_untyped(checkpoint.make_manager(str(tmp_path), 2), step)["step"]) == step
    return
  resumed = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0 and f"at step {step}" in resumed.stderr, resumed.stderr[-3000:]
  assert all(
    np.array_equal(a, b) for a, b in zip(saved_state(tmp_path, STEPS), saved_state(references.get("full/2"), STEPS))
  )


@pytest.mark.slow  # 15 s here: make test-all; make test sends one Ctrl-C above
def test_a_second_ctrl_c_stops_at_once_with_one_line(tiny_roberta, tmp_path):
  args = main_args(tiny_roberta, "full", tmp_path)
  process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for line in process.stderr:
    if f"step {KILL_AT}/{STEPS}" in line:
      process.send_signal(signal.SIGINT)
      # Ctrl-C again until it exits: one resend could come only after the first one's checkpoint on a busy
      # machine, and two signals before Python's handler runs would be one.
      while process.poll() is None:
        time.sleep(0.02)
        process.send_signal(signal.SIGINT)
      break
  _, rest = process.communicate(timeout=120)
  assert process.returncode == 130, rest[-3000:]
  assert "error: interrupted twice (Ctrl-C): stopped at once" in rest and "Traceback" not in rest, rest[-3000:]


def test_a_truncated_checkpoint_falls_back_to_the_previous_one_and_finishes_the_same(
  references, tiny_roberta, tmp_path, caplog
):
  workdir = tmp_path / "run"
  shutil.copytree(references.get("lora"), workdir)
  expected = saved_state(workdir, STEPS)
  largest = largest_file(workdir / "checkpoints" / str(STEPS))
  os.truncate(largest, os.path.getsize(largest) // 2)
  again = subprocess.run(
    main_args(tiny_roberta, "lora", workdir), cwd=REPO, capture_output=True, text=True, timeout=600
  )
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"checkpoint {workdir}/checkpoints/{STEPS} is damaged: 1 file(s) of the wrong size" in again.stderr
  assert f"resumed from {workdir}/checkpoints/{STEPS - 25} at step {STEPS - 25}" in again.stderr
  [moved] = os.listdir(workdir / "damaged")
  assert moved.startswith(f"{STEPS}-")  # kept for inspection, not deleted
  assert all(np.array_equal(a, b) for a, b in zip(saved_state(workdir, STEPS), expected))


# ---------------------------------------------------------------- damaged checkpoints, in process


def small_states():
  tx = optax.adam(0.1)
  state = TrainState.create({"w": jnp.arange(4096, dtype=jnp.float32), "b": jnp.ones(3)}, tx, 0)
  return [
    state.replace(step=jnp.asarray(s, jnp.int32), params=jax.tree_util.tree_map(lambda x: x * s, state.params))
    for s in (1, 2, 3)
  ]


def largest_file(path: str) -> str:
  return max((os.path.join(root, f) for root, _, files in os.walk(path) for f in files), key=os.path.getsize)


@pytest.mark.parametrize(
  "damage, manifest, expected",
  [
    ("truncate", True, "1 file(s) of the wrong size"),
    ("delete", True, "1 file(s) missing"),
    ("truncate", False, "orbax cannot read it"),
    ("delete", False, "orbax cannot read it"),
  ],
)
def test_a_damaged_newest_checkpoint_is_named_moved_aside_and_the_previous_restored(
  tmp_path, caplog, damage, manifest, expected
):
  states = small_states()
  manager = checkpoint.make_manager(str(tmp_path), keep=5)
  for state in states:
    checkpoint.save(manager, state, {"data_position": int(state.step)})
  checkpoint.finish(manager)
  newest = checkpoint.step_path(manager, 3)
  if not manifest:  # as when the process died between the save and its manifest
    os.remove(os.path.join(newest, checkpoint.MANIFEST))
  victim = largest_file(os.path.join(newest, "state"))
  os.truncate(victim, 100) if damage == "truncate" else os.remove(victim)
  with caplog.at_level(logging.WARNING):
    step, state, run = checkpoint.restore_latest(manager, states[0])
  assert step == 2 and run == {"data_position": 2}
  np.testing.assert_array_equal(state.params["w"], states[1].params["w"])
  assert f"checkpoint {newest} is damaged: {expected}" in caplog.text
  assert manager.all_steps() == [1, 2] and len(os.listdir(tmp_path / "damaged")) == 1
  checkpoint.save(manager, states[2])  # the step is free again: a new step 3 is written beside nothing bad
  checkpoint.finish(manager)
  assert checkpoint.restore_latest(manager, states[0])[0] == 3


def test_the_best_checkpoint_by_dev_metric_is_kept_beside_the_newest(tmp_path):
  manager = checkpoint.make_manager(str(tmp_path), keep=2, best_metric="accuracy")
  for state, accuracy in zip(small_states(), (0.5, 0.9, 0.6)):
    checkpoint.save(manager, state, metrics={"accuracy": accuracy})
  state = small_states()[2].replace(step=jnp.asarray(4, jnp.int32))
  checkpoint.save(manager, state, metrics={"accuracy": 0.7})
  checkpoint.finish(manager)
  assert manager.all_steps() == [2, 3, 4]  # the newest two, and step 2 for its accuracy 0.9


# ---------------------------------------------------------------- NaN / Inf


def poisoned_loss(monkeypatch, config, step: int, kind: str):
  """Makes the loss (kind 'loss') or only its gradient (kind 'grad') NaN on the batch of `step`; under
  train.grad_accum_steps, on its first micro-batch only (rows 0, N, 2N, ...: the split is strided)."""
  from fttpu import classifier, models
  from fttpu.data import pipeline

  model = models.load_for(config.model)
  data = pipeline.load_few_shot(config.data, model.tokenizer, config.seed, config.model.classifier)
  target = pipeline.train_batch(data.train, step, config.train.batch_size, config.seed)["input_ids"]
  real = classifier.make_loss_fn

  @jax.custom_vjp
  def nan_gradient(x):
    return x

  nan_gradient.defvjp(lambda x: (x, None), lambda _, g: (jnp.where(g != 0, jnp.nan, g),))  # where's other branch: 0

  def make_loss_fn(logits_fn):
    loss_fn = real(logits_fn)

    def poisoned(tree, batch, rng):
      loss, aux = loss_fn(tree, batch, rng)
      bad = jnp.all(batch["input_ids"] == target[:: config.train.grad_accum_steps])
      return jnp.where(bad, jnp.nan if kind == "loss" else nan_gradient(loss), loss), aux

    return poisoned

  monkeypatch.setattr(classifier, "make_loss_fn", make_loss_fn)


def nan_config(tiny_roberta, nonfinite: str, micro_batches: int = 1):
  from configs import fewshot

  config = fewshot.get_config(f"family=roberta,checkpoint={tiny_roberta},method=full,steps=6")
  config.train.grad_accum_steps = micro_batches
  config.data.dir = data_dir()
  config.train.checkpoint_every = config.train.log_every = 1
  config.train.keep_checkpoints = 10
  config.train.nonfinite = nonfinite
  return config


@pytest.mark.quick_compile  # 6 steps in-process: compiling is the cost
@pytest.mark.parametrize(  # a NaN loss in one of 2 micro-batches covers the whole batch's (make test-all)
  "kind,micro_batches", [pytest.param("loss", 1, marks=pytest.mark.slow), ("grad", 1), ("loss", 2)]
)
def test_a_nonfinite_step_stops_the_run_naming_it_and_keeps_the_last_good_state(
  monkeypatch, tiny_roberta, tmp_path, kind, micro_batches
):
  """Under train.grad_accum_steps a NaN in one micro-batch discards the whole step: no half step is applied."""
  from fttpu import train

  poisoned_loss(monkeypatch, nan_config(tiny_roberta, "stop", micro_batches), 3, kind)
  with pytest.raises(FloatingPointError) as error:
    train.run(nan_config(tiny_roberta, "stop", micro_batches), str(tmp_path / "stop"))
  message = str(error.value)
  assert message.startswith("step 4: training loss is ") and "saved as checkpoint 3" in message
  assert ("training loss is nan" if kind == "loss" else "gradient norm is nan") in message
  assert "train.nonfinite=skip" in str(error.value)
  assert sorted(map(int, os.listdir(tmp_path / "stop" / "checkpoints"))) == [1, 2, 3]
  last_good = saved_state(tmp_path / "stop", 3)
  assert all(np.all(np.isfinite(x)) for x in last_good if x.dtype.kind == "f")

  # The same run with train.nonfinite=skip: the same first three steps, the poisoned batch changes
  # nothing (params and optimizer state) and is counted, and the run finishes.
  record = train.run(nan_config(tiny_roberta, "skip", micro_batches), str(tmp_path / "skip"))
  assert record["step"] == 6
  assert all(np.array_equal(a, b) for a, b in zip(saved_state(tmp_path / "skip", 3), last_good))
  after = saved_state(tmp_path / "skip", 4)
  changed = [not np.array_equal(a, b) for a, b in zip(after, last_good)]
  assert sum(changed) == 1 and after[changed.index(True)].shape == ()  # only the step counter moved
  skipped = {r["step"]: r["train/skipped_batches"] for r in read_metrics(str(tmp_path / "skip")) if "train/loss" in r}
  assert skipped == {1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 6: 1}


@pytest.mark.quick_compile
@pytest.mark.slow  # 17 s here: make test-all
def test_a_stopped_run_resumes_with_skip_once_the_user_switches(monkeypatch, tiny_roberta, tmp_path):
  """train.nonfinite may change on resume (it changes nothing the run computed); other keys may not."""
  from fttpu import train

  poisoned_loss(monkeypatch, nan_config(tiny_roberta, "stop"), 3, "loss")
  with pytest.raises(FloatingPointError):
    train.run(nan_config(tiny_roberta, "stop"), str(tmp_path))
  record = train.run(nan_config(tiny_roberta, "skip"), str(tmp_path))
  assert record["step"] == 6
  assert [r["train/skipped_batches"] for r in read_metrics(str(tmp_path)) if "train/loss" in r] == [0, 0, 0, 1, 1, 1]


# ---------------------------------------------------------------- export


def test_export_writes_the_merged_model_for_transformers_and_the_method_artifact(references, tmp_path):
  import torch  # test-only reference (make install-test installs it)
  import transformers
  from fttpu import models

  workdir, out = references.get("lora"), tmp_path / "hf"
  result = subprocess.run(
    [sys.executable, "-m", "fttpu.export", f"--workdir={workdir}", f"--to={out}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  printed = json.loads(result.stdout.strip().splitlines()[-1])
  assert printed["step"] == STEPS and {"model.safetensors", "config.json", "artifact.safetensors"} <= set(
    printed["files"]
  )
  config = json.loads((workdir / "config.json").read_text())
  trained = checkpoint.restore_untyped(checkpoint.make_manager(str(workdir), 2), STEPS)["params"]
  model = models.load("roberta", config["model"]["checkpoint"], lm_head=True)
  ids = np.array([[0, 713, 16, 205, 4, 2, 1, 1], [0, 100, 2, 1, 1, 1, 1, 1]], np.int32) % model.config.vocab_size
  mask = (np.arange(8)[None] < np.array([[6], [3]])).astype(np.int32)
  ours = np.asarray(model.module.apply({"params": trained["model"]}, ids, mask, output="logits"))
  reference = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
  with torch.no_grad():
    theirs = reference(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.numpy()
  assert np.abs(ours[mask.astype(bool)] - theirs[mask.astype(bool)]).max() <= 1e-4
  adapters = checkpoint.load_artifact(str(out / "artifact.safetensors"), model.params)["model"]["layers"]["query"]
  np.testing.assert_array_equal(adapters["lora_b"], trained["model"]["layers"]["query"]["lora_b"])


def test_export_of_a_workdir_without_a_run_says_so(tmp_path):
  result = subprocess.run(
    [sys.executable, "-m", "fttpu.export", f"--workdir={tmp_path}", f"--to={tmp_path}/out"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode != 0 and f"{tmp_path} is not a run's workdir: it has no config.json" in result.stderr
  assert "Traceback" not in result.stderr


SAVE_ON_8_DEVICES = """
import sys, jax, jax.numpy as jnp, optax
from jax.sharding import NamedSharding, PartitionSpec as P
from fttpu import checkpoint
from fttpu.state import TrainState
w = jax.device_put(jnp.arange(64.0).reshape(8, 8), NamedSharding(jax.make_mesh((8,), ("fsdp",)), P("fsdp")))
manager = checkpoint.make_manager(sys.argv[1], 2)
checkpoint.save(manager, TrainState.create({"w": w}, optax.adam(0.1), 0))
checkpoint.finish(manager)
"""


def test_export_reads_a_checkpoint_written_by_another_mesh(tmp_path):
  """fttpu.export restores without a target: an FSDP checkpoint of 8 devices reads onto this one device."""
  env = with_fake_devices(8)
  result = subprocess.run(
    [sys.executable, "-c", SAVE_ON_8_DEVICES, str(tmp_path)],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  state = checkpoint.restore_untyped(checkpoint.make_manager(str(tmp_path), 2), 0)
  np.testing.assert_array_equal(state["params"]["w"], np.arange(64.0).reshape(8, 8))
  assert int(state["step"]) == 0 and len(jax.tree_util.tree_leaves(state["opt_state"])) == 3  # count, mu, nu
