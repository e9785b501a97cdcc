"""A run's workdir: one run at a time (a lock that dies with its process), and what a resume must
match (the config saved in the checkpoint and the fingerprint of the sampled data)."""
import contextlib
import hashlib
import json
import logging
import os
import socket

import filelock
import jax
import numpy as np

from fttpu.config import ConfigError
from fttpu import files

LOCK = ".fttpu.lock"
HOLDER = ".fttpu.lock.holder"  # who holds LOCK: {"pid", "host"}, written once it is held


class WorkdirBusy(ConfigError):
  """Another run holds the workdir."""


def _holder(workdir: str) -> str:
  try:
    with open(os.path.join(workdir, HOLDER)) as f:
      holder = json.load(f)
    return f"process {holder['pid']} on host {holder['host']}"
  except (OSError, ValueError, KeyError, TypeError):
    return "another process (it has not written its PID yet)"


@contextlib.contextmanager
def exclusive(workdir: str):
  """Holds the workdir's lock while the block runs. Only process 0 of a multi-host run takes it;
  the others learn at a barrier whether it did. A lock left by a killed run never blocks (the
  operating system drops it with its process)."""
  os.makedirs(workdir, exist_ok=True)
  lock = filelock.FileLock(os.path.join(workdir, LOCK), timeout=0)
  problem = ""
  if jax.process_index() == 0:
    try:
      lock.acquire()
      files.write_atomic(os.path.join(workdir, HOLDER), json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    except filelock.Timeout:
      problem = (f"workdir {workdir} is in use by another run ({_holder(workdir)}); wait for it to finish, "
                 "stop it, or use another --workdir")
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    busy = multihost_utils.broadcast_one_to_all(np.asarray(bool(problem)))
    if busy and not problem:
      problem = f"workdir {workdir} is in use by another run (process 0 could not lock it)"
  if problem:
    raise WorkdirBusy(problem)
  try:
    yield
  finally:
    if lock.is_locked:
      lock.release()


# ---------------------------------------------------------------------------------------------- resume


def flatten(config: dict, prefix: str = "") -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  out = {}
  for key, value in config.items():
    out.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
  return out


# Settings a resumed run may change: they do not change what the run computes.
RESUMABLE_CHANGES = ("train.nonfinite", "train.divergence", "train.divergence_ratio", "train.stuck_steps",
                     "train.log_every")


def config_differences(saved: dict, current: dict) -> list[str]:
  """'key: old -> new' for every setting (but RESUMABLE_CHANGES) where two configs differ."""
  old, new = flatten(saved), flatten(current)
  return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys())
          if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES]


def check_config(workdir: str, checkpoint_name: str, saved: dict, current: dict) -> None:
  """A workdir with checkpoints resumes only the config its checkpoint was saved with."""
  differs = config_differences(saved, current)
  if differs:
    raise ConfigError(f"{workdir} holds checkpoints of a run with another config ({', '.join(differs[:8])}), "
                      f"as saved in {checkpoint_name}; resume with the same config or use a new --workdir")


def read_config_json(workdir: str) -> tuple[dict | None, str]:
  """(config, '') from WORKDIR/config.json, or (None, what is wrong with it)."""
  path = os.path.join(workdir, "config.json")
  try:
    with open(path, "rb") as f:
      return json.loads(f.read().decode("utf-8")), ""
  except FileNotFoundError:
    return None, f"{path} is missing"
  except (UnicodeDecodeError, ValueError) as e:
    return None, f"{path} is damaged ({type(e).__name__}: {str(e)[:120]})"


def note_config_json(workdir: str, checkpoint_name: str) -> None:
  """Says (once, on resume) when config.json is missing or damaged; the run rewrites it."""
  _, problem = read_config_json(workdir)
  if problem:
    logging.warning("%s; the run's config was checked against %s instead and config.json is rewritten",
                    problem, checkpoint_name)


def fingerprint(*arrays) -> str:
  """sha256 of the arrays' dtypes, shapes and bytes: equal exactly when the sampled data is."""
  digest = hashlib.sha256()
  for array in arrays:
    array = np.ascontiguousarray(array)
    digest.update(f"{array.dtype}{array.shape}".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()[:16]


def check_data(workdir: str, checkpoint_name: str, saved: dict, current: dict) -> None:
  """The splits a resumed run trains and evaluates on are the ones its checkpoint was trained on."""
  differs = [split for split in sorted(saved) if saved[split] != current.get(split)]
  if differs:
    raise ConfigError(f"the sampled {' and '.join(differs)} data differ from what {checkpoint_name} was trained on "
                      f"(the task files changed since the run started?); resuming in {workdir} would mix two "
                      "samples: restore the files or use a new --workdir")
