"""Runs that survive their users: one run per workdir, resume checks what it resumes, files that are
either old or new, export that never destroys, and divergence that stops the run. Tiny random
RoBERTa, real SST-2 rows; in-process `train.run` where the CLI adds nothing, subprocesses for locks."""

import errno
import hashlib
import json
import logging
import os
import pathlib
import shutil
import signal
import socket
import subprocess

import pytest

from fttpu import checkpoint, export, files, guards, metrics, train, workdir as workdir_lib
from fttpu.errors import ConfigError
from fttpu.metrics import read_metrics
from fttpu.errors import CheckpointError
from tests.conftest import REPO, data_dir
from tests.test_bad_input import make_config
from tests.test_resilience import main_args


def run(tiny_roberta, workdir, **fields) -> dict:
  config = make_config(tiny_roberta, **{"train.checkpoint_every": 2, "train.log_every": 1, **fields})
  return train.run(config, str(workdir))


# ---------------------------------------------------------------- one run per workdir


def test_a_second_run_on_a_busy_workdir_fails_at_once_naming_the_holder_and_a_killed_one_never_blocks(
  tiny_roberta, tmp_path
):
  workdir = tmp_path / "run"
  args = main_args(tiny_roberta, "full", workdir)
  first = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for line in first.stderr:
    if "step 40/" in line:  # checkpoint 25 is written
      break
  first.send_signal(signal.SIGSTOP)  # paused, holding the workdir
  second = subprocess.run(
    [a.replace("method=full", "method=lora") for a in args], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert second.returncode != 0 and "Traceback" not in second.stderr
  assert (
    f"workdir {workdir} is in use by another run (process {first.pid} on host {socket.gethostname()})" in second.stderr
  ), second.stderr[-2000:]
  first.kill()  # SIGKILL: no handler runs, the lock goes with the process (a stopped one dies too)
  first.communicate(timeout=60)
  again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resumed from" in again.stderr
  lines = read_metrics(str(workdir))
  assert (
    sum(bool(l.get("final")) for l in lines) == 1
    and json.loads((workdir / "config.json").read_text())["method"] == "full"
  ), "the refused run wrote nothing"


def test_the_lock_is_taken_by_one_holder_at_a_time_in_one_process_too(tmp_path):
  with workdir_lib.exclusive(str(tmp_path)):
    with pytest.raises(workdir_lib.WorkdirBusy, match=f"process {os.getpid()} on host"):
      with workdir_lib.exclusive(str(tmp_path)):
        pass
  with workdir_lib.exclusive(str(tmp_path)):  # released on exit
    pass


# ---------------------------------------------------------------- resume checks


@pytest.mark.slow  # 28 s here: make test-all; make test checks a workdir of another config (tests/test_bad_input.py)
def test_resume_checks_the_checkpoints_own_config_and_the_sampled_data(tiny_roberta, tmp_path, caplog):
  data = tmp_path / "data"
  shutil.copytree(os.path.join(data_dir(), "sst2"), data / "sst2")
  workdir = tmp_path / "run"
  settings = {"data.dir": str(data), "train.steps": 4}
  assert run(tiny_roberta, workdir, **settings)["final"]

  os.remove(workdir / "config.json")  # without config.json the checkpoint's own config still decides
  with pytest.raises(
    ConfigError,
    match=r"another config \(optimizer.learning_rate: \S+ -> 0.001\), as saved in "
    "checkpoint 4",
  ):
    run(tiny_roberta, workdir, **settings, **{"optimizer.learning_rate": 1e-3})
  with caplog.at_level(logging.WARNING):
    assert run(tiny_roberta, workdir, **settings)["final"]
  assert f"{workdir}/config.json is missing; the run's config was checked against checkpoint 4" in caplog.text

  (workdir / "config.json").write_bytes(b"\xff\xfe{not json")
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    assert run(tiny_roberta, workdir, **settings)["final"]
  assert f"{workdir}/config.json is damaged (UnicodeDecodeError" in caplog.text
  assert json.loads((workdir / "config.json").read_text())["train"]["steps"] == 4  # rewritten

  train_file = data / "sst2" / "train.tsv"
  lines = train_file.read_text().splitlines(keepends=True)
  train_file.write_text(lines[0] + "".join(lines[1:][::-1]))  # the same rows in another order: another sample
  with pytest.raises(ConfigError, match="the sampled dev and train data differ from what checkpoint 4 was trained on"):
    run(tiny_roberta, workdir, **settings)


# ---------------------------------------------------------------- files that are old or new


def test_a_full_disk_names_the_file_keeps_the_checkpoint_and_the_torn_line_is_dropped_on_resume(
  tiny_roberta, tmp_path, monkeypatch, caplog
):
  workdir = tmp_path / "run"
  write = metrics.MetricWriter.write

  def full_at_step_3(self, step, scalars, **extra):
    if step == 3 and not extra:
      with open(self.path, "a") as f:
        f.write('{"step": 3, "train/lo')  # what a write cut short by ENOSPC leaves
      raise OSError(errno.ENOSPC, "No space left on device", self.path)
    return write(self, step, scalars, **extra)

  monkeypatch.setattr(metrics.MetricWriter, "write", full_at_step_3)
  with pytest.raises(OSError, match=f"No space left on device: '{workdir}/metrics.jsonl'"):
    run(tiny_roberta, workdir, **{"train.steps": 4})
  assert os.listdir(workdir / "checkpoints") == ["2"]
  assert (workdir / "checkpoints" / "2" / checkpoint.MANIFEST).is_file() and checkpoint.damage(
    str(workdir / "checkpoints" / "2")
  ) is None
  monkeypatch.setattr(metrics.MetricWriter, "write", write)
  assert read_metrics(str(workdir))[-1]["step"] == 2  # readers skip the torn line too
  with caplog.at_level(logging.WARNING):
    assert run(tiny_roberta, workdir, **{"train.steps": 4})["final"]
  assert "metrics.jsonl: dropped its torn last line '{\"step\": 3, \"train/lo'" in caplog.text
  assert [l["step"] for l in read_metrics(str(workdir)) if "train/loss" in l] == [1, 2, 3, 4]


def test_write_atomic_leaves_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
  path = tmp_path / "config.json"
  path.write_text("old")

  def no_space(fd):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(os, "fsync", no_space)
  with pytest.raises(OSError, match=f"No space left on device: '{path}'"):
    files.write_atomic(str(path), "new")
  assert path.read_text() == "old" and os.listdir(tmp_path) == ["config.json"]


# ---------------------------------------------------------------- export never destroys


def tree_digest(directory) -> dict:
  return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in sorted(os.listdir(directory))}


def test_export_refuses_the_workdir_the_base_checkpoint_and_a_full_directory_unless_overwrite(tiny_roberta, tmp_path):
  workdir = tmp_path / "run"
  assert run(tiny_roberta, workdir, method="lora")["final"]
  base, before = tiny_roberta, tree_digest(pathlib.Path(tiny_roberta))
  for out, what in (
    (workdir, f"is the run's workdir {workdir}"),
    (workdir / "export", "is inside the run's workdir"),
    (base, f"is the run's pretrained checkpoint {base}"),
    (os.path.join(base, "x"), "is inside the run's pretrained checkpoint"),
  ):
    with pytest.raises(ConfigError, match=f"--to={out} {what}"):
      export.export_workdir(str(workdir), str(out))
  assert tree_digest(pathlib.Path(tiny_roberta)) == before
  out = tmp_path / "out"
  out.mkdir()
  (out / "stale.safetensors").write_text("an earlier export")
  with pytest.raises(ConfigError, match=f"--to={out} is not empty .* pass --overwrite"):
    export.export_workdir(str(workdir), str(out))
  files = export.export_workdir(str(workdir), str(out), overwrite=True)["files"]
  assert "stale.safetensors" not in files and {"artifact.safetensors", "model.safetensors", "config.json"} <= set(files)
  assert sorted(os.listdir(out)) == files and not [n for n in os.listdir(tmp_path) if n.startswith(".out")]


def test_export_refuses_a_damaged_trajectory(tiny_roberta, tmp_path):
  workdir = tmp_path / "run"
  assert run(tiny_roberta, workdir, method="mezo")["final"]
  trajectory = workdir / "trajectory.safetensors"
  trajectory.write_bytes(trajectory.read_bytes()[:100])
  with pytest.raises(CheckpointError, match=f"{trajectory} is damaged"):
    export.export_workdir(str(workdir), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- divergence


def test_a_finite_divergence_stops_the_run_naming_the_step_and_keeps_the_last_good_state(tiny_roberta, tmp_path):
  """MeZO at a learning rate of 1e3 (it used to reach a loss of 4e18 and exit 0), warmed up over 2000
  steps so that the loss leaves any sane range after a few good steps (the rate reaches 6 at step 12)."""
  workdir = tmp_path / "run"
  settings = {
    "method": "mezo",
    "train.steps": 40,
    "optimizer.learning_rate": 1e3,
    "optimizer.warmup_steps": 2000,
    "train.checkpoint_every": 1,
  }
  with pytest.raises(guards.Diverged) as error:
    run(tiny_roberta, workdir, **settings)
  message = str(error.value)
  assert "is above train.divergence_ratio=100 x max(first step's loss" in message, message
  step = int(message.split(":")[0].removeprefix("step "))
  kept = checkpoint.make_manager(str(workdir), 2).latest_step()
  assert f"the last good state is checkpoint {kept}" in message and kept == step - 2, message
  losses = {l["step"]: l["train/loss"] for l in read_metrics(str(workdir)) if "train/loss" in l}
  assert losses[step] > 100 * max(losses[1], 1) and all(losses[s] <= 100 * max(losses[1], 1) for s in range(1, step))
  assert os.listdir(workdir / "damaged"), "the diverged step's checkpoint is moved aside, not deleted"


def test_a_stuck_zeroth_order_estimate_stops_the_run(tiny_roberta, tmp_path):
  """eps below float32's resolution: both losses are equal, the projected gradient is exactly 0."""
  with pytest.raises(guards.Diverged, match="step 20: the projected gradient has been exactly 0 for 20 steps in a row"):
    run(tiny_roberta, tmp_path / "run", **{"method": "mezo", "train.steps": 30, "zo.eps": 1e-30})
