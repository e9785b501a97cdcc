"""Zero-shot: evaluation only; every parameter is frozen and no step runs."""
import functools

from fttpu.methods import masks
from fttpu.methods.base import Method, autodiff, identity


def make(optimizer) -> Method:
  labels = functools.partial(masks.label_all, label=masks.FREEZE)
  return Method("zero_shot", identity, labels, masks.partition(labels, optimizer), autodiff, identity, trains=False)
