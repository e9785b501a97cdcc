"""Metrics to DIR/metrics.jsonl (one JSON object per line) and TensorBoard, plus progress lines."""
import json
import logging
import os
import time

import numpy as np
from tensorboardX import SummaryWriter


def quiet_library_logs():
  """Keeps fttpu's INFO lines; orbax's per-save INFO lines go to WARNING and up."""
  from absl import logging as absl_logging

  class DropOrbaxInfo(logging.Filter):
    def filter(self, record):
      return record.levelno >= logging.WARNING or "orbax" not in record.pathname
  for handler in logging.getLogger().handlers + [absl_logging.get_absl_handler()]:
    handler.addFilter(DropOrbaxInfo())


class MetricWriter:
  """Appends {"step": s, **scalars} lines to metrics.jsonl and the same scalars to TensorBoard.

  On resume from step s, lines past s (and earlier final lines) are dropped, so the file reads
  as one uninterrupted run; TensorBoard purges its events past s the same way.
  """

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    if enabled and os.path.exists(self.path):
      self._truncate(resume_step if resume_step is not None else -1)
    purge = None if resume_step is None else resume_step + 1
    self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=purge) if enabled else None

  def _truncate(self, last_step: int):
    with open(self.path) as f:
      records = [json.loads(line) for line in f if line.strip()]
    with open(self.path, "w") as f:
      for record in records:
        if record["step"] <= last_step and not record.get("final"):
          f.write(json.dumps(record) + "\n")

  def write(self, step: int, scalars: dict, **extra) -> dict:
    record = {"step": int(step), **{k: float(np.asarray(v)) for k, v in scalars.items()}, **extra}
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
      split = extra.get("split")
      for key, value in scalars.items():
        tag = key.replace("eval/", f"{split}/", 1) if split else key  # dev/accuracy, test/accuracy
        self._tensorboard.add_scalar(tag, float(np.asarray(value)), int(step))
      self._tensorboard.flush()
    return record

  def close(self):
    if self._tensorboard is not None:
      self._tensorboard.close()


def read_metrics(workdir: str) -> list[dict]:
  """The records of WORKDIR/metrics.jsonl ([] when the run has not written any)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


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
