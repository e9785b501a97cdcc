"""Benchmark CLI: per method, median step time, compile time, compiled memory and peak RSS, as JSON.

  python -m fttpu.bench --methods=forward,full --batch=16 --seq=64 --steps=5
  python -m fttpu.bench --methods=forward,mezo,mezo:zo.noise=rademacher,zo:zo.base=lora
  python -m fttpu.bench --model=opt-1.3b --param_dtype=bfloat16 --methods=forward,mezo --batch=4

A method may carry config overrides after a colon, joined by '+': `zo:zo.base=prefix+zo.samples=4`.

Each method runs in its own process (so peak RSS is its own) on the real checkpoint with a
random batch, the way ../shared/bench/peer_torch.py measures the PyTorch peers:
  forward : evaluation logits (encoder on the batch and the label descriptions), no gradients
  <method>: one train step of that method (fttpu.step.train_step, jitted, state donated), with
            the method's defaults of configs/fewshot.py (lora: r=8 on query/value; sparse and
            spiel: density 0.01). spiel's prune/regrow, every 20 steps outside the step, is not timed.
--model=<preset> (fttpu/models/presets.py) times a paper's architecture on random weights instead,
with its family's default classifier (mlm for RoBERTa, causal for OPT and Llama): how cost grows with
the model, without downloads (experiments/scale_ladder.py runs the ladder of them).
Each method also reports its parameter bytes and largest parameter, the bounds the zeroth-order
memory goal is stated in (compiled temp <= forward temp + largest parameter).

Meshes: `--mesh=data=8 --mesh=fsdp=8` runs every method once per mesh, over that many fake CPU
devices when the machine has another number (parameters and state placed by the default sharding
rules, as fttpu.train places them), and reports each mesh's step time as a ratio to the first
mesh's: `--mesh=data=1 --mesh=data=8 --mesh=fsdp=8` gives the overhead of sharding on one CPU.

`--rounds=3` runs the whole list three times in turn (forward, mezo, forward, mezo, ...): a shared
machine's speed drifts between processes by more than the steps within one vary, and a ratio of two
figures from the same round cancels most of it.
"""

import json
import resource
import statistics
import subprocess
import sys
import time

from absl import flags

flags.DEFINE_list(
  "methods",
  ["forward", "full"],
  "forward, or any method name of fttpu.methods, optionally with config overrides: name:key=value+key=value.",
)
flags.DEFINE_integer("batch", 16, "Sentences per batch.")
flags.DEFINE_integer("seq", 64, "Tokens per sentence.")
flags.DEFINE_integer("steps", 5, "Timed steps after the warm-up steps.")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compiling (the first runs pay for allocation).")
flags.DEFINE_integer(
  "rounds",
  1,
  "Times to run the list of methods, in turn: each figure is the median round's, each ratio the median of the rounds'.",
  lower_bound=1,
)
flags.DEFINE_integer("classes", 2, "Label descriptions (classes).")
flags.DEFINE_string("checkpoint", "", "Hugging Face checkpoint directory; '' = the installed MiniLM.")
flags.DEFINE_string(
  "model",
  "",
  "A preset of fttpu/models/presets.py with random weights (its family's default classifier), "
  "instead of --checkpoint: cost as the model grows, without downloads.",
)
flags.DEFINE_enum(
  "param_dtype", "float32", ["float32", "bfloat16", "float16"], "Storage and compute dtype of the weights."
)
flags.DEFINE_multi_string("mesh", ["data=1"], "Mesh axis sizes (data=1,fsdp=8,tensor=1); repeat to compare meshes.")
flags.DEFINE_string("one", None, "Internal: run one method in this process.")
flags.DEFINE_string("one_mesh", "data=1", "Internal: the mesh of --one.")
FLAGS = flags.FLAGS


def _memory(compiled) -> dict:
  analysis = compiled.memory_analysis()
  if analysis is None:
    return {}
  return {
    f"compiled_{name}_mb": getattr(analysis, f"{name}_size_in_bytes") / 2**20
    for name in ("argument", "output", "temp", "alias", "generated_code")
  }


def method_config(spec: str, family: str = "bert"):
  """The fewshot config of 'name:key=value+key=value' (values parsed as the field's type) on `family`."""
  from configs import fewshot
  from fttpu.config import method_spec, set_fields

  name, settings = method_spec(spec)
  # zo.base also picks the default learning rate, as get_config's zo_base argument does.
  base = f",zo_base={settings['zo.base']}" if "zo.base" in settings else ""
  config = fewshot.get_config(f"family={family},method={name}{base}")
  return set_fields(config, settings)


def timed(step, steps: int, warmup: int = 2) -> list[float]:
  """Seconds of each of `steps` calls of step() after `warmup` untimed ones."""
  for _ in range(warmup):
    step()
  times = []
  for _ in range(steps):
    started = time.perf_counter()
    step()
    times.append(time.perf_counter() - started)
  return times


def bench_model(quantize: str = "none"):
  """(model, family, classifier style): the checkpoint (MiniLM by default, as the PyTorch peers use it, with
  the sentence-similarity classifier) or a preset with random weights and its family's classifier; its layers'
  projections stored as `quantize` says (a method's model.quantize)."""
  from fttpu import models
  from fttpu.models import presets

  dtype = FLAGS.param_dtype
  if not FLAGS.model:
    model = models.load("bert", FLAGS.checkpoint, dtype=dtype, param_dtype=dtype, quantize=quantize)
    return model, "bert", "similarity"
  hf_config = presets.PRESETS[FLAGS.model]
  family = hf_config["model_type"]
  style = models.FAMILIES.get(family).default_classifier
  config = models.make_config(
    family, hf_config, lm_head=style == "mlm", dtype=dtype, param_dtype=dtype, quantize=quantize
  )
  module = models.FAMILIES.get(family).module(config)
  return models.LoadedModel(module, models.random_params(module), None, config, ""), family, style


def run_one(method_name: str, mesh_spec: str) -> dict:
  import math
  import jax
  import numpy as np
  from fttpu import classifier, host_memory, models, sharding, trainer
  from fttpu.data import pipeline
  from fttpu.models import presets
  from fttpu.methods import masks

  sizes = sharding.parse_mesh(mesh_spec)
  jax.config.update("jax_num_cpu_devices", math.prod(sizes.values()))  # fake CPU devices, before any device use
  mesh = sharding.make_mesh(sizes, sharding.devices_for(math.prod(sizes.values())))

  family = presets.PRESETS[FLAGS.model]["model_type"] if FLAGS.model else "bert"
  quantize = "none" if method_name == "forward" else method_config(method_name, family).model.quantize
  model, family, style = bench_model(quantize)
  vocab = (1000, 20000) if style == "similarity" else (5, model.config.vocab_size)
  batch = pipeline.example_batch(style, FLAGS.batch, FLAGS.seq, FLAGS.classes, label_length=8, id_range=vocab)
  logits_fn = classifier.make_classifier(model.module, style, 20.0).logits
  rules, axes = sharding.default_rules(family), models.logical_axes(model.module)
  batch = sharding.put_batch(mesh, batch)
  rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  if method_name == "forward":
    tree = {"model": model.params}
    params = sharding.put(tree, sharding.named(mesh, sharding.param_specs(tree, axes, rules, mesh)))
    started = time.perf_counter()
    compiled = jax.jit(logits_fn).lower(params, batch).compile()
    compile_s = time.perf_counter() - started
    rss_compiled = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    host_memory.release_free_memory()
    step = lambda: compiled(params, batch).block_until_ready()
  else:
    config = method_config(method_name, family)
    config.model.classifier, config.model.logit_scale = style, 20.0
    config.model.param_dtype = config.model.compute_dtype = FLAGS.param_dtype
    run = trainer.setup(config, model, lambda step: batch, batch, total_steps=1000, rng=jax.random.key(0))
    method = run.method
    state, shardings = trainer.place(run, 0, mesh, rules, axes)
    started = time.perf_counter()
    compiled = (
      trainer.compile_train_step(run, shardings, sharding.batch_shardings(mesh, batch), mesh)
      .lower(state, batch)
      .compile()
    )
    compile_s = time.perf_counter() - started
    rss_compiled = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    host_memory.release_free_memory()
    holder = [state]

    def step():
      holder[0], metrics = compiled(holder[0], batch)
      jax.block_until_ready(metrics)

  times = timed(step, FLAGS.steps, FLAGS.warmup)
  rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  extra = {}
  if method_name != "forward":
    labels = method.labels(holder[0].params)
    extra = {
      "trainable": masks.count_trainable(holder[0].params, labels),
      "optimizer_state_entries": masks.optimizer_state_entries(holder[0].opt_state),
    }
  sizes = [x.nbytes for x in jax.tree_util.tree_leaves(model.params)]
  extra.update(model_params_mb=sum(sizes) / 2**20, largest_param_mb=max(sizes) / 2**20)
  return {
    "mesh": dict(mesh.shape),
    "step_s": float(np.median(times)),
    "compile_s": compile_s,
    "max_rss_mb": rss_after / 1024,
    **extra,
    "rss_growth_mb": (rss_after - rss_before) / 1024,
    "max_rss_after_compile_mb": rss_compiled / 1024,
    "max_rss_before_compile_mb": rss_before / 1024,
    **_memory(compiled),
  }


def check_model_flags() -> None:
  from fttpu.errors import ConfigError
  from fttpu.models import presets

  presets.check([FLAGS.model] if FLAGS.model else [], "--model")
  if FLAGS.model and FLAGS.checkpoint:
    raise ConfigError("--model (a preset with random weights) and --checkpoint exclude each other; give one")


def main(argv):
  del argv
  check_model_flags()
  if FLAGS.one:
    print(json.dumps(run_one(FLAGS.one, FLAGS.one_mesh)))
    return
  import os

  out = {
    "model": FLAGS.model or FLAGS.checkpoint or "all-MiniLM-L6-v2",
    "param_dtype": FLAGS.param_dtype,
    "batch": FLAGS.batch,
    "seq": FLAGS.seq,
    "steps": FLAGS.steps,
    "warmup": FLAGS.warmup,
    "rounds": FLAGS.rounds,
    "cpu_count": os.cpu_count(),
  }
  meshes = FLAGS.mesh
  runs = [(method, mesh) for _ in range(FLAGS.rounds) for method in FLAGS.methods for mesh in meshes]
  results = {}
  for method, mesh in runs:
    results.setdefault(method if len(meshes) == 1 else f"{method}@{mesh}", []).append(run_process(method, mesh))
  out.update({key: median_round(records) for key, records in results.items()})
  if len(meshes) > 1:
    out["step_ratios_to_first_mesh"] = {
      m: {mesh: round(out[f"{m}@{mesh}"]["step_s"] / out[f"{m}@{meshes[0]}"]["step_s"], 2) for mesh in meshes[1:]}
      for m in FLAGS.methods
    }
  elif "forward" in out:
    others = [m for m in FLAGS.methods if m != "forward"]
    out["ratios_to_forward"] = {m: median_ratio(results[m], results["forward"], "step_s", 2) for m in others}
    out["rss_ratios_to_forward"] = {m: median_ratio(results[m], results["forward"], "max_rss_mb", 3) for m in others}
  print(json.dumps(out, indent=1))


def median_round(records: list) -> dict:
  """The record of the round with the median step time, with every round's step time beside it."""
  middle = sorted(records, key=lambda r: r["step_s"])[(len(records) - 1) // 2]
  return middle if len(records) == 1 else {**middle, "round_step_s": [r["step_s"] for r in records]}


def median_ratio(records: list, baselines: list, key: str, digits: int) -> float:
  """The median over rounds of record / baseline of the same round: the machine's drift between
  rounds falls on both figures of a round alike."""
  return round(statistics.median_low(r[key] / b[key] for r, b in zip(records, baselines)), digits)


def run_process(method: str, mesh: str) -> dict:
  """One method on one mesh, measured in a process of its own."""
  command = [
    sys.executable,
    "-m",
    "fttpu.bench",
    f"--one={method}",
    f"--one_mesh={mesh}",
    f"--batch={FLAGS.batch}",
    f"--seq={FLAGS.seq}",
    f"--steps={FLAGS.steps}",
    f"--warmup={FLAGS.warmup}",
    f"--classes={FLAGS.classes}",
    f"--checkpoint={FLAGS.checkpoint}",
    f"--model={FLAGS.model}",
    f"--param_dtype={FLAGS.param_dtype}",
  ]
  result = subprocess.run(command, capture_output=True, text=True)
  if result.returncode:
    last = (result.stderr.strip().splitlines() or [""])[-1]
    raise SystemExit(
      f"error: benchmark of {method} on mesh {mesh}: {last[len('error: ') :]}"
      if last.startswith("error: ")
      else f"benchmark of {method} on mesh {mesh} failed:\n{result.stderr[-3000:]}"
    )
  return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
  from fttpu import cli

  cli.run(main)
