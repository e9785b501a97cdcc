"""Every command line turns a user's mistake (OSError included) into one line naming the path or key
and the way out: each runs here in a subprocess on such input, and none may print a traceback."""

import subprocess
import sys

import pytest

from configs import fewshot
from tests.conftest import REPO, data_dir


def a_file(tmp_path):
  path = tmp_path / "a-file"
  path.write_text("not a directory")
  return path


def workdir_with(tmp_path, method: str, trajectory: bytes | None = None):
  """A workdir holding a valid config.json of `method` (and a trajectory file with these bytes)."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(fewshot.get_config(f"method={method}").to_json())
  if trajectory is not None:
    (workdir / "trajectory.safetensors").write_bytes(trajectory)
  return workdir


def damaged_config(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text('{"method": "full", "mod')
  return workdir


# (id, module, arguments as a function of tmp_path, expected part of the one line)
CASES = [
  (
    "main: workdir is a file",
    "fttpu.main",
    lambda t: ["--config=configs/fewshot.py:task=sst2", f"--config.data.dir={data_dir()}", f"--workdir={a_file(t)}"],
    "a-file: File exists; a file is in the way",
  ),
  (
    "main: workdir under a file",
    "fttpu.main",
    lambda t: [
      "--config=configs/fewshot.py:task=sst2",
      f"--config.data.dir={data_dir()}",
      f"--workdir={a_file(t)}/run",
    ],
    "a-file/run: Not a directory; a file is in the way",
  ),
  (
    "export: no workdir",
    "fttpu.export",
    lambda t: [f"--workdir={t}/nowhere", f"--to={t}/out"],
    "nowhere is not a run's workdir: it has no config.json",
  ),
  (
    "export: damaged config.json",
    "fttpu.export",
    lambda t: [f"--workdir={damaged_config(t)}", f"--to={t}/out"],
    "run/config.json is damaged (JSONDecodeError",
  ),
  ("replay: no workdir", "fttpu.replay", lambda t: [f"--workdir={t}/nowhere"], "nowhere is not a run's workdir: "),
  (
    "replay: not a zeroth-order run",
    "fttpu.replay",
    lambda t: [f"--workdir={workdir_with(t, 'full')}"],
    "is a method=full run; only zeroth-order runs (method mezo or zo) have a trajectory to replay",
  ),
  (
    "replay: truncated trajectory",
    "fttpu.replay",
    lambda t: [f"--workdir={workdir_with(t, 'mezo', b'x' * 40)}"],
    "run/trajectory.safetensors is damaged",
  ),
  (
    "plan: no such model",
    "fttpu.plan",
    lambda t: ["--config=configs/fewshot.py", f"--model={t}/nowhere"],
    "nowhere' is neither a preset",
  ),
  (
    "bench: unknown method",
    "fttpu.bench",
    lambda t: ["--methods=adapter", "--steps=1"],
    "benchmark of adapter on mesh data=1: unknown method 'adapter'; valid: ['bitfit'",
  ),
  (
    "bench: unknown preset",
    "fttpu.bench",
    lambda t: ["--model=opt-1b"],
    "--model: ['opt-1b'] are not presets; valid: ['llama-2-13b'",
  ),
  (
    "tiny: out under a file",
    "fttpu.models.tiny",
    lambda t: [f"--out={a_file(t)}/tiny", f"--data_dir={data_dir()}"],
    "Not a directory; a file is in the way",
  ),
  (
    "tiny: no data",
    "fttpu.models.tiny",
    lambda t: [f"--out={t}/tiny", f"--data_dir={t}/nowhere"],
    "nowhere/sst2, and the TFDS dataset 'glue/sst2' could not be loaded",
  ),
  (
    "demo: no data",
    "experiments.demo",
    lambda t: [f"--data_dir={t}/nowhere", f"--workdir={t}/demo"],
    "nowhere/sst2, and the TFDS dataset 'glue/sst2' could not be loaded",
  ),
  (
    "sweep runner: workdir is a file",
    "experiments.mezo_k16_cpu.run",
    lambda t: [f"--workdir={a_file(t)}", "--tasks=sst2", "--seeds=42", "--only=zero-shot"],
    "a-file/sst2: Not a directory; a file is in the way",
  ),
  (
    "sweep aggregate: nothing there",
    "experiments.mezo_k16_cpu.aggregate",
    lambda t: [f"--workdir={t}/nowhere", f"--out={t}/out"],
    "nowhere holds no finished cell of mezo_k16_cpu",
  ),
]


# make test runs one case or two of each command line (each case is a process: 4-5 s here); make test-all these too.
SLOW_CASES = (
  "main: workdir under a file",
  "export: no workdir",
  "replay: no workdir",
  "replay: not a zeroth-order run",
  "bench: unknown preset",
  "tiny: out under a file",
)


@pytest.mark.parametrize(
  "module, make_args, expected",
  [pytest.param(*c[1:], id=c[0], marks=pytest.mark.slow if c[0] in SLOW_CASES else ()) for c in CASES],
)
def test_a_user_error_is_one_line_without_a_traceback(tmp_path, module, make_args, expected):
  result = subprocess.run(
    [sys.executable, "-m", module, *make_args(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert result.returncode != 0, result.stderr[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and expected in last, result.stderr[-2000:]
