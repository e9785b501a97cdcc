"""Update rules by name. A method module registers its makers (`base.register`) and the config sections
it owns (`base.register_section`) when it is imported; MODULES is the table of those modules.

Adding a method: write fttpu/methods/<name>.py with a maker `(config, model) -> Method` decorated by
`@base.register("<name>", learning_rate=...)` (and its section, if it has settings), then add the module
to the import of MODULES. configs/fewshot.py, validation, the trainer, bench and plan find it there.
"""

from fttpu.errors import check
from fttpu.methods import base
from fttpu.methods import layers, lora, simple, sparse, zo  # the table: each module registers on import
from fttpu.methods.base import METHODS, SECTIONS, Context, Method, added_leaf_axes

MODULES = (simple, lora, layers, sparse, zo)
__all__ = ["METHODS", "SECTIONS", "Context", "Method", "MODULES", "added_leaf_axes", "get_method", "validate"]


def get_method(config, optimizer, model) -> Method:
  """The method `config.method` names, built from its config section, with its optimizer transform."""
  return base.with_optimizer(METHODS.get(config.method).make(config, model), optimizer)


def validate(config) -> None:
  """Every method section's checks (whichever method runs, so a sweep fails before it starts)."""
  check(config.method in METHODS, "method", config.method, str(METHODS.names()))
  for _, section in SECTIONS.items():
    section.validate(config)
