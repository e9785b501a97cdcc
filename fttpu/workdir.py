"""A run's workdir: one run at a time (a lock that dies with its process, or in a bucket a lease that
lapses without it), and what a resume must match (the config saved in the checkpoint and the
fingerprint of the sampled data)."""

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid

import filelock
import jax
import numpy as np

from fttpu.errors import ConfigError
from fttpu import files

LOCK = ".fttpu.lock"
HOLDER = ".fttpu.lock.holder"  # who holds LOCK: {"pid", "host"}, written once it is held
LEASE = ".fttpu.lease"  # a bucket workdir's lock: {"pid", "host", "token", "renewed"}
LEASE_SECONDS = 300.0  # a lease not renewed for this long is a killed run's: the next run takes it
RENEW_SECONDS = 60.0
SETTLE_SECONDS = 2.0  # two runs that wrote the lease at once both read the last writer's token


class WorkdirBusy(ConfigError):
  """Another run holds the workdir."""


def _holder(workdir: str) -> str:
  try:
    holder = json.loads(files.read_text(files.join(workdir, HOLDER)))
    return f"process {holder['pid']} on host {holder['host']}"
  except (OSError, ValueError, KeyError, TypeError):
    return "another process (it has not written its PID yet)"


class _FileLock:
  """A local (or NFS) workdir's lock: the operating system drops it with its process."""

  def __init__(self, workdir: str):
    self.workdir, self.lock = workdir, filelock.FileLock(os.path.join(workdir, LOCK), timeout=0)

  def acquire(self) -> str:
    """'' once held, else why not."""
    try:
      self.lock.acquire()
    except filelock.Timeout:
      return f"workdir {self.workdir} is in use by another run ({_holder(self.workdir)})"
    files.write_atomic(
      os.path.join(self.workdir, HOLDER), json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
    )
    return ""

  def release(self) -> None:
    if self.lock.is_locked:
      self.lock.release()


class BucketLease:
  """A bucket workdir's lock, where no lock dies with its process: a lease object that the holder
  renews every RENEW_SECONDS. A run takes it when it is absent, its own, or not renewed for
  LEASE_SECONDS (its run was killed); after writing it waits SETTLE_SECONDS and reads it back, so
  of two runs starting at once only the last writer goes on (bucket reads follow writes)."""

  def __init__(
    self,
    workdir: str,
    lease_seconds: float = LEASE_SECONDS,
    renew_seconds: float = RENEW_SECONDS,
    settle_seconds: float = SETTLE_SECONDS,
  ):
    self.path = files.join(workdir, LEASE)
    self.workdir, self.lease, self.renew, self.settle = workdir, lease_seconds, renew_seconds, settle_seconds
    self.token = uuid.uuid4().hex
    self._stop = threading.Event()
    self._renewer = None

  def _read(self) -> dict | None:
    try:
      return json.loads(files.read_text(self.path))
    except FileNotFoundError:
      return None
    except (UnicodeDecodeError, ValueError):
      return {}  # half a lease from another tool: treat as lapsed

  def _write(self) -> None:
    files.write_atomic(
      self.path,
      json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "token": self.token, "renewed": time.time()}),
    )

  def acquire(self) -> str:
    held = self._read()
    if held and held.get("token") != self.token:
      age = time.time() - float(held.get("renewed", 0))
      if age < self.lease:
        return (
          f"workdir {self.workdir} is in use by another run (process {held.get('pid')} on host "
          f"{held.get('host')}, its lease {self.path} renewed {age:.0f} s ago; a killed run's lease "
          f"lapses {self.lease:.0f} s after its last renewal)"
        )
      logging.warning(
        "taking over %s: its run (process %s on host %s) last renewed it %.0f s ago",
        self.path,
        held.get("pid"),
        held.get("host"),
        age,
      )
    self._write()
    time.sleep(self.settle)
    held = self._read()
    if not held or held.get("token") != self.token:
      return f"workdir {self.workdir} is in use by another run (it took {self.path} as this one started)"
    self._renewer = threading.Thread(target=self._keep_renewing, name="fttpu-lease", daemon=True)
    self._renewer.start()
    return ""

  def _keep_renewing(self) -> None:
    while not self._stop.wait(self.renew):
      try:
        self._write()
      except OSError as e:  # a bucket hiccup: the next renewal tries again, well inside the lease
        logging.warning("could not renew %s: %s", self.path, e)

  def release(self) -> None:
    if self._renewer is None:
      return
    self._stop.set()
    self._renewer.join()
    self._renewer = None
    held = self._read()
    if held and held.get("token") == self.token:
      files.remove(self.path)


@contextlib.contextmanager
def exclusive(workdir: str):
  """Holds the workdir's lock while the block runs. Only process 0 of a multi-host run takes it;
  the others learn at a barrier whether it did. A lock left by a killed run never blocks (the
  operating system drops it with its process; a bucket's lease lapses, see BucketLease)."""
  files.makedirs(workdir)
  lock = BucketLease(workdir) if files.is_remote(workdir) else _FileLock(workdir)
  problem = ""
  if jax.process_index() == 0:
    problem = lock.acquire()
    if problem:
      problem += "; wait for it to finish, stop it, or use another --workdir"
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
    lock.release()


# ---------------------------------------------------------------------------------------------- resume


def flatten(config: dict, prefix: str = "") -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  out = {}
  for key, value in config.items():
    out.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
  return out


# Settings a resumed run may change: they do not change what the run computes.
RESUMABLE_CHANGES = (
  "train.nonfinite",
  "train.divergence",
  "train.divergence_ratio",
  "train.stuck_steps",
  "train.log_every",
)


def config_differences(saved: dict, current: dict) -> list[str]:
  """'key: old -> new' for every setting (but RESUMABLE_CHANGES) where two configs differ."""
  old, new = flatten(saved), flatten(current)
  return [
    f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
    for k in sorted(old.keys() | new.keys())
    if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES
  ]


def check_config(workdir: str, checkpoint_name: str, saved: dict, current: dict) -> None:
  """A workdir with checkpoints resumes only the config its checkpoint was saved with."""
  differs = config_differences(saved, current)
  if differs:
    raise ConfigError(
      f"{workdir} holds checkpoints of a run with another config ({', '.join(differs[:8])}), "
      f"as saved in {checkpoint_name}; resume with the same config or use a new --workdir"
    )


def read_config_json(workdir: str) -> tuple[dict | None, str]:
  """(config, '') from WORKDIR/config.json, or (None, what is wrong with it)."""
  path = files.join(workdir, "config.json")
  try:
    return json.loads(files.read_text(path)), ""
  except FileNotFoundError:
    return None, f"{path} is missing"
  except (UnicodeDecodeError, ValueError) as e:
    return None, f"{path} is damaged ({type(e).__name__}: {str(e)[:120]})"


def note_config_json(workdir: str, checkpoint_name: str) -> None:
  """Says (once, on resume) when config.json is missing or damaged; the run rewrites it."""
  _, problem = read_config_json(workdir)
  if problem:
    logging.warning(
      "%s; the run's config was checked against %s instead and config.json is rewritten", problem, checkpoint_name
    )


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
    raise ConfigError(
      f"the sampled {' and '.join(differs)} data differ from what {checkpoint_name} was trained on "
      f"(the task files changed since the run started?); resuming in {workdir} would mix two "
      "samples: restore the files or use a new --workdir"
    )
