"""Plan before you launch: per-device memory of each method's train step on a mesh, without weights.

  python -m fttpu.plan --config=configs/fewshot.py:family=roberta --model=roberta-large \\
      --mesh=data=1,fsdp=8,tensor=1 --methods=mezo,full,lora --hbm_gb=32

The step is compiled ahead of time on abstract shapes: the model is built from config.json alone
(--model: a checkpoint directory, whose weights are never read, or a preset of
fttpu/models/presets.py), each method's tree is sized with jax.eval_shape, and the compiled
program's memory_analysis() gives per-device bytes of arguments (parameters, optimizer state,
batch), temporaries and outputs; outputs that reuse donated arguments (alias) are not counted
twice. Without devices of the mesh's size (a laptop, CI) it plans on that many fake CPU devices:
XLA's CPU buffer assignment, a close estimate of a TPU/GPU program's, not its exact figure.
Selectors that read weights (sparse magnitude/gradient/lottery) are sized as `random`, and PiSSA as
plain LoRA: the same shapes. Each method takes its default optimizer (configs/fewshot.py: ZO-SGD for
mezo/zo, AdamW otherwise) unless its spec overrides it: `full:optimizer.name=sgd`. A spec may store the
frozen base weights quantised: `lora:model.quantize=nf4` (the `quant` column).

The example batch is shaped as the task's training batches (fttpu.data.examples): classification's, the
row tasks' multiple choice (COPA, ReCoRD: (batch, candidates, length) with choice_mask and gold_mask;
--choices for ReCoRD) and generation's (SQuAD, DROP: teacher forcing (batch, length) and the prompts
(batch, length - data.max_new_tokens) that zo.objective=f1 decodes inside the step; its host scorer is a
callback that compiles but never runs here, so a stand-in tokenizer gives the stop tokens).
"""

import json
import math
import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file(
  "config", None, "Config file, optionally with :key=value,... arguments.", lock_config=False
)
flags.DEFINE_string(
  "model",
  None,
  "A preset name (see fttpu/models/presets.py) or a checkpoint directory "
  "(only config.json is read); default: config.model.checkpoint.",
)
flags.DEFINE_string("mesh", None, "Mesh axis sizes, e.g. data=1,fsdp=8,tensor=1; default: config.mesh.")
flags.DEFINE_list(
  "methods", None, "Methods to plan, optionally with overrides (zo:zo.base=lora+zo.samples=4); default: config.method."
)
flags.DEFINE_float(
  "hbm_gb",
  0.0,
  "Memory per device in GiB (e.g. 32 for TPU v4, 80 for an A100/H100): marks each method as fitting or not.",
)
flags.DEFINE_integer(
  "choices",
  0,
  "Candidates per row of a multiple-choice row task's batch: COPA has 2 (the default); ReCoRD's vary per row "
  "(the passage's entities, padded to the sample's most), so it needs --choices=N, the most a row has. "
  "0 (default): the task's own count; other tasks take none.",
)
flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS
MB = 2**20


def hf_config(model: str) -> dict:
  """config.json of a preset or a checkpoint directory."""
  from fttpu.errors import ConfigError
  from fttpu import errors
  from fttpu.models import hf, presets

  if model in presets.PRESETS:
    return presets.PRESETS[model]
  try:
    return hf.read_config(hf.find_checkpoint_dir(model))
  except (errors.CheckpointError, OSError) as e:
    raise ConfigError(
      f"--model={model!r} is neither a preset {sorted(presets.PRESETS)} nor a checkpoint directory "
      f"with config.json ({e})"
    ) from None


def stand_in_tokenizer():
  """A tokenizer of the stop tokens alone (generation.stop_ids: the newline, </s>), for zo.objective=f1's step:
  its decode compares tokens with their ids, and the scorer that turns tokens into text never runs under plan."""
  import tokenizers
  from tokenizers.models import WordLevel

  return tokenizers.Tokenizer(WordLevel({"<unk>": 0, "\n": 1, "</s>": 2}, unk_token="<unk>"))


def plan_method(config, spec: str, model, mesh, batch: dict) -> dict:
  """Per-device compiled memory of one train step of method `spec` (abstract shapes only)."""
  import jax
  from fttpu import config as config_lib, methods, sharding, trainer
  from fttpu.methods import masks
  from fttpu.state import TrainState
  from configs import fewshot

  name, settings = config_lib.method_spec(spec)
  config = config.copy_and_resolve_references()
  if name != config.method:  # each method with its own default optimizer (mezo: ZO-SGD, no state; full: AdamW)
    zo_base = settings.get("zo.base", config.zo.base)
    config.optimizer = fewshot.get_config(f"method={name},zo_base={zo_base}").optimizer
  config = config_lib.set_fields(config, {"method": name, **settings})
  if config.sparse.selector in ("magnitude", "gradient", "lottery"):
    config.sparse.selector = "random"  # the same shapes; the choice itself needs the weights
  config.lora.pissa = False
  methods.validate(config)
  model = stored_as(model, config.model.quantize)

  def sized(prepare, params):  # traced weights; what derives from the seed alone (LoRA's A, masks) is computed
    def traced(params):
      with jax.ensure_compile_time_eval():
        return prepare(params)

    return jax.eval_shape(traced, params)

  golds = tuple(("",) for _ in batch["row_index"]) if "row_index" in batch else None  # zo.objective=f1 scores rows
  run = trainer.setup(config, model, lambda step: batch, batch, prepare=sized, train_golds=golds)
  method, tree = run.method, run.tree
  rules, axes = dict(config.sharding_rules), model_axes(model.module)
  param_sharding = sharding.named(mesh, sharding.param_specs(tree, axes, rules, mesh, methods.added_leaf_axes))
  state = jax.eval_shape(lambda params: TrainState.create(params, method.tx, 0), tree)
  state_sharding = sharding.state_shardings(state, param_sharding, mesh)
  batch_sharding = sharding.batch_shardings(mesh, batch)
  abstract = lambda tree, shardings: jax.tree_util.tree_map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )
  step = trainer.compile_train_step(run, state_sharding, batch_sharding, mesh)
  compiled = step.lower(abstract(state, state_sharding), abstract(batch, batch_sharding)).compile()
  memory = compiled.memory_analysis()
  sizes = {key: getattr(memory, f"{key}_size_in_bytes") / MB for key in ("argument", "temp", "output", "alias")}
  labels = method.labels(tree)
  return {
    "remat": config.train.remat,
    "micro_batches": run.micro_batches,
    "quantize": config.model.quantize,
    "trainable": masks.count_trainable(tree, labels),
    "optimizer_state_mb": sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state.opt_state)) / MB,
    **{f"{key}_mb": value for key, value in sizes.items()},
    "peak_mb": sizes["argument"] + sizes["temp"] + sizes["output"] - sizes["alias"],
  }


def stored_as(model, mode: str):
  """The abstract model (parameter shapes only) with its projection kernels stored as `mode` (model.quantize)."""
  import dataclasses
  from fttpu import models

  module = models.with_quantize(model.module, mode)
  if module is model.module:
    return model
  return dataclasses.replace(model, module=module, config=module.config, params=models.param_shapes(module))


def model_axes(module):
  from fttpu import models

  return models.logical_axes(module)


def plan(config, model_name: str, mesh_sizes: dict, method_specs: list, choices: int = 0) -> dict:
  """{'model': ..., 'mesh': ..., 'shapes': the batch's, 'methods': {spec: per-device MB}} for every method spec;
  `choices`: candidates per row of a multiple-choice row task (fttpu.data.examples)."""
  import jax
  from fttpu import models, sharding
  from fttpu.data import examples

  mesh = sharding.make_mesh(mesh_sizes, sharding.devices_for(math.prod(mesh_sizes.values())))
  m = config.model
  model_config = models.make_config(
    m.family, hf_config(model_name), lm_head=m.classifier == "mlm", dtype=m.compute_dtype, param_dtype=m.param_dtype
  )
  models.check_length(model_config, config.data.max_length)
  module = models.FAMILIES.get(m.family).module(model_config)
  shapes = models.param_shapes(module)
  d = config.data
  task, batch = examples.task_example(d, m.classifier, config.train.batch_size, choices)
  sharding.check_batch_sizes(mesh, config.train.batch_size)
  tokenizer = stand_in_tokenizer() if "row_index" in batch else None
  model = models.LoadedModel(module, shapes, tokenizer, model_config, "")
  parameters = sum(x.size for x in jax.tree_util.tree_leaves(shapes))
  return {
    "model": model_name,
    "family": m.family,
    "parameters": parameters,
    "param_dtype": m.param_dtype,
    "compute_dtype": m.compute_dtype,
    "classifier": m.classifier,
    "task": task,
    "batch": [config.train.batch_size, d.max_length],
    "shapes": {key: list(value.shape) for key, value in batch.items()},
    "mesh": dict(mesh.shape),
    "platform": mesh.devices.flat[0].platform,
    "methods": {spec: plan_method(config, spec, model, mesh, batch) for spec in method_specs},
  }


def count(n: int) -> str:
  return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


def batch_text(shapes: dict) -> str:
  """'batch 16 x 2 candidates x 256 tokens' (and a generation batch's prompts) of plan()'s batch shapes."""
  rows, *candidates, length = shapes["input_ids"]
  text = f"batch {rows} x " + "".join(f"{c} candidates x " for c in candidates) + f"{length} tokens"
  if "prompt_input_ids" in shapes:
    text += f", prompts {shapes['prompt_input_ids'][1]} tokens"
  return text


def table(result: dict, hbm_gb: float) -> str:
  gb = lambda mb: f"{mb / 1024:.2f}"
  mesh = " ".join(f"{k}={v}" for k, v in result["mesh"].items())
  width = max(28, 2 + max(map(len, result["methods"])))
  remat_width = max(8, 2 + max(len(r["remat"]) for r in result["methods"].values()))
  lines = [
    f"{result['model']} ({result['family']}, {result['parameters'] / 1e6:.1f}M parameters in "
    f"{result['param_dtype']}, compute {result['compute_dtype']}; {result['classifier']} classifier, task "
    f"{result['task']}, {batch_text(result['shapes'])})",
    f"mesh {mesh} on {math.prod(result['mesh'].values())} {result['platform']} devices; GiB per device:",
    f"{'method':<{width}}{'remat':>{remat_width}}{'micro':>6}{'quant':>6}{'trainable':>12}{'arguments':>11}{'temp':>9}{'output':>9}"
    f"{'alias':>9}{'peak':>9}" + ("  fits" if hbm_gb else ""),
  ]
  for spec, r in result["methods"].items():
    fits = ("  yes" if r["peak_mb"] / 1024 <= hbm_gb else "  NO") if hbm_gb else ""
    lines.append(
      f"{spec:<{width}}{r['remat']:>{remat_width}}{r['micro_batches']:>6}{r.get('quantize', 'none'):>6}"
      f"{count(r['trainable']):>12}{gb(r['argument_mb']):>11}"
      f"{gb(r['temp_mb']):>9}"
      f"{gb(r['output_mb']):>9}{gb(r['alias_mb']):>9}{gb(r['peak_mb']):>9}{fits}"
    )
  lines.append(
    "peak = arguments + temp + output - alias (outputs written into donated arguments); remat: train.remat, "
    "micro: train.grad_accum_steps, quant: model.quantize (the frozen projection kernels' storage)"
  )
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax
  from fttpu import sharding
  from fttpu.errors import ConfigError

  config = FLAGS.config
  try:
    mesh_sizes = sharding.parse_mesh(FLAGS.mesh) if FLAGS.mesh else {k: max(v, 1) for k, v in config.mesh.items()}
    jax.config.update("jax_num_cpu_devices", math.prod(mesh_sizes.values()))  # fake devices, if planning on CPU
    model, methods = FLAGS.model or config.model.checkpoint, FLAGS.methods or [config.method]
    result = plan(config, model, mesh_sizes, methods, FLAGS.choices)
  except (ConfigError, ValueError) as e:
    sys.exit(f"error: {e}")
  print(json.dumps(result) if FLAGS.json else table(result, FLAGS.hbm_gb))


if __name__ == "__main__":
  from fttpu import cli

  cli.run(main)
