"""Config parsing: the `key=value,...` argument of get_config, method specs with overrides, and
--config.a.b flags checked against the fields that exist. (Validation belongs to each section's owner;
fttpu.trainer.validate runs them all.)
"""

import ast

import ml_collections

from fttpu.errors import ConfigError


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'task=sst2,k=16' -> ConfigDict over `defaults`; values take the default's type."""
  parsed = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep:
      raise ConfigError(f"config argument {item!r} is not key=value; valid keys: {sorted(defaults)}")
    if key not in defaults:
      raise ConfigError(f"unknown config argument {key!r}; valid keys: {sorted(defaults)}")
    kind = type(defaults[key])
    try:
      parsed[key] = kind(ast.literal_eval(value)) if kind in (int, float, bool) else kind(value)
    except (ValueError, SyntaxError):
      raise ConfigError(f"config argument {key}={value!r} is not a valid {kind.__name__}") from None
  return ml_collections.ConfigDict(parsed)


def method_spec(spec: str) -> tuple[str, dict]:
  """'zo:zo.base=lora+zo.samples=4' -> ('zo', {'zo.base': 'lora', 'zo.samples': '4'}): a method with
  config overrides, as the bench and plan CLIs take them."""
  name, _, overrides = spec.partition(":")
  items = [item.split("=", 1) for item in filter(None, overrides.split("+"))]
  if any(len(item) != 2 for item in items):
    raise ConfigError(f"method {spec!r}: overrides are key=value joined by '+', e.g. zo:zo.base=lora+zo.samples=4")
  return name, dict(items)


def set_fields(config: ml_collections.ConfigDict, settings: dict) -> ml_collections.ConfigDict:
  """config with 'a.b' -> value strings set, each parsed as the existing field's type."""
  for key, value in settings.items():
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    if leaf not in node:
      raise ConfigError(f"unknown config key {key!r}; valid keys there: {sorted(node.keys())}")
    node[leaf] = parse_value(key, node[leaf], value)
  return config


def parse_value(key: str, old, raw: str):
  """The string `raw` as a value for the field `key` whose current value is `old` (its type decides)."""
  if isinstance(old, str):
    return raw
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = raw
    if isinstance(old, float) and not isinstance(old, bool):
      try:
        value = float(raw)  # nan, inf
      except ValueError:
        pass
  if isinstance(old, bool) and isinstance(raw, str) and raw.lower() in ("true", "false"):
    value = raw.lower() == "true"
  kind = type(old)
  fits = (
    isinstance(value, bool)
    if kind is bool
    else isinstance(value, (int, float))
    and not isinstance(value, bool)
    and (kind is float or float(value).is_integer())
    if kind in (int, float)
    else isinstance(value, (list, tuple))
  )
  if not fits:
    example = ", e.g. true" if kind is bool else f", e.g. {old!r}"
    raise ConfigError(f"config.{key}={raw!r} is not a valid {kind.__name__}{example}")
  return kind(value)


def check_overrides(config: ml_collections.ConfigDict | None, argv: list[str]) -> None:
  """Every --config.a.b=... flag names an existing field; otherwise list the valid ones there."""
  if config is None:
    return
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config.") :].split("=", 1)[0]
    node, walked = config, "config"
    for key in path.split("."):
      if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise ConfigError(
          f"unknown config key {walked}.{key} (from {arg.split('=', 1)[0]}); valid keys of {walked}: {valid}"
        )
      node, walked = node[key], f"{walked}.{key}"
    if "=" in arg and isinstance(node, (bool, int, float)):  # absl would fail with a bare int() traceback line
      parse_value(path, node, arg.split("=", 1)[1])
