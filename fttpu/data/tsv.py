"""Strict reader for the `sentence<TAB>label` task files."""
import numpy as np

HEADER = "sentence\tlabel"


class DataError(ValueError):
  """A data file that does not follow the task format; the message names file and line."""


def read_tsv(path: str, num_classes: int) -> tuple[list[str], np.ndarray]:
  """Returns (sentences, labels); every malformed row fails with path:line and what was expected."""
  try:
    with open(path, "rb") as f:
      raw_lines = f.read().splitlines()
  except FileNotFoundError:
    raise DataError(f"{path}: file not found (a task directory needs train.tsv and test.tsv)") from None
  if not raw_lines:
    raise DataError(f"{path}: empty file; expected a header line {HEADER!r} and rows")
  sentences, labels = [], []
  for number, raw in enumerate(raw_lines, start=1):
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise DataError(f"{path}:{number}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if number == 1:
      if line.strip() != HEADER:
        raise DataError(f"{path}:1: expected the header {HEADER!r}, got {line[:80]!r}")
      continue
    if not line.strip():
      continue
    columns = line.split("\t")
    if len(columns) != 2:
      raise DataError(f"{path}:{number}: expected 2 tab-separated columns (sentence, label), got {len(columns)}")
    sentence, label = columns
    if not label.strip().lstrip("-").isdigit() or not 0 <= int(label) < num_classes:
      raise DataError(f"{path}:{number}: label {label!r} is not an integer in 0..{num_classes - 1}")
    sentences.append(sentence)
    labels.append(int(label))
  if not sentences:
    raise DataError(f"{path}: no rows after the header")
  return sentences, np.asarray(labels, np.int32)
