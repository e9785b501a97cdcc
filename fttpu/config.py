"""Config helpers: the `key=value,...` argument of get_config, and start-up validation.

Everything here runs before any data is read or anything is compiled, so a typo costs
seconds, and every message names the key and what is valid.
"""
import ast
import re

import ml_collections

from fttpu import files

SCHEDULES = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw", "sgd", "momentum", "sign", "zo_sgd_sign")
NONFINITE = ("stop", "skip")  # train.nonfinite: what a NaN/Inf loss or gradient does
DIVERGENCE = ("stop", "continue")  # train.divergence: what a diverged run does (fttpu.train.DivergenceGuard)


class ConfigError(ValueError):
  """A config value that fttpu cannot run with."""


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


def _check(condition: bool, key: str, value, valid: str):
  if not condition:
    raise ConfigError(f"config.{key}={value!r} is invalid; valid: {valid}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Fails with the key, the value and the valid range for anything fttpu cannot run."""
  from fttpu import classifier, methods, models
  from fttpu.data import tasks
  _check(config.method in methods.METHODS, "method", config.method, str(sorted(methods.METHODS)))
  m = config.model
  _check(m.family in models.FAMILIES, "model.family", m.family, str(sorted(models.FAMILIES)))
  _check(m.classifier in classifier.STYLES, "model.classifier", m.classifier, str(list(classifier.STYLES)))
  masked = models.FAMILIES[m.family].masked_lm
  _check(m.classifier != "mlm" or masked, "model.classifier", m.classifier,
         f"'causal' or 'similarity' for the decoder family {m.family!r} (mlm needs bert or roberta)")
  _check(m.classifier != "causal" or not masked, "model.classifier", m.classifier,
         f"'mlm' or 'similarity' for the encoder family {m.family!r} (causal needs opt or llama)")
  for key in ("param_dtype", "compute_dtype"):
    _check(m[key] in models.DTYPES, f"model.{key}", m[key], str(sorted(models.DTYPES)))
  _check(config.model.checkpoint or m.family == "bert", "model.checkpoint", config.model.checkpoint,
         f"a Hugging Face {m.family} checkpoint directory (the installed default is a BERT checkpoint)")
  if config.model.checkpoint:
    _check(files.isfile(files.join(config.model.checkpoint, "config.json")), "model.checkpoint",
           config.model.checkpoint, "a Hugging Face checkpoint directory with config.json (or '' for the default)")
  _check(config.model.logit_scale > 0, "model.logit_scale", config.model.logit_scale, "a number > 0")
  d = config.data
  _check(d.task in tasks.TASKS or tasks.task_dir(d.task, d.dir) is not None, "data.task", d.task,
         f"{sorted(tasks.TASKS)}, a folder under data.dir={d.dir!r}, or an absolute path, with train.tsv and test.tsv")
  if d.task in tasks.TASKS or tasks.task_dir(d.task, d.dir) is not None:
    tasks.get_task(d.task, d.dir, d.template, tuple(d.label_descriptions), tuple(d.label_names),  # prompts fit
                   mlm_template=d.mlm_template, causal_template=d.causal_template, label_words=tuple(d.label_words),
                   style=m.classifier)
  _check(d.k >= 1, "data.k", d.k, "an integer >= 1 (examples per class)")
  _check(d.max_length >= 8, "data.max_length", d.max_length, "8..the checkpoint's positions (512 for BERT, 2048 for OPT)")
  for key in ("num_train", "num_dev", "num_test"):
    _check(d[key] >= 0, f"data.{key}", d[key], "an integer >= 0 (0: k per class for train and dev, the whole test split)")
  _check((d.num_train > 0) == (d.num_dev > 0), "data.num_dev", d.num_dev,
         f"> 0 exactly when data.num_train > 0 (num_train={d.num_train})")
  t = config.train
  _check(t.steps >= 0, "train.steps", t.steps, "an integer >= 0")
  _check(t.batch_size >= 1, "train.batch_size", t.batch_size, "an integer >= 1")
  _check(t.eval_batch_size >= 1, "train.eval_batch_size", t.eval_batch_size, "an integer >= 1")
  for key in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
    _check(t[key] >= 1, f"train.{key}", t[key], "an integer >= 1")
  from fttpu.checkpoint import BEST_METRICS
  _check(t.best_metric in ("", *BEST_METRICS), "train.best_metric", t.best_metric,
         f"one of {sorted(BEST_METRICS)} or '' (none)")
  _check(t.nonfinite in NONFINITE, "train.nonfinite", t.nonfinite, str(list(NONFINITE)))
  _check(t.divergence in DIVERGENCE, "train.divergence", t.divergence, str(list(DIVERGENCE)))
  _check(t.divergence_ratio == 0 or t.divergence_ratio > 1, "train.divergence_ratio", t.divergence_ratio,
         "a number > 1 (a multiple of the first step's loss), or 0 (off)")
  _check(t.stuck_steps >= 0, "train.stuck_steps", t.stuck_steps, "an integer >= 0 (0: off)")
  o = config.optimizer
  _check(o.name in OPTIMIZERS, "optimizer.name", o.name, str(list(OPTIMIZERS)))
  _check(o.name != methods.zo.SIGN_OF_PROJECTION or config.method in methods.zo.METHOD_NAMES, "optimizer.name",
         o.name, f"{[n for n in OPTIMIZERS if n != methods.zo.SIGN_OF_PROJECTION]} for method={config.method!r} "
         "(zo_sgd_sign steps along the sign of a zeroth-order projected gradient: method mezo or zo)")
  _check(o.schedule in SCHEDULES, "optimizer.schedule", o.schedule, str(list(SCHEDULES)))
  _check(o.learning_rate > 0, "optimizer.learning_rate", o.learning_rate, "a number > 0")
  _check(o.weight_decay >= 0, "optimizer.weight_decay", o.weight_decay, "a number >= 0")
  _check(o.warmup_steps >= 0, "optimizer.warmup_steps", o.warmup_steps, "an integer >= 0")
  validate_methods(config)
  _check(all(v == -1 or v >= 1 for v in config.mesh.values()), "mesh", dict(config.mesh),
         "axis sizes >= 1, or -1 for the remaining devices")
  validate_sharding(config)


def validate_sharding(config: ml_collections.ConfigDict) -> None:
  from fttpu import sharding
  _check(set(config.mesh) <= set(sharding.AXES), "mesh", dict(config.mesh), f"axes among {list(sharding.AXES)}")
  _check(list(config.mesh.values()).count(-1) <= 1, "mesh", dict(config.mesh), "at most one axis of size -1")
  _check(set(config.sharding_rules) <= set(sharding.LOGICAL_NAMES), "sharding_rules", dict(config.sharding_rules),
         f"keys among the models' logical axes {list(sharding.LOGICAL_NAMES)}")
  for name, targets in config.sharding_rules.items():
    axes = [a for a in (targets or "").split(",") if a]
    _check(all(a in config.mesh for a in axes) and len(set(axes)) == len(axes), f"sharding_rules.{name}", targets,
           f"'' (replicated) or mesh axes of config.mesh {list(config.mesh)}, comma-separated")


def validate_methods(config: ml_collections.ConfigDict) -> None:
  """The update rules' sections (checked whichever method runs, so a sweep fails before it starts)."""
  from fttpu.methods import sparse, zo
  from fttpu.models import perturbation
  _check(config.head.solver in ("adam", "lbfgs"), "head.solver", config.head.solver, "['adam', 'lbfgs']")
  _check(config.head.l2 > 0, "head.l2", config.head.l2, "a number > 0")
  _check(config.layers.sample >= 0, "layers.sample", config.layers.sample, "an integer >= 0 (0 = no LISA sampling)")
  _check(config.layers.every >= 1, "layers.every", config.layers.every, "an integer >= 1")
  _check_regex(config.layers.select, "layers.select")
  for section in ("sparse", "spiel"):
    c = config[section]
    _check(0 < c.density <= 1, f"{section}.density", c.density, "a fraction in (0, 1]")
    _check_regex(c.targets, f"{section}.targets")
  s = config.sparse
  _check(s.selector in sparse.SELECTORS, "sparse.selector", s.selector, str(list(sparse.SELECTORS)))
  _check(s.structure in sparse.STRUCTURES, "sparse.structure", s.structure, str(list(sparse.STRUCTURES)))
  _check(s.structure == "none" or s.selector != "half", "sparse.structure", s.structure,
         "'none' with selector 'half' (half picks whole matrices)")
  _check(s.calibration_batches >= 1, "sparse.calibration_batches", s.calibration_batches, "an integer >= 1")
  _check(s.lottery_steps >= 1, "sparse.lottery_steps", s.lottery_steps, "an integer >= 1")
  p = config.spiel
  _check(p.every >= 1, "spiel.every", p.every, "an integer >= 1")
  _check(p.accumulate >= 1, "spiel.accumulate", p.accumulate, "an integer >= 1")
  _check(0 <= p.replace_fraction <= 1, "spiel.replace_fraction", p.replace_fraction, "a fraction in [0, 1]")
  l = config.lora
  _check(l.rank >= 1, "lora.rank", l.rank, "an integer >= 1")
  _check(l.alpha > 0, "lora.alpha", l.alpha, "a number > 0")
  _check(0 <= l.dropout < 1, "lora.dropout", l.dropout, "a probability in [0, 1)")
  _check_regex(l.targets, "lora.targets")
  _check(config.prefix.length >= 1, "prefix.length", config.prefix.length, "an integer >= 1")
  z = config.zo
  _check(z.base in zo.BASES, "zo.base", z.base, str(list(zo.BASES)))
  _check(z.eps > 0, "zo.eps", z.eps, "a number > 0")
  _check(z.samples >= 1, "zo.samples", z.samples, "an integer >= 1 (n-SPSA)")
  _check(z.noise in perturbation.KINDS, "zo.noise", z.noise, str(list(perturbation.KINDS)))
  _check(z.objective in zo.OBJECTIVES, "zo.objective", z.objective, str(list(zo.OBJECTIVES)))


def _check_regex(pattern: str, key: str) -> None:
  try:
    re.compile(pattern)
  except re.error as e:
    raise ConfigError(f"config.{key}={pattern!r} is not a valid regular expression: {e}") from None


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
  fits = (isinstance(value, bool) if kind is bool else isinstance(value, (int, float)) and not isinstance(value, bool)
          and (kind is float or float(value).is_integer()) if kind in (int, float) else isinstance(value, (list, tuple)))
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
    path = arg[len("--config."):].split("=", 1)[0]
    node, walked = config, "config"
    for key in path.split("."):
      if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise ConfigError(f"unknown config key {walked}.{key} (from {arg.split('=', 1)[0]}); "
                          f"valid keys of {walked}: {valid}")
      node, walked = node[key], f"{walked}.{key}"
    if "=" in arg and isinstance(node, (bool, int, float)):  # absl would fail with a bare int() traceback line
      parse_value(path, node, arg.split("=", 1)[1])
