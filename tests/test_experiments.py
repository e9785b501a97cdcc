"""The sweep machinery of experiments/ on a tiny grid: cells run once (a second sweep skips them),
hyperparameters are chosen by mean dev accuracy, and the tables and the plot are written. The task is
a new folder in the TSV format, given only its entry of task settings (its prompts; no code)."""

import dataclasses
import logging
import os
import shutil
import types

import pytest

from experiments import sweeps
from fttpu import metrics
from experiments.mezo_k16_cpu import grid
from tests.conftest import data_dir

PROMPT = (("data.mlm_template", "{sentence} It was {mask} ."), ("data.label_words", ("terrible", "great")))
STEPS = (("train.steps", 3), ("train.eval_every", 3))
ROWS = [
  sweeps.Row("zero-shot", "zero_shot"),
  sweeps.Row("FT", "full", fixed=STEPS, grid=(("optimizer.learning_rate", (1e-5, 3e-2)),)),
]


@pytest.fixture(scope="module")
def swept(tiny_roberta, tmp_path_factory):
  root = tmp_path_factory.mktemp("sweep")
  with open(os.path.join(data_dir(), "sst2", "train.tsv")) as f:
    rows = f.read().splitlines()[1:]
  folder = root / "data" / "reviews"
  folder.mkdir(parents=True)
  for split, part in (("train", rows[:200]), ("test", rows[200:260])):
    (folder / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(part) + "\n")
  cells = sweeps.cells(ROWS, ["reviews"], [13, 21], {"reviews": PROMPT})  # the task's entry: its prompts
  base = f"family=roberta,checkpoint={tiny_roberta},k=4"
  failed = sweeps.run_cells(cells, str(root / "runs"), base, str(root / "data"), jobs=1)
  return root, cells, base, failed


def test_every_cell_runs_once_and_a_second_sweep_skips_them(swept, caplog):
  root, cells, base, failed = swept
  assert failed == [] and len(cells) == 2 + 2 * 2
  assert all(sweeps.finished(c, str(root / "runs")) for c in cells)
  mtimes = [os.path.getmtime(os.path.join(c.workdir(str(root / "runs")), "metrics.jsonl")) for c in cells]
  with caplog.at_level(logging.INFO):
    assert sweeps.run_cells(cells, str(root / "runs"), base, str(root / "data")) == []
  assert "6 cells, 6 finished already, 0 to run" in caplog.text
  assert mtimes == [os.path.getmtime(os.path.join(c.workdir(str(root / "runs")), "metrics.jsonl")) for c in cells]


def test_hyperparameters_are_chosen_by_mean_dev_accuracy_and_tables_written(swept, tmp_path):
  root, cells, _, _ = swept
  records = sweeps.collect(cells, str(root / "runs"))
  chosen = sweeps.choose(records)
  mean_dev = {}
  for r in records:
    if r["row"] == "FT":
      mean_dev.setdefault(r["hparams"], []).append(r["dev"])
  best = max(mean_dev, key=lambda hp: sum(mean_dev[hp]))
  assert chosen[("FT", "reviews")][0]["hparams"] == best and len(chosen[("FT", "reviews")]) == 2
  lines = sweeps.summary(chosen, ROWS, ["reviews"], {"FT": {"reviews": 91.9}})
  tests = [100 * r["test"] for r in chosen[("FT", "reviews")]]
  assert lines[1]["reviews"]["mean"] == pytest.approx(sum(tests) / 2) and lines[1]["reviews"]["seeds"] == 2
  md = sweeps.markdown(lines, ["reviews"], "paper")
  assert md.splitlines()[2].startswith("| zero-shot | ") and "| 91.9 |" in md.splitlines()[3]
  assert (
    sweeps.csv_text(lines, ["reviews"]).splitlines()[0] == "row,reviews_mean,reviews_std,reviews_seeds,reviews_paper"
  )
  assert "FT & " in sweeps.latex(lines, ["reviews"], "caption")
  sweeps.plot(lines, chosen, ["reviews"], str(tmp_path / "table.png"), "tiny")
  assert os.path.getsize(tmp_path / "table.png") > 10_000


def test_the_mezo_k16_grid_names_every_row_of_the_issue_with_the_paper_beside_it():
  names = [r.name for r in grid.ROWS]
  assert names == [
    "zero-shot",
    "LP",
    "FT",
    "FT (LoRA)",
    "FT (sparse)",
    "FT (spiel)",
    "MeZO",
    "MeZO (LoRA)",
    "MeZO (prefix)",
  ]
  assert grid.SEEDS == (13, 21, 42, 87, 100) and grid.TASKS == ("sst2", "trec") and grid.K == 16
  config = sweeps.Cell(grid.ROWS[7], "trec", 13, grid.ROWS[7].settings()[0]).config(f"k={grid.K}", data_dir())
  assert (config.method, config.zo.base, config.train.steps, config.data.task) == ("zo", "lora", grid.ZO_STEPS, "trec")
  assert set(grid.PAPER) <= set(names) and config.zo.noise == "rademacher"
  every = sweeps.cells(grid.ROWS, grid.TASKS, grid.SEEDS, grid.TASK_SETTINGS)
  assert len(every) == 70 + 2 * 2 * 5 * 2  # the LoRA and prefix rows: two rates each
  lengths = {c.task: c.config(f"k={grid.K}", data_dir()).data.max_length for c in every if c.row.name == "MeZO"}
  assert lengths == {"sst2": 56, "trec": 32}


def test_the_cpu_zeroth_order_rows_carry_the_papers_eps_and_weight_decay_in_new_workdirs():
  """MeZO eps 1e-3 without decay (its cells stand); LoRA eps 1e-3, decay 0.1; prefix eps 1e-1. The LoRA
  and prefix cells' workdirs name eps and decay, so the earlier cells at eps 1e-3 without decay (in
  .../learning_rate=0.001/) do not count as finished cells of this grid."""
  rows = {r.name: r for r in grid.ROWS}
  expected = {
    "MeZO": (1e-3, 0.0, [1e-5]),
    "MeZO (LoRA)": (1e-3, 0.1, [1e-4, 1e-3]),
    "MeZO (prefix)": (1e-1, 0.0, [1e-2, 1e-1]),
  }
  for name, (eps, decay, rates) in expected.items():
    configs = [
      sweeps.Cell(rows[name], "sst2", 13, hp).config(f"k={grid.K}", data_dir()) for hp in rows[name].settings()
    ]
    assert [(c.zo.eps, c.optimizer.weight_decay) for c in configs] == [(eps, decay)] * len(rates)
    assert [c.optimizer.learning_rate for c in configs] == rates
  lora = sweeps.Cell(rows["MeZO (LoRA)"], "sst2", 13, rows["MeZO (LoRA)"].settings()[1])
  assert lora.workdir("R") == "R/sst2/mezo_lora/eps=0.001_weight_decay=0.1_learning_rate=0.001/seed13"
  assert (
    sweeps.Cell(rows["MeZO"], "sst2", 13, rows["MeZO"].settings()[0]).workdir("R")
    == "R/sst2/mezo/learning_rate=1e-05/seed13"
  )  # unchanged: the cells run before stand
  config = lora.config(f"k={grid.K}", data_dir())
  assert (config.lora.rank, config.lora.alpha, config.lora.targets) == (8, 16.0, "query|value")


def test_aggregating_only_some_rows_keeps_the_other_rows_of_the_table(swept, tmp_path):
  """`aggregate --only=FT`: FT's line from the cells under a root that holds only FT's cells, the other
  rows' lines from the table already there: its table.json, or table.csv and table.md (tables written
  before table.json)."""
  root, _, _, _ = swept
  tiny = types.SimpleNamespace(
    ROWS=ROWS,
    TASKS=("reviews",),
    SEEDS=(13, 21),
    TASK_SETTINGS={"reviews": PROMPT},
    PAPER={},
    CAPTION="tiny",
    NAME="tiny",
  )
  out = str(tmp_path / "results")
  full = sweeps.write_tables(tiny, str(root / "runs"), out)
  table = open(os.path.join(out, "table.md")).read()
  shutil.copytree(root / "runs" / "reviews" / "ft", tmp_path / "rerun" / "reviews" / "ft")  # FT's cells only
  for legacy in (False, True):
    if legacy:
      os.remove(os.path.join(out, "table.json"))
    merged = sweeps.write_tables(tiny, str(tmp_path / "rerun"), out, only=["FT"])
    assert open(os.path.join(out, "table.md")).read() == table
    assert [l["reviews"]["mean"] for l in merged] == pytest.approx([l["reviews"]["mean"] for l in full], abs=0.01)
  assert sweeps.write_tables(tiny, str(tmp_path / "rerun"), out)[0]["reviews"]["seeds"] == 0  # without --only


@pytest.mark.slow  # 29 s here; make test validates every row's config (test_the_mezo_k16_grid_names_every_row...)
def test_every_row_of_the_roberta_large_grid_runs_on_a_tiny_roberta(tiny_roberta, tmp_path):
  """The full-scale grid's smoke run: one cell per row (its first setting), two steps, through the sweep
  (sign noise for the zeroth-order rows: gaussian compiles 4x slower here and shards the same)."""
  from experiments.mezo_k16_roberta_large import grid as large

  smoke = (
    ("train.steps", 2),
    ("train.batch_size", 4),
    ("train.eval_every", 2),
    ("train.checkpoint_every", 2),
    ("data.num_test", 40),
    ("zo.noise", "rademacher"),
  )
  rows = [dataclasses.replace(r, fixed=r.fixed + smoke) for r in large.ROWS]
  cells = [sweeps.Cell(r, "sst2", 13, r.settings()[0]) for r in rows]
  assert sweeps.run_cells(cells, str(tmp_path), f"family=roberta,checkpoint={tiny_roberta},k=16", data_dir()) == []
  records = sweeps.collect(cells, str(tmp_path))
  assert [r["row"] for r in records] == [r.name for r in large.ROWS]
  assert [r["steps"] for r in records] == [0, 0, 2, 2, 2, 2]
  assert records[2]["hparams"] == (("optimizer.learning_rate", 1e-7),)
  assert large.TASKS == ("sst2", "sst5", "snli", "mnli", "rte", "trec")
  assert len(sweeps.cells(large.ROWS, large.TASKS, large.SEEDS)) == 6 * 5 * (1 + 1 + 3 + 3 + 3 + 9)


@pytest.fixture(scope="module")
def opt13b_table(tmp_path_factory):
  """(data dir with hand-written rows of all 11 tasks in their real formats, a tiny random OPT on them)."""
  from fttpu.models import tiny
  from tests.table_rows import write_task_folders

  root = tmp_path_factory.mktemp("opt13b")
  texts = write_task_folders(str(root / "data"))
  return str(root / "data"), tiny.build("opt", str(root / "tiny-opt"), texts * 20)


def opt13b_smoke_cells(rows, tasks) -> list:
  """The OPT-13B grid's cells (each row's first setting) for `rows` x `tasks`, scaled to two steps on the
  hand-written rows (ICL: 2 demonstrations), sign noise for the zeroth-order rows."""
  from experiments.mezo_opt13b import grid as opt13b

  smoke = (
    ("train.steps", 2),
    ("train.batch_size", 4),
    ("train.eval_batch_size", 4),
    ("train.eval_every", 2),
    ("train.checkpoint_every", 2),
    ("data.num_train", 8),
    ("data.num_dev", 4),
    ("data.num_test", 4),
    ("data.max_length", 96),
    ("data.max_new_tokens", 8),
    ("zo.noise", "rademacher"),
  )
  icl = lambda r: (("data.demonstrations", 2),) if dict(r.fixed).get("data.demonstrations") else ()
  rows = [dataclasses.replace(r, fixed=r.fixed + smoke + icl(r)) for r in rows]
  return [
    sweeps.Cell(r, task, 0, r.settings()[0], opt13b.TASK_SETTINGS[task])
    for task in tasks
    for r in rows
    if task not in r.skip
  ]


def run_opt13b_smoke(cells, table, root) -> list[dict]:
  """Runs the cells through the sweep on the tiny OPT: none fails, each trained row ran its two steps, and
  every cell's test line has the task's score (accuracy, or F1 for SQuAD and DROP) in [0, 1]."""
  data, checkpoint = table
  assert sweeps.run_cells(cells, root, f"family=opt,checkpoint={checkpoint}", data) == []
  records = sweeps.collect(cells, root)
  assert [(r["row"], r["task"]) for r in records] == [(c.row.name, c.task) for c in cells]
  for cell, record in zip(cells, records):
    assert record["steps"] == (0 if cell.row.method in ("zero_shot", "head") else 2), record
    assert 0.0 <= record["test"] <= 1.0
    final = metrics.read_metrics(cell.workdir(root))[-1]
    assert ("eval/f1" in final) == (cell.task in ("squad", "drop")), final
  return records


def test_every_row_of_the_opt13b_grid_and_its_row_tasks_run_on_a_tiny_opt(opt13b_table, tmp_path):
  """Two steps on a tiny random OPT through the sweep: every row of the OPT-13B grid (its first setting) on
  COPA (multiple choice, LP included) and MeZO (LoRA) training on ReCoRD, SQuAD and DROP: every row, and
  the tasks whose rows are not one sentence and a label, run (the seven classification tasks and all 75
  cells behind the slow marker)."""
  from experiments.mezo_opt13b import grid as opt13b

  lora = [r for r in opt13b.ROWS if r.name == "MeZO (LoRA)"]
  cells = opt13b_smoke_cells(opt13b.ROWS, ["copa"]) + opt13b_smoke_cells(lora, ["record", "squad", "drop"])
  records = run_opt13b_smoke(cells, opt13b_table, str(tmp_path))
  assert [r["row"] for r in records[:7]] == [r.name for r in opt13b.ROWS]
  assert {r["task"] for r in records} == {"copa", "record", "squad", "drop"}


@pytest.mark.slow
def test_every_cell_of_the_opt13b_grid_runs_on_a_tiny_opt(opt13b_table, tmp_path):
  """All 75 cells (7 rows x 11 tasks, LP without SQuAD and DROP), two steps each: 4:40 here (2026-12-07)."""
  from experiments.mezo_opt13b import grid as opt13b

  cells = opt13b_smoke_cells(opt13b.ROWS, opt13b.TASKS)
  assert len(cells) == 7 * 11 - 2
  run_opt13b_smoke(cells, opt13b_table, str(tmp_path))


def test_the_opt13b_grid_has_every_row_and_column_of_the_paper_with_its_numbers(opt13b_table):
  """11 columns, 7 rows; every cell's config valid (validation only); the settings of the MeZO, FT and ICL
  rows and of the tasks with their own splits; the paper's zero-shot, MeZO and FT numbers beside them."""
  from experiments.mezo_opt13b import grid as opt13b
  from fttpu import trainer

  assert opt13b.TASKS == ("sst2", "rte", "cb", "boolq", "wsc", "wic", "multirc", "copa", "record", "squad", "drop")
  names = [r.name for r in opt13b.ROWS]
  assert names == ["zero-shot", "ICL", "LP", "MeZO", "MeZO (LoRA)", "MeZO (prefix)", "FT"]
  full = sweeps.cells(opt13b.ROWS, opt13b.TASKS, opt13b.SEEDS, opt13b.TASK_SETTINGS)
  per_row = {name: sum(c.row.name == name for c in full) for name in names}
  assert per_row == {"zero-shot": 11, "ICL": 11, "LP": 9, "MeZO": 22, "MeZO (LoRA)": 22, "MeZO (prefix)": 22, "FT": 33}
  base = opt13b.BASE.replace("/path/to/opt-13b", opt13b_table[1])
  configs = {(c.row.name, c.task, c.hparams): c.config(base, opt13b_table[0]) for c in full}
  for config in configs.values():
    trainer.validate(config)
  mezo = configs[("MeZO", "sst2", (("optimizer.learning_rate", 1e-6),))]
  assert (mezo.zo.eps, mezo.model.param_dtype, mezo.model.compute_dtype, mezo.mesh.fsdp) == (
    1e-3,
    "float16",
    "float16",
    -1,
  )
  ft = configs[("FT", "drop", (("optimizer.learning_rate", 1e-5),))]
  assert (ft.model.param_dtype, ft.model.compute_dtype, ft.optimizer.weight_decay, ft.train.remat) == (
    "float32",
    "bfloat16",
    0.0,
    "full",  # what fits the FT row in a v4 chip (experiments/mezo_opt13b/README.md)
  )
  assert (ft.data.max_length, ft.train.best_metric, ft.data.max_new_tokens) == (1536, "f1", 50)
  icl = configs[("ICL", "copa", ())]
  assert (icl.method, icl.data.demonstrations, icl.data.max_length) == ("zero_shot", 32, 2048)
  eps = [configs[(n, "rte", opt13b.ROWS[names.index(n)].settings()[0])].zo.eps for n in names[3:6]]
  assert eps == [1e-3, 1e-2, 1e-1]
  sizes = lambda task: (lambda c: (c.data.num_train, c.data.num_dev, c.data.num_test))(configs[("zero-shot", task, ())])
  assert (sizes("cb"), sizes("copa"), sizes("squad")) == ((150, 100, 1000), (300, 100, 1000), (1000, 500, 1000))
  assert opt13b.PAPER["MeZO"]["squad"] == 84.7 and opt13b.PAPER["FT"]["copa"] == 79.0
  assert opt13b.PAPER["zero-shot"]["drop"] == 14.6 and all(len(opt13b.PAPER[r]) == 11 for r in opt13b.PAPER)


def test_a_tpu_vm_runs_one_cell_at_a_time():
  """Only one process may own a TPU VM's chips: --jobs=2 there is refused before any cell starts."""
  from fttpu.errors import ConfigError

  sweeps.check_jobs(2, on_tpu=False)
  sweeps.check_jobs(1, on_tpu=True)
  with pytest.raises(ConfigError, match="--jobs=2 on a TPU VM: only one process may own its TPU chips"):
    sweeps.check_jobs(2, on_tpu=True)
  with pytest.raises(ConfigError, match="--jobs=0: give 1 or more"):
    sweeps.check_jobs(0, on_tpu=False)
