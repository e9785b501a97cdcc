"""Every update rule on 16-shot SST-2 (seed 42): learning rate chosen on dev, test accuracy beside full FT.

  python -m experiments.methods_sst2 --data_dir=../shared/data --workdir=workdirs/methods_sst2

Each (method, learning rate) is an ordinary fttpu run in WORKDIR/<method>_lr<lr> (finished runs are
read, not repeated). For every method the learning rate with the best final dev accuracy (32
examples; ties go to the smaller rate) is kept. Writes WORKDIR/results.md and results.png.
"""

import os
import subprocess
import sys

from absl import flags, logging

from fttpu import cli, metrics

flags.DEFINE_string("data_dir", "../shared/data", "Folder with <task>/train.tsv and test.tsv.")
flags.DEFINE_string("workdir", "workdirs/methods_sst2", "Where the runs, the table and the plot go.")
flags.DEFINE_string("task", "sst2", "Task.")
flags.DEFINE_integer("seed", 42, "Few-shot sample and training seed.")
flags.DEFINE_list("only", [], "Run only these rows (names of GRID).")
FLAGS = flags.FLAGS

# row name -> (method, extra config overrides, learning rates tried)
GRID = {
  "zero_shot": ("zero_shot", {}, [2e-5]),
  "full": ("full", {}, [2e-5]),  # chosen over 5 seeds x 2 tasks in configs/fewshot.py
  "head (L-BFGS probe)": ("head", {"head.solver": "lbfgs"}, [2e-5]),
  "head": ("head", {}, [1e-3, 3e-3, 1e-2]),
  "bitfit": ("bitfit", {}, [1e-4, 5e-4, 2e-3]),
  "layers (last)": ("layers", {}, [2e-5, 1e-4, 5e-4]),
  "lora": ("lora", {}, [1e-4, 5e-4, 1e-3]),
  "prefix": ("prefix", {}, [1e-3, 1e-2, 3e-2]),
  "sparse (1%, magnitude)": ("sparse", {}, [1e-4, 5e-4, 2e-3]),
  "spiel (1%)": ("spiel", {}, [1e-4, 5e-4, 2e-3]),
  # Zeroth-order: ZO-SGD at a constant rate, two forward passes a step, so more (cheaper) steps.
  "mezo": ("mezo", {"train.steps": 500}, [1e-5, 3e-5, 1e-4]),
  "zo over lora": ("zo", {"zo.base": "lora", "train.steps": 1000}, [1e-3]),
}


def run(row: str, method: str, overrides: dict, lr: float) -> list[dict]:
  stem = row.split(" ")[0] + ("_lbfgs" if "head.solver" in overrides else "")
  workdir = os.path.join(FLAGS.workdir, f"{stem}_lr{lr:g}")
  lines = metrics.read_metrics(workdir)
  if not (lines and lines[-1].get("final")):
    command = [
      sys.executable,
      "-m",
      "fttpu.main",
      f"--config=configs/fewshot.py:task={FLAGS.task},method={method},k=16,seed={FLAGS.seed}",
      f"--config.data.dir={FLAGS.data_dir}",
      f"--config.optimizer.learning_rate={lr}",
      f"--workdir={workdir}",
    ] + [f"--config.{k}={v}" for k, v in overrides.items()]
    logging.info("running %s", " ".join(command))
    subprocess.run(command, check=True)
    lines = metrics.read_metrics(workdir)
  return lines


def main(argv):
  del argv
  rows = {}
  for row, (method, overrides, rates) in GRID.items():
    if FLAGS.only and row not in FLAGS.only:
      continue
    runs = {lr: run(row, method, overrides, lr) for lr in rates}
    dev = {
      lr: ([l for l in lines if l.get("split") == "dev"] or [{"eval/accuracy": float("nan")}])[-1]["eval/accuracy"]
      for lr, lines in runs.items()
    }
    best = min(rates, key=lambda lr: (-dev[lr] if dev[lr] == dev[lr] else 0, lr))
    rows[row] = {"lr": best, "dev": dev, "final": runs[best][-1], "lines": runs[best]}
  write_table(rows)
  plot(rows)


def write_table(rows: dict) -> None:
  lines = [
    f"16-shot {FLAGS.task}, seed {FLAGS.seed}, MiniLM (all-MiniLM-L6-v2), batch 8; AdamW with a linear "
    "decay, except the zeroth-order rows (ZO-SGD, constant rate).",
    "Learning rate chosen by final dev accuracy (dev accuracy of every rate tried in brackets).",
    "",
    "| method | steps | lr | dev acc. per lr | test acc. | vs full FT | step time (s) |",
    "|---|---:|---:|---|---:|---:|---:|",
  ]
  full = rows.get("full", {}).get("final", {}).get("eval/accuracy", float("nan"))
  for row, r in rows.items():
    dev = ", ".join(f"{lr:g}: {100 * acc:.1f}" for lr, acc in r["dev"].items())
    acc = r["final"]["eval/accuracy"]
    lines.append(
      f"| {row} | {r['final']['step']} | {r['lr']:g} | {dev} | {100 * acc:.1f} | {100 * (acc - full):+.1f} | "
      f"{r['final'].get('perf/step_s', float('nan')):.3f} |"
    )
  text = "\n".join(lines) + "\n"
  with open(os.path.join(FLAGS.workdir, "results.md"), "w") as f:
    f.write(text)
  print(text)


def plot(rows: dict) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  names = list(rows)
  axes[0].barh(names, [100 * rows[n]["final"]["eval/accuracy"] for n in names], color="tab:blue")
  axes[0].set(xlabel=f"{FLAGS.task} test accuracy (%)", xlim=(50, 100), title="test accuracy (seed 42)")
  axes[0].invert_yaxis()
  for n in names:
    dev = [l for l in rows[n]["lines"] if l.get("split") == "dev"]
    if len(dev) > 1:
      axes[1].plot([l["step"] for l in dev], [100 * l["eval/accuracy"] for l in dev], marker="o", label=n)
  axes[1].set(xlabel="step", ylabel="dev accuracy (%)", title="dev accuracy during training")
  axes[1].legend(fontsize=7)
  for ax in axes:
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(os.path.join(FLAGS.workdir, "results.png"), dpi=120)


if __name__ == "__main__":
  cli.run(main)
