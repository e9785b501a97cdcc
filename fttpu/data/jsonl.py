"""Strict reader for a row task's JSONL files: one JSON object per line, in the task's own field names.

Fields not named by the task are ignored (an export's ids, answer offsets). A list of texts may also be
given as the object Hugging Face's exports write for it: SQuAD's {"text": [...], "answer_start": [...]}
or DROP's {"spans": [...], "types": [...]}. Every malformed line fails with path:line and what was expected.
"""

import json

from fttpu import files
from fttpu.data.rows import LABEL, TEXT, TEXTS, Column, Row
from fttpu.errors import DataError

NESTED_TEXTS = ("text", "spans")  # the list of texts inside Hugging Face's answer objects


def _texts(value):
  """A list of strings as a tuple, from a list or an answer object; None when it is neither."""
  if isinstance(value, dict):
    value = next((value[key] for key in NESTED_TEXTS if key in value), None)
  if isinstance(value, list) and all(isinstance(v, str) for v in value):
    return tuple(value)
  return None


def _value(column: Column, raw):
  """The field's value as the row holds it, or None when `raw` is not of the column's kind."""
  if column.kind == TEXT:
    return raw if isinstance(raw, str) else None
  if column.kind == TEXTS:
    return _texts(raw)
  if column.kind == LABEL:
    return raw if isinstance(raw, int) and not isinstance(raw, bool) else None
  raise ValueError(f"unknown column kind {column.kind!r}")


_EXPECTED = {
  TEXT: "a string",
  TEXTS: 'a list of strings (or an object with one under "text" or "spans")',
  LABEL: "an integer",
}


def describe(columns: tuple[Column, ...]) -> str:
  """The fields a row needs, for error messages: 'premise (a string), label (an integer), ...'."""
  return ", ".join(f"{c.name!r} ({_EXPECTED[c.kind]})" for c in columns)


def _fields(record: dict, columns: tuple[Column, ...], where: str) -> dict:
  """The row's fields from one parsed line; a DataError names the first missing or mistyped one."""
  fields = {}
  for column in columns:
    name = next((n for n in (column.name, *column.aliases) if n in record), None)
    if name is None:
      raise DataError(f"{where}: missing field {column.name!r}; each line needs {describe(columns)}")
    value = _value(column, record[name])
    if value is None:
      raise DataError(f"{where}: field {name!r} must be {_EXPECTED[column.kind]}, got {record[name]!r:.80}")
    fields[column.name] = value
  return fields


def _parse(raw: bytes, where: str, columns: tuple[Column, ...]) -> dict:
  """One line's JSON object; a DataError for bytes that are not UTF-8 JSON of an object."""
  try:
    record = json.loads(raw.decode("utf-8"))
  except UnicodeDecodeError as e:
    raise DataError(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
  except json.JSONDecodeError as e:
    raise DataError(
      f"{where}: not valid JSON ({e.msg} at column {e.colno}); each line is one object with {describe(columns)}"
    ) from None
  if not isinstance(record, dict):
    raise DataError(f"{where}: expected a JSON object with {describe(columns)}, got {type(record).__name__}")
  return record


def read_jsonl(path: str, columns: tuple[Column, ...]) -> list[Row]:
  """The rows of `path` (blank lines skipped), each with its `columns` and its origin path:line."""
  try:
    lines = files.read_bytes(path).splitlines()
  except FileNotFoundError:
    raise DataError(f"{path}: file not found") from None
  rows = []
  for number, raw in enumerate(lines, start=1):
    if raw.strip():
      where = f"{path}:{number}"
      rows.append(Row(_fields(_parse(raw, where, columns), columns, where), where))
  if not rows:
    raise DataError(f"{path}: no rows; expected one JSON object per line with {describe(columns)}")
  return rows
