"""Metrics to DIR/metrics.jsonl (one JSON object per line) and TensorBoard, plus progress lines."""

import contextlib
import io
import json
import logging
import sys
import time

import numpy as np

from fttpu import files
from fttpu.errors import DataError


@contextlib.contextmanager
def _torch_hidden():
  """While it is held, `import torch` fails as if PyTorch were not installed. tensorboardX imports it when
  it can (1 s and 300 MB in every run of an environment that has PyTorch) only to accept torch tensors,
  which fttpu never logs."""
  if "torch" in sys.modules:  # already paid for
    yield
    return
  sys.modules["torch"] = None
  try:
    yield
  finally:
    del sys.modules["torch"]


with _torch_hidden():
  from tensorboardX import SummaryWriter, record_writer


def quiet_library_logs():
  """Keeps fttpu's INFO lines; orbax's per-save INFO lines go to WARNING and up."""
  from absl import logging as absl_logging

  class DropOrbaxInfo(logging.Filter):
    def filter(self, record):
      return record.levelno >= logging.WARNING or "orbax" not in record.pathname

  for handler in logging.getLogger().handlers + [absl_logging.get_absl_handler()]:
    handler.addFilter(DropOrbaxInfo())


class _BucketEventFile:
  """A TensorBoard event file in a bucket, through fttpu's path layer: each flush uploads it whole
  (objects cannot be appended to; a run's event file is small)."""

  def __init__(self, path):
    self.path, self.buffer = path, io.BytesIO()

  def write(self, data):
    self.buffer.write(data)

  def flush(self):
    files.write_atomic(self.path, self.buffer.getvalue())

  def close(self):
    self.flush()


class _BucketEventFiles:
  def open(self, path):
    return _BucketEventFile(path)

  def directory_check(self, path):
    pass  # buckets have no directories to create


for _scheme in ("gs", "s3"):  # in place of tensorboardX's own, which needs google-cloud-storage or boto3
  record_writer.register_writer_factory(_scheme, _BucketEventFiles())


class MetricWriter:
  """Appends {"step": s, **scalars} lines to metrics.jsonl and the same scalars to TensorBoard.

  On resume from step s, lines past s (and earlier final lines) are dropped, so the file reads
  as one uninterrupted run; TensorBoard purges its events past s the same way.
  """

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
    self.enabled = enabled
    self.path = files.join(workdir, "metrics.jsonl")
    if enabled and files.exists(self.path):
      self._truncate(resume_step if resume_step is not None else -1)
    purge = None if resume_step is None else resume_step + 1
    self._tensorboard = SummaryWriter(files.join(workdir, "tensorboard"), purge_step=purge) if enabled else None

  def _truncate(self, last_step: int):
    records, torn = parse_records(self.path)
    if torn:
      logging.warning("%s: dropped its torn last line %r (a crash or a full disk cut it short)", self.path, torn[:80])
    kept = [r for r in records if r["step"] <= last_step and not r.get("final")]
    files.write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))

  def write(self, step: int, scalars: dict, **extra) -> dict:
    record = {"step": int(step), **{k: float(np.asarray(v)) for k, v in scalars.items()}, **extra}
    if self.enabled:
      files.append_text(self.path, json.dumps(record) + "\n")
      split = extra.get("split")
      for key, value in scalars.items():
        tag = key.replace("eval/", f"{split}/", 1) if split else key  # dev/accuracy, test/accuracy
        self._tensorboard.add_scalar(tag, float(np.asarray(value)), int(step))
      self._tensorboard.flush()
    return record

  def close(self):
    if self._tensorboard is not None:
      self._tensorboard.close()


def parse_records(path: str) -> tuple[list[dict], str]:
  """(records, torn last line or '') of a metrics.jsonl; a damaged line before the last fails naming it."""
  lines = [line for line in files.read_bytes(path).decode("utf-8", errors="replace").split("\n") if line.strip()]
  records = []
  for number, line in enumerate(lines, start=1):
    try:
      records.append(json.loads(line))
    except ValueError:
      if number == len(lines):
        return records, line
      raise DataError(f"{path}:{number}: not a JSON metrics record ({line[:80]!r}); remove or repair that line")
  return records, ""


def read_metrics(workdir: str) -> list[dict]:
  """The records of WORKDIR/metrics.jsonl ([] when the run has not written any; a torn last line,
  as a running or crashed run leaves, is left out)."""
  path = files.join(workdir, "metrics.jsonl")
  if not files.exists(path):
    return []
  return parse_records(path)[0]


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
  """Log lines with step, loss, steps/s and ETA; create it after compilation, before the first step."""

  def __init__(self, total_steps: int, first_step: int):
    self.total, self.first = total_steps, first_step
    self.start = time.perf_counter()

  def line(self, step: int, scalars: dict) -> str:
    elapsed, done = time.perf_counter() - self.start, step - self.first
    rate = done / elapsed if elapsed > 0 and done > 0 else float("nan")
    eta = _duration((self.total - step) / rate) if rate == rate and rate > 0 else "?"
    values = " ".join(f"{k}={float(np.asarray(v)):.4f}" for k, v in scalars.items())
    return f"step {step}/{self.total} {values} | {rate:.2f} steps/s | ETA {eta}"

  def log(self, step: int, scalars: dict):
    logging.info(self.line(step, scalars))
