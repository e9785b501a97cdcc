"""Config grids into paper tables: the machinery every experiments/<table>/ folder shares.

A table is rows (a method with its fixed settings and a hyperparameter grid) x tasks x seeds. Every
combination is a cell: an ordinary fttpu run (`train.run` of configs/fewshot.py with the cell's
settings) in its own workdir ROOT/<task>/<row>/<hyperparameters>/seed<seed>. `run_cells` runs the
cells that have not finished (a finished cell has its final test line in metrics.jsonl; an
interrupted one resumes from its checkpoint) in worker processes, with progress lines. `collect` reads them back, `choose` picks each
row's hyperparameters by mean final dev score over the seeds (the paper's protocol; the score is accuracy,
or F1 for a generation task: SQuAD, DROP), and the
writers turn the chosen cells into Markdown, CSV and LaTeX tables of mean (std) and PNG plots.
"""

import csv
import dataclasses
import io
import itertools
import json
import logging
import os
import re
import shlex
import tempfile
import time

import numpy as np

from fttpu import cli, files, metrics
from fttpu.errors import ConfigError
from fttpu.methods import base as method_base


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of a table: `method` with `fixed` config settings and a `grid` of hyperparameters
  (config key -> values; every combination is tried and the best on dev is reported)."""

  name: str
  method: str
  fixed: tuple = ()  # ((config key, value), ...)
  grid: tuple = ()  # ((config key, (value, ...)), ...)
  skip: tuple = ()  # tasks the row has no cell for (a method the task cannot run); the table shows "-"

  def settings(self) -> list[tuple]:
    """Every combination of the grid, as ((key, value), ...)."""
    keys = [k for k, _ in self.grid]
    return [tuple(zip(keys, values)) for values in itertools.product(*(v for _, v in self.grid))]


@dataclasses.dataclass(frozen=True)
class Cell:
  row: Row
  task: str
  seed: int
  hparams: tuple  # ((config key, value), ...): one combination of row.grid
  task_fixed: tuple = ()  # the task's own settings (its prompts, its sequence length); the row's come after

  def workdir(self, root: str) -> str:
    hp = "_".join(f"{k.split('.')[-1]}={v}" for k, v in self.hparams) or "default"
    return os.path.join(root, self.task, slug(self.row.name), hp, f"seed{self.seed}")

  def config_arg(self, base_arg: str) -> str:
    return f"{base_arg},task={self.task},method={self.row.method},seed={self.seed}".lstrip(",")

  def settings(self) -> tuple:
    """((config key, value), ...): the task's, then the row's fixed ones, then the hyperparameters."""
    return self.task_fixed + self.row.fixed + self.hparams

  def overrides(self) -> list[str]:
    return [f"--config.{k}={v}" for k, v in self.settings()]

  def launch_command(self, launcher: str, root: str, base_arg: str, data_dir: str) -> str:
    """The shell command that runs this cell through launch/<launcher>.sh (a pod or a cluster per cell)."""
    args = " ".join(shlex.quote(a) for a in [self.config_arg(base_arg), *self.overrides()])
    return (
      f"launch/{launcher}.sh run --workdir={shlex.quote(self.workdir(root))} --data-dir={shlex.quote(data_dir)} -- "
      if launcher == "tpu_pod"
      else f"launch/{launcher}.sh --workdir={shlex.quote(self.workdir(root))} --data-dir={shlex.quote(data_dir)} -- "
    ) + args

  def config(self, base_arg: str, data_dir: str):
    """The cell's ConfigDict: configs/fewshot.py with `base_arg`, then the row's settings and hyperparameters."""
    from configs import fewshot
    from fttpu import config as config_lib

    config = fewshot.get_config(self.config_arg(base_arg))
    config.data.dir = data_dir
    return config_lib.set_fields(config, {k: str(v) for k, v in self.settings()})


def slug(name: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def cells(rows, tasks, seeds, task_settings: dict | None = None) -> list[Cell]:
  """Every (row, task, hyperparameters, seed); `task_settings` maps a task to its own ((key, value), ...)."""
  return [
    Cell(row, task, seed, hp, tuple((task_settings or {}).get(task, ())))
    for row in rows
    for task in tasks
    if task not in row.skip
    for hp in row.settings()
    for seed in seeds
  ]


def finished(cell: Cell, root: str) -> bool:
  lines = metrics.read_metrics(cell.workdir(root))
  return bool(lines) and bool(lines[-1].get("final"))


def run_cell(cell: Cell, root: str, base_arg: str, data_dir: str) -> str | None:
  """Runs one cell in this process, its log lines in WORKDIR/run.log (in a bucket workdir: written
  locally, then uploaded when the cell ends); returns None, or what went wrong."""
  from fttpu import train

  workdir = cell.workdir(root)
  files.makedirs(workdir)
  log = files.join(workdir, "run.log")
  local_log = log
  if files.is_remote(log):
    descriptor, local_log = tempfile.mkstemp(prefix="fttpu-run-", suffix=".log")
    os.close(descriptor)
  handler = logging.FileHandler(local_log)
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
  logging.getLogger().addHandler(handler)
  metrics.quiet_library_logs()  # orbax's per-save INFO lines stay out of the cell's log
  try:
    train.run(cell.config(base_arg, data_dir), workdir)
    return None
  except Exception as e:  # the sweep goes on; the cell's log has the traceback
    logging.getLogger().exception("cell %s failed", workdir)
    return f"{type(e).__name__}: {e}"
  finally:
    logging.getLogger().removeHandler(handler)
    handler.close()
    if local_log != log:
      files.move(local_log, log)


def _worker_init(cores):
  """A worker takes its share of the cores (XLA sizes its thread pools to it instead of oversubscribing;
  measured on 2 cores with --jobs=2, a FT step ran at 1.25-1.3 steps/s per worker pinned or not); its log
  lines go to each cell's run.log, its console shows errors only (the parent shows progress)."""
  share = cores.get()
  if share:
    os.sched_setaffinity(0, share)
  console = logging.StreamHandler()
  console.setLevel(logging.ERROR)
  logging.getLogger().addHandler(console)  # also keeps libraries' logging.basicConfig() from adding an INFO one
  logging.getLogger().setLevel(logging.INFO)
  metrics.quiet_library_logs()


def check_jobs(jobs: int, on_tpu: bool) -> None:
  """Cells at once on one machine: a TPU VM's chips belong to one process, so there it is one."""
  if jobs < 1:
    raise ConfigError(f"--jobs={jobs}: give 1 or more cells at once")
  if jobs > 1 and on_tpu:
    raise ConfigError(
      f"--jobs={jobs} on a TPU VM: only one process may own its TPU chips (the others would fail "
      "with 'TPU is already in use'); use --jobs=1 (cells one after another), or one slice per cell "
      "with --launcher=tpu_pod"
    )


def run_cells(todo: list[Cell], root: str, base_arg: str, data_dir: str, jobs: int = 1) -> list[tuple]:
  """Runs the unfinished cells in `jobs` worker processes (each imports JAX and loads nothing twice);
  logs progress with an ETA; returns [(cell, error)] for the cells that failed (the others go on)."""
  import concurrent.futures
  import multiprocessing

  pending = [c for c in todo if not finished(c, root)]
  logging.info(
    "%d cells, %d finished already, %d to run (%d at a time)", len(todo), len(todo) - len(pending), len(pending), jobs
  )
  failed, started = [], time.perf_counter()
  context = multiprocessing.get_context("spawn")  # JAX does not survive fork
  cores = context.SimpleQueue()
  for share in _core_shares(jobs):
    cores.put(share)
  with concurrent.futures.ProcessPoolExecutor(
    jobs, mp_context=context, initializer=_worker_init, initargs=(cores,)
  ) as pool:
    futures = {pool.submit(run_cell, cell, root, base_arg, data_dir): cell for cell in pending}
    remaining = sum(map(_cost, pending))
    spent = 0.0
    for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
      cell, error = futures[future], future.result()
      spent, remaining = spent + _cost(cell), remaining - _cost(cell)
      if error:
        failed.append((cell, error))
        logging.warning("cell %s failed: %s (log: %s/run.log)", cell.workdir(root), error, cell.workdir(root))
      elapsed = time.perf_counter() - started
      logging.info(
        "[%d/%d] %s | %s seed %d %s | %s elapsed, ETA %s",
        done,
        len(pending),
        cell.task,
        cell.row.name,
        cell.seed,
        dict(cell.hparams) or "",
        _minutes(elapsed),
        _minutes(elapsed * remaining / spent),
      )
  return failed


def _core_shares(jobs: int) -> list[set]:
  """This process's cores split evenly among `jobs` workers; empty sets (no pinning) when there are fewer."""
  available = sorted(os.sched_getaffinity(0))
  if jobs < 2 or len(available) < jobs:
    return [set()] * jobs
  return [set(available[i * len(available) // jobs : (i + 1) * len(available) // jobs]) for i in range(jobs)]


def _cost(cell: Cell) -> float:
  """A cell's relative cost for the ETA: a fixed part (load, compile, evaluation) plus the tokens it trains,
  a zeroth-order token at 0.3 of a backpropagated one. fttpu.bench, MiniLM on 2 cores: a full step of 8 x 64
  tokens 0.42 s, a MeZO step of 16 x 64 0.25 s; the fixed part, ~15 s, is what 18K backpropagated tokens take."""
  settings = dict(cell.settings())
  tokens = settings.get("train.steps", 0) * settings.get("train.batch_size", 8) * settings.get("data.max_length", 64)
  return 1.0 + tokens * (0.3 if method_base.is_zeroth_order(cell.row.method) else 1.0) / 18_000


def _minutes(seconds: float) -> str:
  return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m" if seconds >= 3600 else f"{seconds / 60:.1f}m"


SCORES = ("eval/accuracy", "eval/f1")  # a split's score: classification's accuracy, generation's F1


def score(line: dict) -> float:
  """The score of a dev or test line of metrics.jsonl: its accuracy, or a generation task's F1."""
  return next(line[key] for key in SCORES if key in line)


def collect(all_cells: list[Cell], root: str) -> list[dict]:
  """One record per finished cell: row, task, seed, hparams, final dev and test score, the dev curve."""
  records = []
  for cell in all_cells:
    lines = metrics.read_metrics(cell.workdir(root))
    if not (lines and lines[-1].get("final")):
      continue
    dev = [l for l in lines if l.get("split") == "dev"]
    records.append(
      {
        "row": cell.row.name,
        "task": cell.task,
        "seed": cell.seed,
        "hparams": cell.hparams,
        "dev": score(dev[-1]) if dev else float("nan"),
        "test": score(lines[-1]),
        "steps": lines[-1]["step"],
        "curve": [(l["step"], score(l)) for l in dev],
        "step_s": lines[-1].get("perf/step_s", float("nan")),
      }
    )
  return records


def choose(records: list[dict]) -> dict:
  """{(row, task): the records of the hyperparameters with the best mean final dev score over seeds}
  (a row without dev evaluations, zero-shot, has one setting; ties go to the first setting of the grid)."""
  by_setting = {}
  for r in records:
    by_setting.setdefault((r["row"], r["task"]), {}).setdefault(r["hparams"], []).append(r)
  chosen = {}
  for key, settings in by_setting.items():
    mean_dev = lambda rs: np.nanmean([r["dev"] for r in rs]) if any(r["dev"] == r["dev"] for r in rs) else 0.0
    chosen[key] = max(settings.values(), key=mean_dev)
  return chosen


def summary(chosen: dict, rows: list[Row], tasks: list[str], paper: dict | None = None) -> list[dict]:
  """Table lines: {"row", then per task: mean, std, seeds, hparams, paper}."""
  out = []
  for row in rows:
    line = {"row": row.name}
    for task in tasks:
      rs = chosen.get((row.name, task), [])
      acc = 100 * np.array([r["test"] for r in rs])
      line[task] = {
        "mean": float(acc.mean()) if rs else float("nan"),
        "std": float(acc.std()) if rs else float("nan"),
        "seeds": len(rs),
        "hparams": dict(rs[0]["hparams"]) if rs else {},
        "paper": (paper or {}).get(row.name, {}).get(task),
      }
    out.append(line)
  return out


def markdown(lines: list[dict], tasks: list[str], paper_name: str = "") -> str:
  head = (
    "| row | "
    + " | ".join(
      f"{t} mean (std) | {t} seeds | {t} chosen" + (f" | {t} {paper_name}" if paper_name else "") for t in tasks
    )
    + " |"
  )
  cols = sum(4 if paper_name else 3 for _ in tasks)
  text = [head, "|---|" + "---:|" * cols]
  for line in lines:
    cells_ = []
    for t in tasks:
      c = line[t]
      cells_ += [
        f"{c['mean']:.1f} ({c['std']:.1f})" if c["seeds"] else "-",
        str(c["seeds"]),
        ", ".join(f"{k.split('.')[-1]}={v}" for k, v in c["hparams"].items()) or "-",
      ]
      if paper_name:
        cells_.append("" if c["paper"] is None else f"{c['paper']:.1f}")
    text.append(f"| {line['row']} | " + " | ".join(cells_) + " |")
  return "\n".join(text) + "\n"


def csv_text(lines: list[dict], tasks: list[str]) -> str:
  buffer = io.StringIO()
  writer = csv.writer(buffer)
  writer.writerow(["row"] + [f"{t}_{k}" for t in tasks for k in ("mean", "std", "seeds", "paper")])
  for line in lines:
    writer.writerow(
      [line["row"]]
      + [
        f"{line[t][k]:.2f}" if isinstance(line[t][k], float) else line[t][k]
        for t in tasks
        for k in ("mean", "std", "seeds", "paper")
      ]
    )
  return buffer.getvalue()


def latex(lines: list[dict], tasks: list[str], caption: str) -> str:
  text = [
    "\\begin{table}[t]",
    "\\centering",
    "\\begin{tabular}{l" + "c" * len(tasks) + "}",
    "\\toprule",
    "Method & " + " & ".join(t.upper() for t in tasks) + " \\\\",
    "\\midrule",
  ]
  for line in lines:
    text.append(
      line["row"].replace("_", "\\_")
      + " & "
      + " & ".join(f"{line[t]['mean']:.1f} ({line[t]['std']:.1f})" if line[t]["seeds"] else "--" for t in tasks)
      + " \\\\"
    )
  text += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{caption}}}", "\\end{table}"]
  return "\n".join(text) + "\n"


def plot(lines: list[dict], chosen: dict, tasks: list[str], path: str, title: str) -> None:
  """Left: test score per row and task (mean, std over seeds; the paper's value as a marker).
  Right: dev score against steps per trained row (mean over seeds of the chosen setting). The score is
  accuracy, or F1 for a generation task."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 1 + len(tasks), figsize=(6 + 5 * len(tasks), 5))
  names = [l["row"] for l in lines]
  width = 0.8 / len(tasks)
  for i, task in enumerate(tasks):
    y = np.arange(len(names)) + i * width
    axes[0].barh(
      y, [l[task]["mean"] for l in lines], width, xerr=[l[task]["std"] for l in lines], label=task, capsize=2
    )
    paper = [(l[task]["paper"], yy) for l, yy in zip(lines, y) if l[task]["paper"] is not None]
    if paper:
      axes[0].scatter(*zip(*paper), marker="|", s=120, color="black", zorder=3, label="paper" if i == 0 else None)
  axes[0].set_yticks(np.arange(len(names)) + width * (len(tasks) - 1) / 2, names)
  axes[0].invert_yaxis()
  axes[0].set(xlabel="test accuracy or F1 (%)", title=title)
  axes[0].legend(fontsize=8)
  curves = mean_curves(chosen)
  for ax, task in zip(axes[1:], tasks):
    for name in names:
      if (name, task) in curves:
        steps, accuracies = zip(*curves[(name, task)])
        ax.plot(steps, 100 * np.array(accuracies), marker=".", label=name)
    ax.set(xlabel="step", ylabel="dev score (%)", title=f"{task}: dev score during training")
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  for ax in axes:
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ---------------------------------------------------------------- the two CLIs of every table folder


def run_cli(grid) -> None:
  """`python -m experiments.<table>.run`: runs the grid module's cells (resumable)."""
  from absl import app, flags

  flags.DEFINE_string("data_dir", "../shared/data", "Folder with <task>/train.tsv and test.tsv.")
  flags.DEFINE_string("workdir", f"workdirs/{grid.NAME}", "Root of the cells' workdirs.")
  flags.DEFINE_integer("jobs", 1, "Worker processes running cells at once (each uses every core XLA gives it).")
  flags.DEFINE_list("only", [], "Run only these rows (names in grid.ROWS).")
  flags.DEFINE_list("tasks", list(grid.TASKS), "Tasks.")
  flags.DEFINE_list("seeds", [str(s) for s in grid.SEEDS], "Seeds.")
  flags.DEFINE_string("base", grid.BASE, "The config argument every cell starts from (model, k).")
  flags.DEFINE_list("set", [], "Extra config settings for every cell, key=value (e.g. train.steps=2 for a smoke run).")
  flags.DEFINE_enum(
    "launcher",
    None,
    ["tpu_pod", "slurm"],
    "Print the launch/<launcher>.sh command of every unfinished "
    "cell (one pod or cluster job per cell) instead of running the cells here.",
  )

  def main(argv):
    del argv
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO)
    metrics.quiet_library_logs()
    f = flags.FLAGS
    unknown = set(f.only) - {r.name for r in grid.ROWS}
    if unknown:
      raise app.UsageError(f"--only: unknown rows {sorted(unknown)}; rows: {[r.name for r in grid.ROWS]}")
    extra = tuple(tuple(item.split("=", 1)) for item in f.set)
    rows = [dataclasses.replace(r, fixed=r.fixed + extra) for r in grid.ROWS if not f.only or r.name in f.only]
    todo = cells(rows, f.tasks, [int(s) for s in f.seeds], getattr(grid, "TASK_SETTINGS", {}))
    if f.launcher:
      print(
        "\n".join(
          c.launch_command(f.launcher, f.workdir, f.base, f.data_dir) for c in todo if not finished(c, f.workdir)
        )
      )
      return
    from fttpu import distributed

    check_jobs(f.jobs, distributed.on_tpu_host())
    failed = run_cells(todo, f.workdir, f.base, f.data_dir, f.jobs)
    if failed:
      raise SystemExit(f"{len(failed)} cells failed: " + "; ".join(f"{c.workdir(f.workdir)}: {e}" for c, e in failed))

  cli.run(main)


def write_tables(grid, root: str, out: str, only=()) -> list[dict]:
  """OUT/table.{md,csv,tex,png,json} from the finished cells of the grid module under ROOT.

  With `only` (row names), those rows come from ROOT and every other row keeps its line (and dev curve)
  from the table already in OUT: OUT/table.json, or for a table written before table.json existed,
  OUT/table.csv (means, stds, seeds) and OUT/table.md (chosen hyperparameters). So a few rows can be
  re-run into a fresh ROOT without the other rows' cells."""
  tasks = list(grid.TASKS)
  rows = [r for r in grid.ROWS if not only or r.name in only]
  records = collect(cells(rows, tasks, grid.SEEDS, getattr(grid, "TASK_SETTINGS", {})), root)
  if not records:  # a table of NaNs would replace the real one in OUT
    raise ConfigError(
      f"--workdir={root} holds no finished cell of {grid.NAME}"
      f"{' rows ' + ', '.join(only) if only else ''}: nothing to aggregate; run "
      f"`python -m experiments.{grid.NAME}.run --workdir={root}` first (OUT is left as it was)"
    )
  chosen = choose(records)
  lines = summary(chosen, list(grid.ROWS), tasks, grid.PAPER)
  if only:
    kept, curves = previous_table(out, tasks)
    for line in lines:
      if line["row"] not in only and line["row"] in kept:
        line.update({t: {**kept[line["row"]][t], "paper": line[t]["paper"]} for t in tasks})
    chosen.update({key: [{"curve": curve}] for key, curve in curves.items() if key[0] not in only})
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(grid.CAPTION + "\n\n" + markdown(lines, tasks, "paper"))
  with open(os.path.join(out, "table.csv"), "w") as f:
    f.write(csv_text(lines, tasks))
  with open(os.path.join(out, "table.tex"), "w") as f:
    f.write(latex(lines, tasks, grid.CAPTION))
  with open(os.path.join(out, "table.json"), "w") as f:
    json.dump(
      {
        "lines": lines,
        "curves": [{"row": row, "task": task, "curve": curve} for (row, task), curve in mean_curves(chosen).items()],
      },
      f,
      indent=1,
    )
  plot(lines, chosen, tasks, os.path.join(out, "table.png"), grid.NAME)
  return lines


def mean_curves(chosen: dict) -> dict:
  """{(row, task): [(step, mean dev score over the seeds), ...]} where the seeds' curves line up."""
  out = {}
  for key, records in chosen.items():
    curves = [r["curve"] for r in records if len(r["curve"]) > 1]
    if curves and len({len(c) for c in curves}) == 1:
      out[key] = [(s, float(np.mean([c[i][1] for c in curves]))) for i, (s, _) in enumerate(curves[0])]
  return out


def previous_table(out: str, tasks: list[str]) -> tuple[dict, dict]:
  """The table already in OUT: ({row: {task: {mean, std, seeds, hparams}}}, {(row, task): mean dev curve})."""
  path = os.path.join(out, "table.json")
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    return (
      {l["row"]: {t: l[t] for t in tasks} for l in saved["lines"]},
      {(c["row"], c["task"]): [tuple(p) for p in c["curve"]] for c in saved["curves"]},
    )
  kept = {}
  with open(os.path.join(out, "table.csv")) as f:
    for r in csv.DictReader(f):
      kept[r["row"]] = {
        t: {"mean": float(r[f"{t}_mean"]), "std": float(r[f"{t}_std"]), "seeds": int(r[f"{t}_seeds"]), "hparams": {}}
        for t in tasks
      }
  with open(os.path.join(out, "table.md")) as f:
    table = [l for l in f.read().splitlines() if l.startswith("| ")]
  head = [c.strip() for c in table[0].strip("|").split("|")]
  for line in table[1:]:
    values = [c.strip() for c in line.strip("|").split("|")]
    for t in tasks:
      hparams = values[head.index(f"{t} chosen")]
      if values[0] in kept and hparams != "-":
        kept[values[0]][t]["hparams"] = dict(item.split("=", 1) for item in hparams.split(", "))
  return kept, {}


def aggregate_cli(grid) -> None:
  """`python -m experiments.<table>.aggregate`: the table of the finished cells."""
  from absl import app, flags

  flags.DEFINE_string("workdir", f"workdirs/{grid.NAME}", "Root of the cells' workdirs.")
  flags.DEFINE_string("out", f"experiments/{grid.NAME}/results", "Where the tables and the plot go.")
  flags.DEFINE_list(
    "only",
    [],
    "Aggregate only these rows (names in grid.ROWS) from --workdir; every other row "
    "keeps its line from the table already in --out (re-running a few rows of a finished table).",
  )

  def main(argv):
    del argv
    unknown = set(flags.FLAGS.only) - {r.name for r in grid.ROWS}
    if unknown:
      raise app.UsageError(f"--only: unknown rows {sorted(unknown)}; rows: {[r.name for r in grid.ROWS]}")
    write_tables(grid, flags.FLAGS.workdir, flags.FLAGS.out, flags.FLAGS.only)
    with open(os.path.join(flags.FLAGS.out, "table.md")) as f:
      print(f.read())

  cli.run(main)
