"""The row tasks by name (COPA, ReCoRD, SQuAD, DROP), their splits and MeZO's row sampling.

A task's rows come from DATA_DIR/<task>/train.jsonl and test.jsonl (COPA: or train.tsv and test.tsv with
the header premise<TAB>choice1<TAB>choice2<TAB>question<TAB>label), read directly: JSON lines need no
TFDS preparation to be read fast. Without the folder they come from the TFDS catalog (super_glue/copa,
super_glue/record, squad/v1.1, drop), tested on its validation split as MeZO does. TFDS builds squad
without TensorFlow; super_glue and drop download zip files, which TFDS extracts with tf.io.gfile, so
those need `pip install tensorflow` on the machine that prepares them.
"""

import importlib.util
import os

import numpy as np

from fttpu import files
from fttpu.data import fewshot, jsonl, tfds_local, tsv
from fttpu.data.choice_tasks import COPA, RECORD
from fttpu.data.qa_tasks import DROP, SQUAD
from fttpu.data.rows import LABEL, TEXT, Row, RowTask, check_rows
from fttpu.data.tasks import task_dir
from fttpu.errors import DataError

ROW_TASKS = {task.name: task for task in (COPA, RECORD, SQUAD, DROP)}
SPLITS = ("train", "test")
# MeZO's large-model protocol per task (mezo.sh, run.py): training rows, dev rows (drawn from the train
# split, dev last), test rows (from the validation split). COPA has 400 training rows: MeZO asks for
# 1000 + 100 dev and gets all 400, the last 100 of its shuffle for dev.
MEZO_ROWS = {
  "copa": (300, 100, 1000),
  "record": (1000, 500, 1000),
  "squad": (1000, 500, 1000),
  "drop": (1000, 500, 1000),
}


def _expected_files(task: RowTask, split: str) -> str:
  return " or ".join(f"{split}.{fmt}" for fmt in task.file_formats)


def _read_tsv(task: RowTask, path: str) -> list[Row]:
  """A TSV in the task's own columns (texts, then the label last), each row with its path:line."""
  texts = tuple(c.name for c in task.columns if c.kind == TEXT)
  label = next(c.name for c in task.columns if c.kind == LABEL)
  rows, labels, numbers = tsv.read_numbered_tsv(path, 2, texts)
  return [
    Row({**dict(zip(texts, row)), label: int(value)}, f"{path}:{number}")
    for row, value, number in zip(rows, labels, numbers)
  ]


def read_local(task: RowTask, directory: str, split: str) -> list[Row]:
  """The rows of `split` in `directory`: <split>.jsonl, or <split>.tsv where the task reads TSV."""
  for fmt in task.file_formats:
    path = files.join(directory, f"{split}.{fmt}")
    if files.isfile(path):
      return check_rows(task, jsonl.read_jsonl(path, task.columns) if fmt == "jsonl" else _read_tsv(task, path))
  raise DataError(
    f"{directory}: no {_expected_files(task, split)}; task {task.name!r} reads "
    f"{' and '.join(_expected_files(task, s) for s in SPLITS)}, one row per line with {jsonl.describe(task.columns)}"
  )


def _decoded(value):
  """A TFDS example's value with texts as str, sequences as tuples and numbers as int."""
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, dict):
    return {k: _decoded(v) for k, v in value.items()}
  if isinstance(value, (list, tuple, np.ndarray)):
    return tuple(_decoded(v) for v in value)
  return int(value) if isinstance(value, (np.integer, int)) else value


def catalog_rows(task: RowTask, builder_dir: str, split: str) -> list[Row]:
  """The rows of a prepared catalog split, in file order. Rows without any gold are left out (TFDS's drop
  writes "" for a date answer without a day, as Hugging Face's leaves out 10 rows it cannot read)."""
  examples = tfds_local.in_file_order(tfds_local.read_examples(builder_dir, split))
  rows = [
    Row(task.catalog.fields(_decoded(e)), f"TFDS {task.catalog.name} split {split!r}, row {i}")
    for i, e in enumerate(examples)
  ]
  return check_rows(task, [row for row in rows if task.golds(row.fields)])


def tensorflow_installed() -> bool:
  return importlib.util.find_spec("tensorflow") is not None


def _catalog_failure(task: RowTask, data_dir: str, error: Exception) -> FileNotFoundError:
  """Why neither a local copy nor the catalog gave the task's rows, and how to point fttpu at them."""
  reason = str(error).splitlines()[0][:200] if str(error) else ""
  needs_tf = task.catalog.needs_tensorflow and not tensorflow_installed()
  hint = f"; TFDS builds {task.catalog.name} only with TensorFlow (pip install tensorflow)" if needs_tf else ""
  return FileNotFoundError(
    f"task {task.name!r}: no local copy at {os.path.join(data_dir, task.name)}, and the TFDS dataset "
    f"{task.catalog.name!r} could not be loaded ({type(error).__name__}: {reason}){hint}. Point fttpu at the "
    f"data: --config.data.dir=DIR where DIR/{task.name}/ has {' and '.join(_expected_files(task, s) for s in SPLITS)}"
  )


def load_rows(task: RowTask, data_dir: str, cache_dir: str) -> dict[str, list[Row]]:
  """{'train': rows, 'test': rows} from DATA_DIR/<task> or, failing that, the TFDS catalog; every row
  checked (a DataError names the first bad one's file and line)."""
  directory = task_dir(task.name, data_dir)
  if directory:
    return {split: read_local(task, directory, split) for split in SPLITS}
  if task.catalog is None:
    raise FileNotFoundError(f"task {task.name!r}: no directory {os.path.join(data_dir, task.name)}")
  try:
    builder_dir = tfds_local.prepare_catalog(task.catalog.name, task.catalog.module, os.path.expanduser(cache_dir))
  except Exception as e:  # offline, TensorFlow missing, or TFDS cannot build it here
    raise _catalog_failure(task, data_dir, e) from e
  return {ours: catalog_rows(task, builder_dir, theirs) for ours, theirs in task.catalog.splits}


def sample_splits(rows: dict, num_train: int, num_dev: int, num_test: int, seed: int) -> dict[str, list[Row]]:
  """MeZO's large-model sample: num_train + num_dev rows of the train split by the seed (dev last),
  num_test of the test split, the same for every seed (fewshot.sample_rows, fewshot.sample_test)."""
  train, dev = fewshot.sample_rows(len(rows["train"]), num_train, num_dev, seed)
  test = fewshot.sample_test(len(rows["test"]), num_test)
  return {
    "train": [rows["train"][i] for i in train],
    "dev": [rows["train"][i] for i in dev],
    "test": [rows["test"][i] for i in test],
  }


def load_sample(data_config, seed: int) -> tuple[RowTask, dict[str, list[Row]]]:
  """The row task config.data names and its train, dev and test rows sampled with `seed`."""
  task = ROW_TASKS[data_config.task]
  rows = load_rows(task, data_config.dir, data_config.cache_dir)
  return task, sample_splits(rows, data_config.num_train, data_config.num_dev, data_config.num_test, seed)
