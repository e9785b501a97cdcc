"""Joining JAX's multi-controller runtime: one process per host, every process runs the same program.

Where the coordinator comes from, first match wins:
  1. --coordinator_address/--num_processes/--process_id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
     JAX_PROCESS_ID): explicit, as launch/slurm.sh and launch/multiprocess.py pass them.
  2. A Cloud TPU VM (libtpu installed) or a SLURM job step of several tasks: JAX finds the workers itself.
  3. Otherwise a single process.
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


def cluster_detected() -> bool:
  """A multi-worker environment that jax.distributed.initialize() configures without arguments."""
  on_tpu_vm = importlib.util.find_spec("libtpu") is not None
  slurm_tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("SLURM_NTASKS", "1")) or 1)
  return on_tpu_vm or slurm_tasks > 1


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, heartbeat_timeout_s: int = 100) -> int:
  """Joins the runtime when the run has several processes (see the module docstring); returns the
  number of processes. Must run before anything touches a JAX device."""
  address = _from_env(coordinator_address, "JAX_COORDINATOR_ADDRESS")
  count = _from_env(num_processes, "JAX_NUM_PROCESSES", int)
  index = _from_env(process_id, "JAX_PROCESS_ID", int)
  if address is None and count not in (None, 1):
    raise ValueError(f"--num_processes={count} needs --coordinator_address=HOST:PORT (of process 0)")
  if address is None and not cluster_detected():
    return 1
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only CPU devices use it
  jax.distributed.initialize(address, count, index, heartbeat_timeout_seconds=heartbeat_timeout_s)
  logging.info("process %d of %d (coordinator %s): %d local of %d devices", jax.process_index(),
               jax.process_count(), address or "auto-detected", jax.local_device_count(), jax.device_count())
  return jax.process_count()
