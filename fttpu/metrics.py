"""Metrics to DIR/metrics.jsonl (one JSON object per line) and TensorBoard, plus progress lines."""
import json
import logging
import os
import time

import numpy as np
from tensorboardX import SummaryWriter


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
  """Log lines with step, loss, steps/s and ETA, timed from the first step after compilation."""

  def __init__(self, total_steps: int, first_step: int):
    self.total, self.first = total_steps, first_step
    self.start = None

  def line(self, step: int, scalars: dict) -> str:
    now = time.perf_counter()
    if self.start is None:
      self.start = (now, step)
    elapsed, done = now - self.start[0], step - self.start[1]
    rate = done / elapsed if elapsed > 0 and done > 0 else float("nan")
    eta = _duration((self.total - step) / rate) if rate == rate and rate > 0 else "?"
    values = " ".join(f"{k}={float(np.asarray(v)):.4f}" for k, v in scalars.items())
    return f"step {step}/{self.total} {values} | {rate:.2f} steps/s | ETA {eta}"

  def log(self, step: int, scalars: dict):
    logging.info(self.line(step, scalars))
