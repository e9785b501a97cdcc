"""What stops a run before its last step: a signal (SIGTERM, Ctrl-C), a non-finite step, divergence."""

import math
import os
import signal
import sys
import threading

import jax
import numpy as np

SIGNAL_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}


class Preemption:
  """SIGTERM (what Cloud TPU and SLURM send before preempting) and the first Ctrl-C ask the loop to
  checkpoint and return; a second Ctrl-C exits at once. One process: Python
  signal handlers. Several: JAX's preemption service notices SIGTERM (a Ctrl-C is turned into one)
  and orbax's sync point (`reached_preemption`) makes every process stop at the same step."""

  def __enter__(self):
    self.signalled, self.previous = None, {}
    if threading.current_thread() is threading.main_thread():
      if jax.process_count() == 1:
        self.previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
      self.previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, handler in self.previous.items():
      signal.signal(signum, handler)

  def _handle(self, signum, frame):
    del frame
    self.signalled = SIGNAL_NAMES[signum]
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, _stop_at_once)
      if jax.process_count() > 1:
        signal.raise_signal(signal.SIGTERM)  # JAX's preemption service tells the other processes

  def requested(self, manager, step: int) -> bool:
    return manager.reached_preemption(step) if jax.process_count() > 1 else self.signalled is not None


INTERRUPTED = 130  # the exit status of a run stopped by Ctrl-C (128 + SIGINT), checkpointed or not


def _stop_at_once(signum, frame):
  """A second Ctrl-C: exit now, from the handler, so no library prints a traceback on the way out;
  a save in progress is left unfinished, which orbax ignores (its commit never happened)."""
  del signum, frame
  sys.stdout.flush()
  print(
    "error: interrupted twice (Ctrl-C): stopped at once; the checkpoints saved so far are kept, run again "
    "with the same --workdir to resume",
    file=sys.stderr,
    flush=True,
  )
  os._exit(INTERRUPTED)


def describe_nonfinite(step_metrics: dict) -> str:
  """'training loss is nan, gradient norm is nan': the loss and every metric of the step that is not finite."""
  parts = [f"training loss is {float(step_metrics['train/loss'])}"]
  for name, value in step_metrics.items():
    value = np.asarray(value)
    if name != "train/loss" and np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
      readable = name.removeprefix("train/").replace("grad", "gradient").replace("_", " ")
      parts.append(f"{readable} is {value.tolist()}")
  return ", ".join(parts)


class Diverged(FloatingPointError):
  """A run whose loss stays finite but has left any sane range, or whose estimate is stuck at 0."""


def divergence(record: dict, loss: float, projected, ratio: float, stuck_steps: int) -> str | None:
  """What says the step of `loss` diverged, or None. `record` (saved in each checkpoint, so a resumed run
  judges as the uninterrupted one) keeps the first step's loss and the current run of steps whose
  projected gradient (zeroth-order runs; None otherwise) was exactly 0."""
  if math.isfinite(loss):
    record.setdefault("first_loss", loss)
  bound = ratio * max(record.get("first_loss", math.inf), 1.0)
  if ratio and math.isfinite(loss) and loss > bound:
    return (
      f"training loss {loss:.4g} is above train.divergence_ratio={ratio:g} x max(first step's loss "
      f"{record['first_loss']:.4g}, 1) = {bound:.4g}"
    )
  if projected is not None:
    record["zero_projections"] = record.get("zero_projections", 0) + 1 if not np.any(projected) else 0
    if stuck_steps and record["zero_projections"] >= stuck_steps:
      return (
        f"the projected gradient has been exactly 0 for {record['zero_projections']} steps in a row "
        f"(train.stuck_steps={stuck_steps}): the two losses are equal, so nothing trains (zo.eps below the "
        "compute dtype's resolution, or a saturated loss)"
      )
  return None
