"""The scale ladder: how each method's cost grows with the model, on this machine (the MeZO paper's Figure 2).

  python -m experiments.scale_ladder --workdir=workdirs/ladder [--models=opt-125m,opt-1.3b] [--param_dtype=float16]

For each preset (random weights, fttpu/models/presets.py) and method, `fttpu.bench --model=<preset>`
times the train step at a small batch (its own process per method, medians after warm-up; the
smaller presets' ratios the median of three rounds of the methods in turn, fttpu.bench --rounds) and
records the process's peak RSS. Before a model is benchmarked, `fttpu.plan` sizes each method's
compiled step (arguments + temporaries + outputs; the forward as the zero_shot method's evaluation);
a method whose plan exceeds this machine's memory (--memory_gb, default: MemTotal less --reserve_gb)
is skipped and the table says so, as are the larger models of a method once one did not fit (and a
model whose forward does not fit, since the forward is every ratio's unit).

The weights are stored in float16 by default, as the MeZO paper runs OPT: on XLA's CPU backend a
scanned stack of bfloat16 weights is converted to float32 whole, outside the layer loop
(experiments/xla_cpu_bf16_scan.py shows it), so bfloat16 costs three times its bytes here.

Writes WORKDIR/results.md (step time as a multiple of the forward, peak RSS as a multiple of the
parameter bytes, the largest model each method trained) and WORKDIR/results.png; each model's
bench and plan JSON stay in WORKDIR/<preset>.json.
"""

import json
import os
import subprocess
import sys

from absl import flags, logging

from fttpu import cli
from fttpu.errors import ConfigError

LADDER = ("opt-125m", "roberta-base", "roberta-large", "opt-1.3b", "opt-2.7b", "opt-6.7b", "llama-2-7b")
METHODS = ("forward", "mezo", "zo:zo.base=lora", "lora", "full")
FORWARD_PLAN = "zero_shot"  # the method whose step is the forward alone
# A step of the presets from here up takes tens of seconds to minutes: it averages the machine's drift
# itself, and three rounds would take hours.
ONE_ROUND_FROM = 2e9
flags.DEFINE_string("workdir", "workdirs/ladder", "Where the JSON per model, the table and the plot go.")
flags.DEFINE_list("models", list(LADDER), "Presets to measure, smallest first.")
flags.DEFINE_list("methods", list(METHODS), "forward, then methods as fttpu.bench takes them.")
flags.DEFINE_enum("param_dtype", "float16", ["float32", "bfloat16", "float16"], "Storage and compute dtype.")
flags.DEFINE_integer("batch", 4, "Sentences per batch.")
flags.DEFINE_integer("seq", 64, "Tokens per sentence.")
flags.DEFINE_integer("steps", 2, "Timed steps after --warmup untimed ones.")
flags.DEFINE_integer("warmup", 1, "Untimed steps after compiling (a 7B model's mezo step takes minutes here).")
flags.DEFINE_integer(
  "rounds",
  3,
  "Rounds of the methods in turn per model below 2B parameters (fttpu.bench --rounds); larger: one.",
  lower_bound=1,
)
flags.DEFINE_float("memory_gb", 0.0, "Memory a run may use in GiB; 0 = this machine's MemTotal - --reserve_gb.")
flags.DEFINE_float("reserve_gb", 2.0, "What --memory_gb=0 leaves to the system and the compiler.")
FLAGS = flags.FLAGS
GB = 2**30


def machine_memory_gb() -> float:
  with open("/proc/meminfo") as f:
    total_kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
  return total_kb * 1024 / GB - FLAGS.reserve_gb


def run_json(command: list) -> dict:
  result = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True)
  if result.returncode:
    raise RuntimeError(f"{' '.join(command[:2])} failed:\n{result.stderr[-3000:]}")
  start = result.stdout.index("{")
  return json.loads(result.stdout[start:])


def plan_gb(model: str, methods: list) -> tuple[dict, int]:
  """({method: planned peak GiB on one device}, parameters); the forward is planned as zero_shot's."""
  from fttpu.models import presets

  family = presets.PRESETS[model]["model_type"]
  trained = [FORWARD_PLAN if m == "forward" else m for m in methods]
  dtype = FLAGS.param_dtype
  planned = run_json(
    [
      "fttpu.plan",
      f"--config=configs/fewshot.py:family={family}",
      f"--model={model}",
      "--mesh=data=1",
      f"--methods={','.join(trained)}",
      f"--config.train.batch_size={FLAGS.batch}",
      f"--config.data.max_length={FLAGS.seq}",
      f"--config.model.param_dtype={dtype}",
      f"--config.model.compute_dtype={dtype}",
      "--json",
    ]
  )
  by_method = {"forward" if m == FORWARD_PLAN else m: r["peak_mb"] / 1024 for m, r in planned["methods"].items()}
  return by_method, planned["parameters"]


def measure(model: str, memory_gb: float, too_big: set) -> dict:
  """The bench figures of every method that fits; the skipped ones with their planned GiB."""
  path = os.path.join(FLAGS.workdir, f"{model}.json")
  if os.path.exists(path):
    logging.info("%s was measured already; reading %s", model, path)
    with open(path) as f:
      return json.load(f)
  planned, parameters = plan_gb(model, FLAGS.methods)
  fits = [m for m in FLAGS.methods if m not in too_big and planned[m] <= memory_gb]
  if "forward" not in fits:
    fits = []
  logging.info("%s: %d parameters; planned GiB %s; running %s", model, parameters, planned, fits)
  bench = (
    {}
    if not fits
    else run_json(
      [
        "fttpu.bench",
        f"--model={model}",
        f"--param_dtype={FLAGS.param_dtype}",
        f"--methods={','.join(fits)}",
        f"--batch={FLAGS.batch}",
        f"--seq={FLAGS.seq}",
        f"--steps={FLAGS.steps}",
        f"--warmup={FLAGS.warmup}",
        f"--rounds={FLAGS.rounds if parameters < ONE_ROUND_FROM else 1}",
      ]
    )
  )
  record = {
    "model": model,
    "parameters": parameters,
    "planned_gb": planned,
    "skipped": [m for m in FLAGS.methods if m not in fits],
    "bench": bench,
  }
  with open(path, "w") as f:
    json.dump(record, f, indent=1)
  return record


def figures(record: dict, method: str) -> dict | None:
  bench = record["bench"]
  if method not in bench or "forward" not in bench:
    return None
  param_mb = bench["forward"]["model_params_mb"]
  return {
    "step_s": bench[method]["step_s"],
    "to_forward": bench["ratios_to_forward"][method],
    "rss_to_params": bench[method]["max_rss_mb"] / param_mb,
    "rss_gb": bench[method]["max_rss_mb"] / 1024,
  }


def table(records: list, memory_gb: float) -> str:
  methods = FLAGS.methods
  lines = [
    f"Random-weight presets in {FLAGS.param_dtype}, batch {FLAGS.batch} x {FLAGS.seq} tokens, median of "
    f"{FLAGS.steps} steps after {FLAGS.warmup} warm-up (below {ONE_ROUND_FROM / 1e9:.0f}B parameters the median of "
    f"{FLAGS.rounds} rounds of the methods in turn), {os.cpu_count()} "
    f"CPU cores, {memory_gb:.1f} GiB for a run. Each cell: step time as a multiple of the forward's, and peak "
    "RSS as a multiple of the parameter bytes (GiB).",
    "",
    "| model | parameters | forward s | " + " | ".join(methods[1:]) + " |",
    "|---|---:|---:|" + "---:|" * (len(methods) - 1),
  ]
  for record in records:
    cells = []
    for method in methods[1:]:
      f = figures(record, method)
      if f:
        cells.append(f"{f['to_forward']:.2f}x, {f['rss_to_params']:.2f}x ({f['rss_gb']:.1f})")
      else:
        cells.append(f"does not fit (plan {record['planned_gb'].get(method, float('nan')):.1f} GiB)")
    bench = record["bench"]
    forward = (
      f"{bench['forward']['step_s']:.2f}" if bench else f"does not fit (plan {record['planned_gb']['forward']:.1f} GiB)"
    )
    lines.append(f"| {record['model']} | {record['parameters'] / 1e9:.2f}B | {forward} | " + " | ".join(cells) + " |")
  lines += ["", "Largest model each method trains here:", ""]
  for method in methods[1:]:
    trained = [r for r in records if figures(r, method)]
    best = max(trained, key=lambda r: r["parameters"]) if trained else None
    lines.append(f"- {method}: " + (f"{best['model']} ({best['parameters'] / 1e9:.2f}B)" if best else "none"))
  return "\n".join(lines)


def plot(records: list, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib import ticker

  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for method in FLAGS.methods[1:]:
    points = sorted((r["parameters"] / 1e9, figures(r, method)) for r in records if figures(r, method))
    if not points:
      continue
    sizes = [p for p, _ in points]
    axes[0].plot(sizes, [f["to_forward"] for _, f in points], marker="o", label=method)
    axes[1].plot(sizes, [f["rss_gb"] for _, f in points], marker="o", label=method)
  by_size = sorted((r for r in records if r["bench"]), key=lambda r: r["parameters"])
  sizes = [r["parameters"] / 1e9 for r in by_size]
  axes[1].plot(
    sizes, [r["bench"]["forward"]["max_rss_mb"] / 1024 for r in by_size], marker="o", color="black", label="forward"
  )
  axes[1].plot(
    sizes,
    [r["bench"]["forward"]["model_params_mb"] / 1024 for r in by_size],
    ls=":",
    color="gray",
    label="parameter bytes",
  )
  for ax, title in ((axes[0], "step time / forward"), (axes[1], "peak RSS (GiB)")):
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("parameters (billions)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
  axes[1].set_yscale("log")
  axes[0].legend(fontsize=8)
  axes[1].legend(fontsize=8)
  fig.suptitle(f"Cost as the model grows ({FLAGS.param_dtype}, batch {FLAGS.batch} x {FLAGS.seq}, this machine)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv):
  del argv
  from fttpu.models import presets

  presets.check(FLAGS.models, "--models")
  if not FLAGS.methods or FLAGS.methods[0] != "forward":
    raise ConfigError(f"--methods must start with forward (the ratios' unit); got {FLAGS.methods}")
  memory_gb = FLAGS.memory_gb or machine_memory_gb()
  os.makedirs(FLAGS.workdir, exist_ok=True)
  records, too_big = [], set()
  for model in FLAGS.models:
    record = measure(model, memory_gb, too_big)
    too_big |= set(record["skipped"])  # a larger model needs more
    records.append(record)
  text = table(records, memory_gb)
  with open(os.path.join(FLAGS.workdir, "results.md"), "w") as f:
    f.write(text + "\n")
  if any(r["bench"] for r in records):
    plot(records, os.path.join(FLAGS.workdir, "results.png"))
  print(text)


if __name__ == "__main__":
  cli.run(main)
