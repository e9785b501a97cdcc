"""Full fine-tuning: every parameter trains with the configured optimizer."""
import functools

from fttpu.methods import masks
from fttpu.methods.base import Method, autodiff, identity


def make(optimizer) -> Method:
  labels = functools.partial(masks.label_all, label=masks.TRAIN)
  return Method("full", identity, labels, masks.partition(labels, optimizer), autodiff, identity, trains=True)
