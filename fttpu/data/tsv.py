"""Strict reader for the task files: `sentence<TAB>label`, or `sentence1<TAB>sentence2<TAB>label` for pairs."""
from typing import Optional

import numpy as np

HEADER = "sentence\tlabel"
PAIR_HEADER = "sentence1\tsentence2\tlabel"
# The text columns of each accepted header.
HEADERS = {HEADER: ("sentence",), PAIR_HEADER: ("sentence1", "sentence2")}


class DataError(ValueError):
  """A data file that does not follow the task format; the message names file and line."""


def header_fields(path: str) -> Optional[tuple[str, ...]]:
  """The text columns named by the header of `path`; None when it is missing or not a known header."""
  try:
    with open(path, "rb") as f:
      first = f.readline().decode("utf-8", errors="replace").strip()
  except OSError:
    return None
  return HEADERS.get(first)


def read_tsv(path: str, num_classes: int,
             text_fields: Optional[tuple[str, ...]] = None) -> tuple[list[tuple[str, ...]], np.ndarray]:
  """Returns (rows, labels), a row being the tuple of its texts; every malformed row fails with path:line.

  The header must name `text_fields` when given, else either accepted header.
  """
  expected = [h for h, fields in HEADERS.items() if text_fields is None or fields == tuple(text_fields)]
  if not expected:
    raise ValueError(f"text fields {text_fields} have no TSV header; known: {list(HEADERS.values())}")
  try:
    with open(path, "rb") as f:
      raw_lines = f.read().splitlines()
  except FileNotFoundError:
    raise DataError(f"{path}: file not found (a task directory needs train.tsv and test.tsv)") from None
  if not raw_lines:
    raise DataError(f"{path}: empty file; expected a header line {' or '.join(map(repr, expected))} and rows")
  rows, labels, fields = [], [], None
  for number, raw in enumerate(raw_lines, start=1):
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise DataError(f"{path}:{number}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if number == 1:
      if line.strip() not in expected:
        raise DataError(f"{path}:1: expected the header {' or '.join(map(repr, expected))}, got {line[:80]!r}")
      fields = HEADERS[line.strip()]
      continue
    if not line.strip():
      continue
    columns = line.split("\t")
    if len(columns) != len(fields) + 1:
      raise DataError(f"{path}:{number}: expected {len(fields) + 1} tab-separated columns "
                      f"({', '.join(fields + ('label',))}), got {len(columns)}")
    *texts, label = columns
    if not label.strip().lstrip("-").isdigit() or not 0 <= int(label) < num_classes:
      raise DataError(f"{path}:{number}: label {label!r} is not an integer in 0..{num_classes - 1}")
    rows.append(tuple(texts))
    labels.append(int(label))
  if not rows:
    raise DataError(f"{path}: no rows after the header")
  return rows, np.asarray(labels, np.int32)
