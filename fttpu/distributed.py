"""Joining JAX's multi-controller runtime: one process per host, every process runs the same program.

Where the coordinator comes from, first match wins:
  1. --coordinator_address/--num_processes/--process_id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
     JAX_PROCESS_ID): explicit, as launch/slurm.sh and launch/multiprocess.py pass them. JAX's cluster
     detection is then off, so each process drives every device it sees (SLURM's detection would give
     a one-task-per-node process a single GPU).
  2. A Cloud TPU VM (libtpu installed) or a SLURM job step (srun) of several tasks: JAX finds the
     workers itself. A process started in a multi-task sbatch/salloc shell but not by srun is alone.
  3. Otherwise a single process.
When the launcher says how many devices each process should drive (--local_devices, or
FTTPU_LOCAL_DEVICES as the launchers set it), a process that sees another number stops.
CPU processes exchange collectives through gloo. A peer that stops heartbeating for
`heartbeat_timeout_s` makes every other process fail instead of waiting forever.
"""

import importlib.util
import logging
import os

import jax


def _from_env(value, name: str, kind=str):
  if value not in (None, "", -1):
    return value
  raw = os.environ.get(name)
  return kind(raw) if raw not in (None, "") else None


def on_tpu_host() -> bool:
  """A Cloud TPU VM: libtpu is installed (jax[tpu])."""
  return importlib.util.find_spec("libtpu") is not None


def cluster_detected() -> bool:
  """A multi-worker environment that jax.distributed.initialize() configures without arguments."""
  on_tpu_vm = on_tpu_host()
  srun_tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1") or 1)  # srun sets it; an sbatch shell does not
  return on_tpu_vm or srun_tasks > 1


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  heartbeat_timeout_s: int = 100,
  local_devices: int | None = None,
) -> int:
  """Joins the runtime when the run has several processes (see the module docstring); returns the
  number of processes. Must run before anything touches a JAX device."""
  expected = _from_env(local_devices, "FTTPU_LOCAL_DEVICES", int)
  count = _join(coordinator_address, num_processes, process_id, heartbeat_timeout_s)
  check_local_devices(expected)
  return count


def check_local_devices(expected: int | None) -> None:
  """Fails when this process drives another number of devices than the launcher asked for."""
  if expected is not None and jax.local_device_count() != expected:
    raise ValueError(
      f"process {jax.process_index()} sees {jax.local_device_count()} local "
      f"{jax.default_backend()} devices but the launcher asked for {expected} "
      "(--local_devices / FTTPU_LOCAL_DEVICES): check CUDA_VISIBLE_DEVICES, the job's GPUs per node "
      "(--gpus-per-node) or --devices_per_process"
    )


def _join(coordinator_address, num_processes, process_id, heartbeat_timeout_s) -> int:
  address = _from_env(coordinator_address, "JAX_COORDINATOR_ADDRESS")
  count = _from_env(num_processes, "JAX_NUM_PROCESSES", int)
  index = _from_env(process_id, "JAX_PROCESS_ID", int)
  if address is None and count not in (None, 1):
    raise ValueError(f"--num_processes={count} needs --coordinator_address=HOST:PORT (of process 0)")
  if address is None and not cluster_detected():
    return 1
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only CPU devices use it
  explicit = {} if address is None else {"cluster_detection_method": "deactivate"}  # every visible device
  jax.distributed.initialize(address, count, index, heartbeat_timeout_seconds=heartbeat_timeout_s, **explicit)
  logging.info(
    "process %d of %d (coordinator %s): %d local of %d devices",
    jax.process_index(),
    jax.process_count(),
    address or "auto-detected",
    jax.local_device_count(),
    jax.device_count(),
  )
  return jax.process_count()
