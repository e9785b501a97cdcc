"""The main job: zero-shot vs 16-shot full fine-tuning of MiniLM, as a results table and a plot.

  python -m experiments.demo --data_dir=../shared/data --workdir=workdirs/demo [--tasks=sst2,trec]

Each (task, method) is an ordinary fttpu run in WORKDIR/<task>_<method> (config.json,
metrics.jsonl, TensorBoard, checkpoints); a finished run is resumed, not retrained.
Writes WORKDIR/results.md and WORKDIR/results.png.
"""

import os

from absl import flags, logging

from configs import fewshot
from fttpu import cli, metrics, train

flags.DEFINE_string("data_dir", "../shared/data", "Folder with <task>/train.tsv and test.tsv.")
flags.DEFINE_string("workdir", "workdirs/demo", "Where the runs, the table and the plot go.")
flags.DEFINE_list("tasks", ["sst2"], "Tasks to run.")
flags.DEFINE_integer("seed", 42, "Few-shot sample and training seed.")
flags.DEFINE_integer("k", 16, "Examples per class.")
flags.DEFINE_integer("steps", 200, "Fine-tuning steps.")
FLAGS = flags.FLAGS
METHODS = ("zero_shot", "full")


def run_one(task: str, method: str) -> list[dict]:
  """The run's metrics lines; a run that already finished in its workdir is read, not repeated."""
  config = fewshot.get_config(f"task={task},method={method},k={FLAGS.k},seed={FLAGS.seed},steps={FLAGS.steps}")
  config.data.dir = FLAGS.data_dir
  workdir = os.path.join(FLAGS.workdir, f"{task}_{method}")
  lines = metrics.read_metrics(workdir)
  if lines and lines[-1].get("final") and lines[-1]["step"] == (FLAGS.steps if method != "zero_shot" else 0):
    logging.info("%s has finished already; reading its results", workdir)
    return lines
  train.run(config, workdir)
  return metrics.read_metrics(workdir)


def table(results: dict) -> str:
  rows = [
    "| task | test examples | zero-shot acc. | 16-shot full FT acc. | gain (points) | step time (s) | compile (s) |",
    "|---|---:|---:|---:|---:|---:|---:|",
  ]
  for task, by_method in results.items():
    zero, full = by_method["zero_shot"][-1], by_method["full"][-1]
    rows.append(
      f"| {task} | {full.get('examples', '')} | {100 * zero['eval/accuracy']:.1f} | "
      f"{100 * full['eval/accuracy']:.1f} | {100 * (full['eval/accuracy'] - zero['eval/accuracy']):+.1f} | "
      f"{full.get('perf/step_s', float('nan')):.3f} | {full.get('perf/compile_s', float('nan')):.1f} |"
    )
  return "\n".join(rows)


def plot(results: dict, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for task, by_method in results.items():
    lines = by_method["full"]
    train = [l for l in lines if "train/loss" in l]
    dev = [l for l in lines if l.get("split") == "dev"]
    axes[0].plot([l["step"] for l in train], [l["train/loss"] for l in train], label=task)
    (line,) = axes[1].plot(
      [l["step"] for l in dev], [100 * l["eval/accuracy"] for l in dev], marker="o", label=f"{task} dev (full FT)"
    )
    axes[1].axhline(
      100 * by_method["zero_shot"][-1]["eval/accuracy"],
      ls="--",
      color=line.get_color(),
      label=f"{task} test, zero-shot",
    )
    axes[1].scatter(
      [lines[-1]["step"]],
      [100 * lines[-1]["eval/accuracy"]],
      marker="*",
      s=150,
      color=line.get_color(),
      label=f"{task} test, full FT",
    )
  axes[0].set(xlabel="step", ylabel="training loss", yscale="log", title="16-shot full fine-tuning")
  axes[1].set(xlabel="step", ylabel="accuracy (%)", title="accuracy")
  for ax in axes:
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  metrics.quiet_library_logs()
  results = {task: {method: run_one(task, method) for method in METHODS} for task in FLAGS.tasks}
  text = table(results)
  os.makedirs(FLAGS.workdir, exist_ok=True)
  with open(os.path.join(FLAGS.workdir, "results.md"), "w") as f:
    f.write(f"MiniLM (all-MiniLM-L6-v2), k={FLAGS.k} per class, seed {FLAGS.seed}, {FLAGS.steps} steps\n\n{text}\n")
  plot(results, os.path.join(FLAGS.workdir, "results.png"))
  print(
    f"\nMiniLM (all-MiniLM-L6-v2), k={FLAGS.k} per class, seed {FLAGS.seed}, {FLAGS.steps} full fine-tuning steps\n"
  )
  print(text)
  print(
    f"\nTable: {FLAGS.workdir}/results.md   Plot: {FLAGS.workdir}/results.png   Runs: {FLAGS.workdir}/<task>_<method>/"
  )


if __name__ == "__main__":
  cli.run(main)
