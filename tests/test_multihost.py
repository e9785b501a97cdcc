"""A real multi-process run on localhost: jax.distributed with gloo CPU collectives, 2 processes x 2
fake devices, started by launch/multiprocess.py, against one process on one device; and a killed
peer that must not leave the other process hanging."""

import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from tests.conftest import REPO, data_dir, with_fake_devices

STEPS = 3


def main_args(checkpoint: str, steps: int = STEPS) -> list:
  """FSDP over every device of every process (fsdp=-1): each process holds half of each parameter and
  reads half of the checkpoint, and the batch is split across the processes."""
  return [
    sys.executable,
    "-m",
    "fttpu.main",
    f"--config=configs/fewshot.py:family=roberta,checkpoint={checkpoint},method=full,steps={steps}",
    f"--config.data.dir={data_dir()}",
    "--config.mesh.data=1",
    "--config.mesh.fsdp=-1",
    "--config.optimizer.name=sgd",
    "--config.optimizer.learning_rate=1e-3",
    "--config.train.log_every=1",
    f"--config.train.eval_every={steps}",
    f"--config.train.checkpoint_every={steps}",
    "--config.data.num_test=64",  # of 872: the final evaluation's batches cross the processes (3 s for all)
  ]


def saved_state(workdir, step: int, like=None) -> dict:
  """The saved TrainState tree, onto `like`'s shapes and shardings (a checkpoint written by other devices
  than this process's needs a target)."""
  import orbax.checkpoint as ocp

  target = None if like is None else jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
  return ocp.StandardCheckpointer().restore(str(workdir / "checkpoints" / str(step) / "state"), target)


def losses(workdir) -> list:
  with open(workdir / "metrics.jsonl") as f:
    return [record["train/loss"] for record in map(json.loads, f) if "train/loss" in record]


@pytest.fixture(scope="module")
def two_processes(tiny_roberta, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("two")
  command = [
    sys.executable,
    "launch/multiprocess.py",
    "--processes=2",
    "--devices_per_process=2",
    "--",
    *main_args(tiny_roberta),
    f"--workdir={workdir}",
  ]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-4000:]
  return workdir, result.stdout


def test_two_processes_train_like_one(two_processes, tiny_roberta, tmp_path):
  """The same steps as one process on one device. FSDP contracts the hidden axis in per-device
  partial sums and the batch is split over the processes, so gradients differ by float32
  reassociation; times lr 1e-3 that is far below a parameter's own rounding step. Measured: at most
  one float32 ulp of the parameter; the bound allows two (2.4e-7 relative) plus 1e-8."""
  workdir, _ = two_processes
  single = subprocess.run(
    [*main_args(tiny_roberta), f"--workdir={tmp_path}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert single.returncode == 0, single.stderr[-3000:]
  one = saved_state(tmp_path, STEPS)
  two = saved_state(workdir, STEPS, like=one)  # written by 4 devices of 2 processes, read onto this one
  chex.assert_trees_all_close(two["params"], one["params"], rtol=2.4e-7, atol=1e-8)
  assert len(losses(workdir)) == STEPS
  np.testing.assert_allclose(losses(workdir), losses(tmp_path), rtol=1e-6)


def test_each_process_joins_reads_its_half_and_only_process_0_logs(two_processes):
  workdir, output = two_processes
  lines = output.splitlines()
  assert any(l.startswith("[0] ") and "process 0 of 2 (coordinator 127.0.0.1:" in l for l in lines)
  assert any(l.startswith("[1] ") and "process 1 of 2 (coordinator 127.0.0.1:" in l for l in lines)
  assert any(l.startswith("[0] ") and "mesh {'data': 1, 'fsdp': 4, 'tensor': 1} over 4 cpu devices" in l for l in lines)
  # Process 0's devices hold half of every split parameter (the attention biases, 0.3%, are replicated).
  read = [
    float(l.split("read ")[1].split("%")[0]) for l in lines if l.startswith("[0] ") and "of the checkpoint's" in l
  ]
  assert len(read) == 1 and 50 <= read[0] <= 55, read
  progress = [l for l in lines if "train/loss=" in l]
  assert len(progress) == STEPS and all(l.startswith("[0] ") for l in progress)
  results = [l for l in lines if '"final": true' in l]
  assert len(results) == 1 and results[0].startswith("[0] ")
  with open(workdir / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  assert sum(bool(r.get("final")) for r in records) == 1  # one writer, not two


@pytest.mark.slow  # 31 s here: make test-all; make test keeps the two-process run
def test_a_killed_peer_stops_the_other_process_with_an_error(tiny_roberta, tmp_path):
  """Process 1 is killed (SIGKILL) mid-training: process 0 must exit with an error within the bound
  (a 10 s heartbeat timeout, plus shutdown), not hang in a collective."""
  env = {
    **with_fake_devices(2),
    "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}",
    "JAX_NUM_PROCESSES": "2",
  }
  command = [*main_args(tiny_roberta, steps=100000), f"--workdir={tmp_path}", "--heartbeat_timeout=10"]
  lead = subprocess.Popen(
    command, cwd=REPO, env={**env, "JAX_PROCESS_ID": "0"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  peer = subprocess.Popen(
    command, cwd=REPO, env={**env, "JAX_PROCESS_ID": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  try:
    output = []
    for line in lead.stdout:  # wait until training runs across both processes
      output.append(line)
      if "step 5/" in line:
        break
    assert any("step 5/" in l for l in output), "".join(output[-30:])
    peer.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    output.extend(lead.stdout)  # until process 0 exits (the test's timeout is the hang detector)
    code = lead.wait(timeout=120)
    waited = time.monotonic() - killed
  finally:
    for process in (lead, peer):
      if process.poll() is None:
        process.kill()
  assert code != 0, "".join(output[-30:])
  assert waited < 60, waited
  errors = [l.strip() for l in output if "rror" in l][:3]
  print(f"process 0 exited with {code} {waited:.1f}s after its peer was killed; first errors:", *errors, sep="\n")


def free_port() -> int:
  sys.path.insert(0, str(REPO / "launch"))
  from multiprocess import free_port as port

  return port()


PREEMPT_STEPS = 45
SIGNAL_AT = 15  # the processes agree on a step to save within a step or two of the notice: well before the end


def launch_two(tiny_roberta, workdir) -> list:
  return [
    sys.executable,
    "launch/multiprocess.py",
    "--processes=2",
    "--devices_per_process=2",
    "--",
    *main_args(tiny_roberta, steps=PREEMPT_STEPS),
    f"--workdir={workdir}",
    "--config.train.checkpoint_every=50",
  ]


@pytest.mark.slow  # 2 minutes here: make test-all (a preempted pod), as the killed peer above
def test_sigterm_to_one_process_checkpoints_every_process_at_one_step_and_the_resume_is_exact(tiny_roberta, tmp_path):
  """SIGTERM to process 1 only (what a preempted host gets): JAX's preemption service and orbax's
  sync point make both processes save the same step and exit 0, and the resumed 2-process run
  ends bit-identical to an uninterrupted one."""
  reference = subprocess.Popen(
    launch_two(tiny_roberta, tmp_path / "uninterrupted"),
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  workdir = tmp_path / "preempted"
  run = subprocess.Popen(
    launch_two(tiny_roberta, workdir), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  output, pids = [], {}
  for line in run.stdout:
    output.append(line)
    if line.startswith("[launch] process "):
      pids[int(line.split()[2].rstrip(":"))] = int(line.rsplit(" ", 1)[1])
    if line.startswith("[0] ") and f"step {SIGNAL_AT}/" in line:
      os.kill(pids[1], signal.SIGTERM)
      break
  output.extend(run.stdout)
  assert run.wait(timeout=300) == 0, "".join(output[-40:])
  saved = [
    int(l.split("saved checkpoint ", 1)[1].split()[0]) for l in output if "preempted (SIGTERM): saved checkpoint" in l
  ]
  assert len(saved) == 2 and len(set(saved)) == 1 and SIGNAL_AT <= saved[0] < PREEMPT_STEPS, "".join(output[-40:])
  assert "[launch] process 0 exited with 0" in "".join(output) and "[launch] process 1 exited with 0" in "".join(output)
  assert os.path.isdir(workdir / "checkpoints" / str(saved[0]))
  resumed = subprocess.run(launch_two(tiny_roberta, workdir), cwd=REPO, capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0 and f"at step {saved[0]}" in resumed.stdout, resumed.stdout[-4000:]
  assert reference.wait(timeout=600) == 0, reference.stdout.read()[-4000:]
  from fttpu import checkpoint

  read = lambda w: checkpoint.restore_untyped(checkpoint.make_manager(str(w), 2), PREEMPT_STEPS)  # onto 1 device
  ours, theirs = read(workdir), read(tmp_path / "uninterrupted")
  for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert losses(workdir) == losses(tmp_path / "uninterrupted")


# ---------------------------------------------------------------- joining: every device, the right count

SLURM_STEP = {
  "SLURM_JOB_ID": "4242",
  "SLURM_NTASKS": "2",
  "SLURM_STEP_NUM_TASKS": "2",
  "SLURM_PROCID": "1",
  "SLURM_LOCALID": "0",
  "SLURM_STEP_NODELIST": "gpu[07-08]",
  "SLURM_NODELIST": "gpu[07-08]",
}


@pytest.fixture
def joins(monkeypatch):
  """The arguments fttpu hands jax.distributed.initialize (recorded, not run), in a clean environment."""
  from fttpu import distributed

  for name in [*SLURM_STEP, "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "FTTPU_LOCAL_DEVICES"]:
    monkeypatch.delenv(name, raising=False)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *args, **kwargs: calls.append((args, kwargs)))
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax.config, "update", lambda *args: None)
  return distributed, calls, monkeypatch


def test_explicit_coordinates_turn_cluster_detection_off_so_a_process_drives_every_gpu_of_its_node(joins):
  """launch/slurm.sh's one task per node, inside an srun step: JAX's SLURM detection would hand the
  process only GPU SLURM_LOCALID (a 2 x 8 job trained on 2 GPUs)."""
  distributed, calls, env = joins
  for name, value in SLURM_STEP.items():
    env.setenv(name, value)
  distributed.initialize("gpu07:1234", 2, 1)
  ((args, kwargs),) = calls
  assert args == ("gpu07:1234", 2, 1) and kwargs["cluster_detection_method"] == "deactivate"


def test_an_srun_step_without_coordinates_is_left_to_jax_detection(joins):
  distributed, calls, env = joins
  for name, value in SLURM_STEP.items():
    env.setenv(name, value)
  assert distributed.initialize() == 2
  ((args, kwargs),) = calls
  assert args == (None, None, None) and "cluster_detection_method" not in kwargs


def test_a_lone_process_in_a_multi_task_sbatch_shell_runs_alone(joins):
  """sbatch/salloc set SLURM_NTASKS=2 in the shell, but only srun starts tasks: a plain `python -m
  fttpu.main` there is one process (it used to fail: 'coordinator_address should be defined')."""
  distributed, calls, env = joins
  env.setenv("SLURM_JOB_ID", "4242")
  env.setenv("SLURM_NTASKS", "2")
  assert distributed.initialize() == 1 and calls == []


def test_a_process_that_sees_another_device_count_than_its_launcher_asked_for_stops(joins):
  distributed, _, env = joins
  env.setattr(jax, "local_device_count", lambda: 1)
  env.setattr(jax, "process_index", lambda: 0)
  distributed.check_local_devices(1)
  distributed.check_local_devices(None)
  with pytest.raises(ValueError, match="process 0 sees 1 local cpu devices but the launcher asked for 8"):
    distributed.check_local_devices(8)


def test_two_processes_check_their_device_count_through_the_real_runtime(tiny_roberta, tmp_path):
  """The same code path as a pod or a SLURM job: 2 processes x 2 fake devices, told to expect 4 each."""
  env = {
    **with_fake_devices(2),
    "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}",
    "JAX_NUM_PROCESSES": "2",
    "FTTPU_LOCAL_DEVICES": "4",
  }
  command = [*main_args(tiny_roberta), f"--workdir={tmp_path}"]
  processes = [
    subprocess.Popen(
      command,
      cwd=REPO,
      env={**env, "JAX_PROCESS_ID": str(i)},
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in (0, 1)
  ]
  outputs = [p.communicate(timeout=300)[0] for p in processes]
  for index, (process, output) in enumerate(zip(processes, outputs)):
    assert process.returncode != 0 and "Traceback" not in output, output[-3000:]
    assert f"error: process {index} sees 2 local cpu devices but the launcher asked for 4" in output, output[-3000:]
