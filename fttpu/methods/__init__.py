"""Update rules by name. Each module's make(optimizer) returns a `Method` (see base.py)."""
import optax

from fttpu.methods import full, zero_shot
from fttpu.methods.base import Method

METHODS = {"full": full.make, "zero_shot": zero_shot.make}


def get_method(name: str, optimizer: optax.GradientTransformation) -> Method:
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; valid: {sorted(METHODS)}")
  return METHODS[name](optimizer)
