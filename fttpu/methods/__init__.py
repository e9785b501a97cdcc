"""Update rules by name. Each maker(config, optimizer, model) returns a `Method` (see base.py)."""
from fttpu.methods import layers, lora, simple, sparse, zo
from fttpu.methods.base import Context, Method
from fttpu.config import ConfigError

METHODS = {
    "zero_shot": simple.zero_shot,
    "full": simple.full,
    "head": simple.head,
    "bitfit": simple.bitfit,
    "prefix": simple.prefix,
    "lora": lora.make,
    "layers": layers.make,
    "sparse": sparse.make,
    "spiel": sparse.make_spiel,
    # Zeroth-order: MeZO over every parameter, or over the trainable set of zo.base.
    "mezo": lambda config, optimizer, model: zo.make(config, optimizer, model, simple.full),
    "zo": lambda config, optimizer, model: zo.make(config, optimizer, model, METHODS[config.zo.base]),
}


def get_method(config, optimizer, model) -> Method:
  """The method `config.method` names, built from its config section."""
  if config.method not in METHODS:
    raise ConfigError(f"unknown method {config.method!r}; valid: {sorted(METHODS)}")
  return METHODS[config.method](config, optimizer, model)
