"""Entry point: python -m fttpu.main --config=configs/fewshot.py:task=sst2,method=full --workdir=DIR"""

import importlib.util
import json
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from fttpu import errors
from fttpu import cli, distributed, guards, host_memory, metrics, train
from fttpu.config import check_overrides
from fttpu.errors import ConfigError

config_flags.DEFINE_config_file(
  "config", None, "Config file, optionally with :key=value,... arguments.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for config.json, metrics.jsonl, TensorBoard and checkpoints.")
flags.DEFINE_string(
  "coordinator_address",
  None,
  "Multi-host: HOST:PORT of process 0 (else JAX_COORDINATOR_ADDRESS; "
  "TPU pods and SLURM steps are detected without it).",
)
flags.DEFINE_integer("num_processes", None, "Multi-host: the number of processes (else JAX_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index (else JAX_PROCESS_ID).")
flags.DEFINE_integer(
  "local_devices",
  None,
  "Devices each process must drive (else FTTPU_LOCAL_DEVICES, as the "
  "launchers set it); a process that sees another number stops.",
)
flags.DEFINE_integer("heartbeat_timeout", 100, "Multi-host: seconds without a peer's heartbeat before the run fails.")
flags.mark_flags_as_required(["config", "workdir"])


def _load_config_file(argv):
  """The ConfigDict that --config=FILE[:ARG] names, to check --config.* overrides against."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None and "--config" in argv[:-1]:
    spec = argv[argv.index("--config") + 1]
  if spec is None:
    return None
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_fttpu_config", path)
  if not os.path.isfile(path) or module_spec is None:
    raise ConfigError(f"--config={spec}: no config file {path!r} (for example configs/fewshot.py)")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  metrics.quiet_library_logs()
  f = flags.FLAGS
  try:
    distributed.initialize(f.coordinator_address, f.num_processes, f.process_id, f.heartbeat_timeout, f.local_devices)
  except ValueError as e:
    sys.exit(f"error: {e}")
  if jax.process_index() != 0:  # process 0 logs and writes metrics for the run
    logging.set_verbosity(logging.WARNING)
  try:
    result = train.run(flags.FLAGS.config, flags.FLAGS.workdir)
  except errors.USER_ERRORS as e:
    logging.error("%s: %s", type(e).__name__, e)
    sys.exit(f"error: {cli.describe(e)}")
  except KeyboardInterrupt:  # Ctrl-C before the run's handler is in place (while validating or locking)
    sys.exit("error: interrupted (Ctrl-C) while starting, before any checkpoint was written")
  if jax.process_index() == 0:
    print(json.dumps(result))
  if result.get("preempted") == "Ctrl-C":
    sys.exit(guards.INTERRUPTED)


if __name__ == "__main__":
  host_memory.restart_with_huge_pages()
  try:
    check_overrides(_load_config_file(sys.argv), sys.argv)
  except ConfigError as e:
    sys.exit(f"error: {e}")
  app.run(main)
