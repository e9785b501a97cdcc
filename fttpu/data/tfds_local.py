"""Task splits through tensorflow-datasets: a builder for local TSV directories, else the catalog.

Splits are (rows, labels), a row being the tuple of an example's texts (task.text_fields).

The local builder prepares ArrayRecord files once per content fingerprint of the TSVs (so an
edited file is re-prepared) and is read back with `as_data_source`, which needs no TensorFlow.
"""

import contextlib
import fcntl
import functools
import hashlib
import importlib
import json
import os
import re
import socket
import sys
import urllib.parse
from typing import Optional

import numpy as np
import tensorflow_datasets as tfds

from fttpu import errors
from fttpu import files
from fttpu.data import tsv
from fttpu.data.tasks import Task, task_dir

SPLITS = ("train", "test")


class LocalTsv(tfds.core.GeneratorBasedBuilder):
  """A task directory as a TFDS dataset (one BuilderConfig per task + content); a feature per text field."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, source_dir: str, label_names, text_fields=("sentence",), **kwargs):
    self._source_dir = source_dir
    self._label_names = list(label_names)
    self._text_fields = tuple(text_fields)
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      description=f"Sentence classification from {self._source_dir}",
      features=tfds.features.FeaturesDict(
        {
          "index": tfds.features.Scalar(np.int64, doc="row number in the TSV (0 = first data row)"),
          **{field: tfds.features.Text() for field in self._text_fields},
          "label": tfds.features.ClassLabel(names=self._label_names),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(os.path.join(self._source_dir, f"{split}.tsv")) for split in SPLITS}

  def _generate_examples(self, path):
    rows, labels = tsv.read_tsv(path, len(self._label_names), self._text_fields)
    for index, (row, label) in enumerate(zip(rows, labels)):
      yield index, {"index": index, **dict(zip(self._text_fields, row)), "label": int(label)}


def _fingerprint(source_dir: str, label_names) -> str:
  """Content of the TSVs and the label set: either changing means preparing again."""
  digest = hashlib.sha1(repr(list(label_names)).encode())
  for split in SPLITS:
    path = os.path.join(source_dir, f"{split}.tsv")
    if not files.isfile(path):
      raise errors.DataError(
        f"{path}: file not found (a task directory needs {' and '.join(s + '.tsv' for s in SPLITS)})"
      )
    digest.update(files.read_bytes(path))
  return digest.hexdigest()[:12]


def _text(value) -> str:
  """A TFDS text (bytes) as str."""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


_NESTED_INDEX = ("paragraph", "passage", "question", "query", "answer")  # outermost first


def _position(index) -> tuple[int, ...]:
  """A row's place in its file: an int, or SuperGLUE MultiRC's {"paragraph", "question", "answer"} numbers."""
  if isinstance(index, dict):
    return tuple(int(index[name]) for name in _NESTED_INDEX if name in index)
  return (int(index),)


def in_file_order(examples: list[dict]) -> list[dict]:
  """Examples sorted by their place in the source (TFDS shuffles on prepare): our `index`, GLUE's and
  SuperGLUE's `idx`, else by SQuAD's `id` or DROP's `query_id` (a fixed order, if not the file's)."""
  key = next((k for k in ("index", "idx", "id", "query_id") if examples and k in examples[0]), None)
  if key in ("index", "idx"):
    return sorted(examples, key=lambda r: _position(r[key]))
  return sorted(examples, key=lambda r: _text(r[key])) if key else list(examples)


@functools.lru_cache(maxsize=8)
def _read_all(builder_dir: str, split: str, fields: tuple) -> tuple[tuple[tuple[str, ...], ...], np.ndarray]:
  """All labelled rows of a prepared split in file order, kept for the next read in this process
  (callers get a copy) and, decoded, beside the prepared files for the next process.

  `fields` are the feature names of the texts. TFDS decodes examples one by one in Python (SST-2's 67k
  rows: 2.3 s, MNLI's 393k: 13 s), and every run of a sweep, a resumed run or a multi-host peer would
  pay it again; the decoded copy reads in a tenth of that. A directory prepared from other content has
  another name (its fingerprint), so neither copy can be stale.
  """
  stored = files.join(builder_dir, f"fttpu-decoded-{split}-{'-'.join(fields)}.json")
  with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # none yet, or damaged: decode again
    decoded = json.loads(files.read_text(stored))
    return tuple(map(tuple, decoded["rows"])), np.asarray(decoded["labels"], np.int32)
  rows, labels = _decode(builder_dir, split, fields)
  with contextlib.suppress(OSError):  # a read-only cache directory: the next process decodes too
    files.write_atomic(stored, json.dumps({"rows": rows, "labels": labels.tolist()}))
  return rows, labels


def _decode(builder_dir: str, split: str, fields: tuple) -> tuple[tuple[tuple[str, ...], ...], np.ndarray]:
  """The split through TFDS, in file order (in_file_order); rows with label -1 (SNLI's no gold label) are dropped."""
  rows = [r for r in in_file_order(read_examples(builder_dir, split)) if int(r["label"]) >= 0]
  labels = np.asarray([r["label"] for r in rows], np.int32)
  return tuple(tuple(_text(r[f]) for f in fields) for r in rows), labels


def _copy(split: tuple) -> tuple[list[tuple[str, ...]], np.ndarray]:
  """A split the caller may change without changing what the next read returns."""
  rows, labels = split
  return list(rows), labels.copy()


def _check_reachable(builder) -> None:
  """Fails in a second, not after minutes of download retries, when the source host is unknown."""
  url = getattr(builder.builder_config, "data_url", "") or getattr(
    sys.modules.get(type(builder).__module__), "_DATA_URL", ""
  )  # SNLI has no builder config
  host = urllib.parse.urlparse(url or "").hostname
  if host and not builder.is_prepared():
    socket.getaddrinfo(host, 443)  # socket.gaierror offline


@contextlib.contextmanager
def _one_preparer(cache_dir: str, name: str):
  """Holds an exclusive lock on CACHE_DIR/<name>.lock: processes preparing the same dataset at once (a
  sweep's workers) take turns, and the later ones find it prepared instead of racing TFDS's final rename."""
  os.makedirs(cache_dir, exist_ok=True)
  with open(os.path.join(cache_dir, f"{name.replace('/', '_')}.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    yield


def prepare_catalog(name: str, module: Optional[str], cache_dir: str) -> str:
  """The directory of the TFDS catalog dataset `name` (registered by importing `module`), downloaded and
  prepared under `cache_dir` the first time (processes preparing it at once take turns)."""
  if module:
    importlib.import_module(module)
  with _one_preparer(cache_dir, name):
    builder = tfds.builder(name, data_dir=cache_dir, file_format="array_record")
    _check_reachable(builder)
    builder.download_and_prepare()
  return os.fspath(builder.data_dir)


def read_examples(builder_dir: str, split: str) -> list[dict]:
  """Every example of a prepared split as TFDS decodes it (texts as bytes, sequences as lists), in the
  order of its files."""
  source = tfds.builder_from_directory(builder_dir).as_data_source(split=split)
  return source.__getitems__(range(len(source)))


def load_splits(task: Task, data_dir: str, cache_dir: str) -> dict[str, tuple[list[tuple[str, ...]], np.ndarray]]:
  """{'train': (rows, labels), 'test': ...} from DATA_DIR/<task> or, failing that, the TFDS catalog."""
  cache_dir = os.path.expanduser(cache_dir)
  directory = task_dir(task.name, data_dir)
  if directory:
    name = re.sub(r"[^a-z0-9_]", "_", os.path.basename(os.path.normpath(task.name)).lower())
    config = tfds.core.BuilderConfig(name=f"{name}_{_fingerprint(directory, task.label_names)}")
    with _one_preparer(cache_dir, config.name):  # the builder reads the dataset's info when made: inside too
      builder = LocalTsv(
        source_dir=directory,
        label_names=task.label_names,
        text_fields=task.text_fields,
        data_dir=cache_dir,
        config=config,
        file_format="array_record",
      )
      builder.download_and_prepare()
    return {split: _copy(_read_all(os.fspath(builder.data_dir), split, tuple(task.text_fields))) for split in SPLITS}
  if task.tfds_name:
    try:
      builder_dir = prepare_catalog(task.tfds_name, task.tfds_module, cache_dir)
      fields = tuple(task.tfds_fields or task.text_fields)
      splits = {ours: _read_all(builder_dir, theirs, fields) for ours, theirs in task.tfds_splits}
    except Exception as e:  # offline, or TFDS cannot build it here
      reason = str(e).splitlines()[0][:200] if str(e) else ""
      raise FileNotFoundError(
        f"task {task.name!r}: no local copy at {os.path.join(data_dir, task.name)}, and the TFDS dataset {task.tfds_name!r} could not be "
        f"loaded ({type(e).__name__}: {reason}). Point fttpu at the data: --config.data.dir=DIR "
        f"(or `make demo DATA_DIR=DIR`) where DIR/{task.name}/train.tsv and test.tsv exist."
      ) from e
    return {ours: _copy(split) for ours, split in splits.items()}
  raise FileNotFoundError(
    f"task {task.name!r} has no TFDS catalog entry and no directory "
    f"{os.path.join(data_dir, task.name)} with train.tsv and test.tsv; "
    f"set --config.data.dir=DIR (or `make demo DATA_DIR=DIR`) to the folder that holds {task.name}/"
  )
