"""The main job: every kind of update on 16-shot SST-2 through the one step, as a table and a plot.

  python -m experiments.demo --data_dir=../shared/data --workdir=workdirs/demo [--tasks=sst2,trec]

Zero-shot, full fine-tuning, LoRA, sparse fine-tuning and MeZO on MiniLM, each an ordinary fttpu
run (`fttpu.main`, its own process, so its peak memory is its own) in WORKDIR/<task>_<method>
(config.json, metrics.jsonl, TensorBoard, checkpoints); a finished run is read, not retrained.
Every method takes its default learning rate of configs/fewshot.py; the autodiff ones run --steps
AdamW steps, MeZO --zo_steps ZO-SGD steps (two forward passes each, no backward). Writes
WORKDIR/results.md (test accuracy, step time, trainable parameters, optimizer-state entries, peak
memory) and WORKDIR/results.png. The runs share one XLA compilation cache (WORKDIR/xla_cache): every
method evaluates the same merged model, so each evaluation program (one per batch width,
data.pad_to_multiple_of) compiles once for all five.
"""

import os
import subprocess
import sys

from absl import flags, logging

from fttpu import cli, metrics

flags.DEFINE_string("data_dir", "../shared/data", "Folder with <task>/train.tsv and test.tsv.")
flags.DEFINE_string("workdir", "workdirs/demo", "Where the runs, the table and the plot go.")
flags.DEFINE_list("tasks", ["sst2"], "Tasks to run.")
flags.DEFINE_integer("seed", 42, "Few-shot sample and training seed.")
flags.DEFINE_integer("k", 16, "Examples per class.")
flags.DEFINE_integer("steps", 100, "Steps of the autodiff methods (full, lora, sparse).")
flags.DEFINE_integer("zo_steps", 300, "Steps of MeZO.")
FLAGS = flags.FLAGS
# row label -> method name of fttpu.methods
METHODS = {
  "zero-shot": "zero_shot",
  "full FT": "full",
  "LoRA (r=8, q,v)": "lora",
  "sparse (1%)": "sparse",
  "MeZO": "mezo",
}


def steps_of(method: str) -> int:
  return 0 if method == "zero_shot" else FLAGS.zo_steps if method == "mezo" else FLAGS.steps


def run_one(task: str, method: str) -> list[dict]:
  """The run's metrics lines; a run that already finished in its workdir is read, not repeated."""
  workdir = os.path.join(FLAGS.workdir, f"{task}_{method}")
  steps = steps_of(method)
  lines = metrics.read_metrics(workdir)
  if lines and lines[-1].get("final") and lines[-1]["step"] == steps:
    logging.info("%s has finished already; reading its results", workdir)
    return lines
  evaluations = max(steps // 4, 1)
  command = [
    sys.executable,
    "-m",
    "fttpu.main",
    f"--config=configs/fewshot.py:task={task},method={method},k={FLAGS.k},seed={FLAGS.seed},steps={max(steps, 1)}",
    f"--config.data.dir={FLAGS.data_dir}",
    f"--config.train.eval_every={evaluations}",
    f"--config.train.checkpoint_every={max(steps, 1)}",
    f"--workdir={workdir}",
  ]
  logging.info("%s on %s: %s", method, task, " ".join(command[2:]))
  run_showing_progress(command, f"{method} on {task}", shared_compilation_cache())
  return metrics.read_metrics(workdir)


def shared_compilation_cache() -> dict:
  """The runs' environment: JAX's persistent compilation cache in WORKDIR/xla_cache (unless one is set)."""
  cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.abspath(os.path.join(FLAGS.workdir, "xla_cache"))
  return {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache}


def run_showing_progress(command: list, what: str, env: dict) -> None:
  """Run `command`, its log passed through; a failure ends the demo with the run's own error line."""
  process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
  last = ""
  for line in process.stderr:
    sys.stderr.write(line)
    last = line.strip() or last
  if process.wait():
    raise SystemExit(last if last.startswith("error: ") else f"error: {what} failed; its log is above")


def table(results: dict) -> str:
  rows = [
    "| task | method | steps | test acc. | vs zero-shot | step time (s) | trainable params | optimizer-state "
    "entries | peak RSS (MB) |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for task, by_method in results.items():
    zero = by_method["zero-shot"][-1]["eval/accuracy"]
    for label, lines in by_method.items():
      final = lines[-1]
      step_s = f"{final['perf/step_s']:.3f}" if "perf/step_s" in final else "-"
      rows.append(
        f"| {task} | {label} | {final['step']} | {100 * final['eval/accuracy']:.1f} | "
        f"{100 * (final['eval/accuracy'] - zero):+.1f} | {step_s} | {int(final['model/trainable']):,} | "
        f"{int(final['model/optimizer_entries']):,} | {final['perf/peak_rss_mb']:.0f} |"
      )
  return "\n".join(rows)


def plot(results: dict, path: str) -> None:
  """Left: test accuracy per method (a group of bars per task). Right: each method's training loss."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  labels = list(METHODS)
  width = 0.8 / len(results)
  for i, (task, by_method) in enumerate(results.items()):
    accuracy = [100 * by_method[label][-1]["eval/accuracy"] for label in labels]
    bars = axes[0].bar(np.arange(len(labels)) + i * width, accuracy, width, label=task)
    axes[0].bar_label(bars, fmt="%.1f", fontsize=7)
    for label in labels[1:]:
      train = [l for l in by_method[label] if "train/loss" in l]
      axes[1].plot(
        [l["step"] for l in train],
        [l["train/loss"] for l in train],
        label=f"{task}: {label}" if len(results) > 1 else label,
      )
  axes[0].set_xticks(np.arange(len(labels)) + width * (len(results) - 1) / 2, labels, fontsize=8)
  low = min(100 * r[-1]["eval/accuracy"] for by_method in results.values() for r in by_method.values())
  axes[0].set(ylabel="test accuracy (%)", ylim=(max(0, low - 10), 100), title=f"{FLAGS.k}-shot, seed {FLAGS.seed}")
  axes[1].set(xlabel="step", ylabel="training loss (batch of 8)", yscale="log", title="training loss")
  for ax in axes:
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  results = {task: {label: run_one(task, method) for label, method in METHODS.items()} for task in FLAGS.tasks}
  title = (
    f"MiniLM (all-MiniLM-L6-v2), k={FLAGS.k} per class, seed {FLAGS.seed}; {FLAGS.steps} AdamW steps (full, LoRA, "
    f"sparse), {FLAGS.zo_steps} ZO-SGD steps (MeZO), batch 8; peak RSS of each run's process"
  )
  text = table(results)
  os.makedirs(FLAGS.workdir, exist_ok=True)
  with open(os.path.join(FLAGS.workdir, "results.md"), "w") as f:
    f.write(f"{title}\n\n{text}\n")
  plot(results, os.path.join(FLAGS.workdir, "results.png"))
  print(f"\n{title}\n\n{text}")
  print(
    f"\nTable: {FLAGS.workdir}/results.md   Plot: {FLAGS.workdir}/results.png   Runs: {FLAGS.workdir}/<task>_<method>/"
  )


if __name__ == "__main__":
  cli.run(main)
