"""Update rules by name. A method module registers its makers (`base.register`) and the config sections
it owns (`base.register_section`) when it is imported; MODULES is the table of those modules.

Adding a method: write fttpu/methods/<name>.py with a maker `(config, model) -> Method` decorated by
`@base.register("<name>", learning_rate=...)` (and its section, if it has settings), then add the module
to the import of MODULES. configs/fewshot.py, validation, the trainer, bench and plan find it there.
"""

from fttpu.data import generation
from fttpu.errors import check
from fttpu.methods import base
from fttpu.methods import layers, lora, simple, sparse, zo  # the table: each module registers on import
from fttpu.methods.base import METHODS, SECTIONS, Context, Method, added_leaf_axes
from fttpu.models import quantize

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
  check_quantized_base(config)
  check_generation_task(config)


def trained_set(config) -> tuple[str, str]:
  """(config key, method) of the method whose trainable set runs: zo.base for method=zo."""
  return ("zo.base", config.zo.base) if config.method == "zo" else ("method", config.method)


def check_quantized_base(config) -> None:
  """model.quantize stores the pretrained weights quantised and frozen: only methods registered as
  leaving them as they are may run on them (models.validate checks the value itself)."""
  mode = config.model.get("quantize", "none")
  if mode == "none" or mode not in quantize.MODES:
    return
  key, name = trained_set(config)
  valid = sorted(base.frozen_base_methods())
  zo_valid = [m for m in valid if m in base.zo_bases()]
  check(
    name in valid,
    key,
    name,
    f"method among {valid}, or zo with zo.base among {zo_valid}: model.quantize={mode!r} stores the pretrained "
    f"weights quantised and frozen, and {name} updates them",
  )


# Methods that read a classifier's features or classes, which a generation task (SQuAD, DROP) has not.
CLASSIFICATION_ONLY = ("head",)


def check_generation_task(config) -> None:
  """A generation task trains on the LM loss of its answers (or zo.objective=f1): every method that trains
  model weights or adapters on it runs; a linear probe (head) has no classes to score and is refused."""
  if not generation.is_generation_task(config.data.task):
    return
  key, name = trained_set(config)
  valid = [m for m in METHODS.names() if m not in CLASSIFICATION_ONLY]
  check(
    name not in CLASSIFICATION_ONLY,
    key,
    name,
    f"a method among {valid} (zo.base among {[m for m in base.zo_bases() if m not in CLASSIFICATION_ONLY]}): "
    f"{name} is a linear probe on a classifier's features, and the generation task {config.data.task!r} "
    "decodes answers instead of choosing a class",
  )
