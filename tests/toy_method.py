"""A method written the way the README says a new one is added: this module plus one line in the table
of fttpu/methods/__init__.py (tests/test_architecture.py imports it in that line's place).

`norms`: only the LayerNorm/RMSNorm scales and biases train (a LN-tuning-like toy), with a section of its
own that says which norms."""

import ml_collections

from fttpu.errors import check_regex
from fttpu.methods import masks
from fttpu.methods.base import make_method, register, register_section, wrap


def section() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"pattern": r"norm/(scale|bias)$"})  # regex over parameter paths


register_section("norms", section, lambda config: check_regex(config.norms.pattern, "norms.pattern"))


@register("norms", learning_rate=1e-2, zo_learning_rate=1e-3)
def make(config, model):
  """Only the normalisation layers' parameters train."""
  pattern = config.norms.pattern
  return make_method("norms", wrap, lambda tree: masks.label_matching(tree, pattern, "norms.pattern"))
