"""Strict reader for the task files: `sentence<TAB>label`, `sentence1<TAB>sentence2<TAB>label` for pairs,
or `sentence<TAB>choice1<TAB>...<TAB>choiceN<TAB>label` for multiple choice (the label picks a choice)."""

from typing import Optional

import numpy as np

from fttpu import files
from fttpu.errors import DataError

HEADER = "sentence\tlabel"
PAIR_HEADER = "sentence1\tsentence2\tlabel"
# The text columns of each accepted header.
HEADERS = {HEADER: ("sentence",), PAIR_HEADER: ("sentence1", "sentence2")}


def choice_header(choices: int) -> str:
  return "\t".join(["sentence"] + [f"choice{i}" for i in range(1, choices + 1)] + ["label"])


def parse_header(line: str) -> Optional[tuple[str, ...]]:
  """The text columns of an accepted header line, else None."""
  line = line.strip()
  if line in HEADERS:
    return HEADERS[line]
  columns = tuple(line.split("\t"))
  if len(columns) >= 4 and line == choice_header(len(columns) - 2):
    return columns[:-1]
  return None


def header_fields(path: str) -> Optional[tuple[str, ...]]:
  """The text columns named by the header of `path`; None when it is missing or not a known header."""
  try:
    first = files.read_bytes(path).split(b"\n", 1)[0].decode("utf-8", errors="replace")
  except OSError:
    return None
  return parse_header(first)


def read_tsv(
  path: str, num_classes: int, text_fields: Optional[tuple[str, ...]] = None
) -> tuple[list[tuple[str, ...]], np.ndarray]:
  """Returns (rows, labels), a row being the tuple of its texts; every malformed row fails with path:line.

  The header must name `text_fields` when given (a registered task's own columns, e.g. SuperGLUE BoolQ's
  `passage<TAB>question<TAB>label`), else be an accepted header.
  """
  rows, labels, _ = read_numbered_tsv(path, num_classes, text_fields)
  return rows, labels


def read_numbered_tsv(
  path: str, num_classes: int, text_fields: Optional[tuple[str, ...]] = None
) -> tuple[list[tuple[str, ...]], np.ndarray, list[int]]:
  """read_tsv's (rows, labels) and the line number of each row in the file (the header is line 1)."""
  if text_fields is None:
    expected = [*HEADERS, choice_header(2).replace("choice2", "choice2[<TAB>choice3...]")]
  else:
    expected = ["\t".join(text_fields) + "\tlabel"]
  try:
    raw_lines = files.read_bytes(path).splitlines()
  except FileNotFoundError:
    raise DataError(f"{path}: file not found (a task directory needs train.tsv and test.tsv)") from None
  if not raw_lines:
    raise DataError(f"{path}: empty file; expected a header line {' or '.join(map(repr, expected))} and rows")
  rows, labels, numbers, fields = [], [], [], None
  for number, raw in enumerate(raw_lines, start=1):
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise DataError(f"{path}:{number}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if number == 1:
      fields = (
        parse_header(line) if text_fields is None else (tuple(text_fields) if line.strip() == expected[0] else None)
      )
      if fields is None:
        raise DataError(f"{path}:1: expected the header {' or '.join(map(repr, expected))}, got {line[:80]!r}")
      continue
    if not line.strip():
      continue
    columns = line.split("\t")
    if len(columns) != len(fields) + 1:
      raise DataError(
        f"{path}:{number}: expected {len(fields) + 1} tab-separated columns "
        f"({', '.join(fields + ('label',))}), got {len(columns)}"
      )
    *texts, label = columns
    if not label.strip().lstrip("-").isdigit() or not 0 <= int(label) < num_classes:
      raise DataError(
        f"{path}:{number}: label {label!r} is not an integer in 0..{num_classes - 1} (the task has "
        f"{num_classes} classes, one per label word or description; give one per class)"
      )
    rows.append(tuple(texts))
    labels.append(int(label))
    numbers.append(number)
  if not rows:
    raise DataError(f"{path}: no rows after the header")
  return rows, np.asarray(labels, np.int32), numbers
