"""The entry point end to end, as a user runs it: files written, resume, bad input."""

import json
import os
import subprocess
import sys

import pytest

from fttpu.metrics import read_metrics
from tests.conftest import REPO, data_dir


def run_main(*args, workdir):
  command = [sys.executable, "-m", "fttpu.main", *args, f"--workdir={workdir}"]
  return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=os.environ.copy())


def test_short_sst2_run_writes_config_metrics_tensorboard_checkpoints_and_resumes(tmp_path, tfds_dir):
  workdir = tmp_path / "run"
  assert read_metrics(str(workdir)) == []  # nothing written yet
  args = [
    "--config=configs/fewshot.py:task=sst2,method=full,k=16,seed=42,steps=4",
    f"--config.data.dir={data_dir()}",
    "--config.train.log_every=2",
    "--config.train.eval_every=2",
    "--config.train.checkpoint_every=2",
    "--config.data.num_test=64",  # of 872: each pass of MiniLM over all of them takes 7 s
  ]
  result = run_main(*args, workdir=workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "step 4/4" in result.stderr and "steps/s" in result.stderr and "ETA" in result.stderr

  config = json.loads((workdir / "config.json").read_text())
  assert config["method"] == "full" and config["data"]["k"] == 16 and config["train"]["steps"] == 4
  lines = read_metrics(workdir)
  assert [l["step"] for l in lines if "train/loss" in l] == [2, 4]
  assert [l["step"] for l in lines if l.get("split") == "dev"] == [2, 4]
  assert all(0 <= l["eval/accuracy"] <= 1 for l in lines if "eval/accuracy" in l)
  final = lines[-1]
  assert final["final"] is True and final["split"] == "test" and final["step"] == 4 and "eval/accuracy" in final
  assert final["examples"] == 64
  # full FT: every one of MiniLM's 22.7M parameters trains, AdamW keeps two moments of each
  assert 22.5e6 < final["model/trainable"] < 23e6 and final["model/optimizer_entries"] >= 2 * final["model/trainable"]
  assert final["perf/peak_rss_mb"] > 200 and final["perf/step_s"] > 0
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir / "tensorboard"))
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]

  # Same workdir again: resumes at step 4, trains nothing, and evaluates the same weights.
  again = run_main(*args, workdir=workdir)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resumed from" in again.stderr
  after = read_metrics(workdir)
  assert after[:-1] == lines[:-1], "resuming keeps the lines up to the checkpoint and adds no duplicates"
  assert after[-1]["final"] and after[-1]["eval/accuracy"] == final["eval/accuracy"]
  assert sum(bool(l.get("final")) for l in after) == 1

  # The same workdir with another config is refused before anything loads, naming what differs.
  other = run_main(*[a.replace("steps=4", "steps=6") for a in args], workdir=workdir)
  assert other.returncode != 0
  assert "holds checkpoints of a run with another config (train.steps: 4 -> 6)" in other.stderr


@pytest.mark.slow  # 15 s here: make test-all; tests/test_bad_input.py and test_cli_errors.py check the messages in make test
def test_bad_input_fails_before_training_with_a_message(tmp_path):
  result = run_main("--config=configs/fewshot.py:task=sst2", "--config.train.stepz=3", workdir=tmp_path / "bad")
  assert result.returncode != 0
  assert "unknown config key config.train.stepz" in result.stderr and "'steps'" in result.stderr
  result = run_main("--config=configs/fewshot.py:task=sst2,method=adapter", workdir=tmp_path / "bad")
  assert (
    result.returncode != 0 and "config.method='adapter' is invalid; valid: ['bitfit', 'full', 'head'" in result.stderr
  )
  result = run_main(
    "--config=configs/fewshot.py:task=sst2,method=lora", "--config.lora.targets=attention_in", workdir=tmp_path / "bad"
  )  # found when the method is prepared, before anything compiles
  assert result.returncode != 0 and "lora.targets='attention_in' matches no projection" in result.stderr
  assert "compiled" not in result.stderr and "Traceback" not in result.stderr
  result = run_main(
    "--config=configs/fewshot.py:task=trec,method=zero_shot", f"--config.data.dir={tmp_path}", workdir=tmp_path / "bad"
  )
  assert result.returncode != 0 and f"no directory {tmp_path}/trec" in result.stderr
  assert "--config.data.dir=DIR" in result.stderr and "Traceback" not in result.stderr


def test_a_new_task_folder_runs_with_label_descriptions_from_the_command_line(tmp_path, tfds_dir):
  """The README's 'Adding a task' recipe: a folder in the TSV format plus --config.data.label_descriptions."""
  with open(f"{data_dir()}/sst2/test.tsv") as f:
    rows = f.read().splitlines()[1:81]
  for split, part in (("train", rows[:60]), ("test", rows[60:])):
    (tmp_path / "data" / "reviews").mkdir(parents=True, exist_ok=True)
    (tmp_path / "data" / "reviews" / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(part) + "\n")
  workdir = tmp_path / "run"
  result = run_main(
    "--config=configs/fewshot.py:task=reviews,method=zero_shot,k=4",
    f"--config.data.dir={tmp_path / 'data'}",
    """--config.data.label_descriptions=("A bad movie.", "A good movie.")""",
    workdir=workdir,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  config = json.loads((workdir / "config.json").read_text())
  assert config["data"]["label_descriptions"] == ["A bad movie.", "A good movie."]
  final = read_metrics(workdir)[-1]
  assert final["final"] and final["examples"] == 20 and 0 <= final["eval/accuracy"] <= 1
