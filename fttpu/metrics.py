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
  """Appends {"step": s, **scalars} lines to metrics.jsonl and the same scalars to TensorBoard."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard")) if enabled else None

  def write(self, step: int, scalars: dict, **extra) -> dict:
    record = {"step": int(step), **{k: float(np.asarray(v)) for k, v in scalars.items()}, **extra}
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
      for key, value in scalars.items():
        self._tensorboard.add_scalar(key, float(np.asarray(value)), int(step))
      self._tensorboard.flush()
    return record

  def close(self):
    if self._tensorboard is not None:
      self._tensorboard.close()


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
