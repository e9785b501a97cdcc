"""Tasks whose rows are records rather than tuples of texts: MeZO's COPA, ReCoRD, SQuAD and DROP.

Each row is a dict in its task's own field names (texts, lists of texts, an integer label) plus where it
came from, so that a bad row is named by its file and line. A RowTask holds MeZO's template for it as
two functions, as MeZO's large_models/templates.py does (`encode`: the prompt; `verbalize`: the prompt
followed by a candidate or an answer), and says which of a row's texts are its candidates and golds
(MeZO's Sample.candidates and Sample.correct_candidate):

  multiple choice  (candidates given) each candidate is scored by its mean log-likelihood after the
                   prompt; the prediction is right when it is any gold.
  generation       (candidates None) the golds are the reference answers: the model decodes greedily
                   after the prompt and is scored by fttpu.data.qa_metrics; it trains on the first gold.
"""

import dataclasses
from typing import Callable, Mapping, Optional

from fttpu.errors import DataError

TEXT, TEXTS, LABEL = "text", "texts", "label"  # the kinds of a row's fields


@dataclasses.dataclass(frozen=True)
class Column:
  """One field of a task's rows: its name, its kind (TEXT, TEXTS or LABEL) and other names files give it."""

  name: str
  kind: str = TEXT
  aliases: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Row:
  """One example in its task's own fields (texts as str, lists of texts as tuples, a label as int)."""

  fields: Mapping
  origin: str  # "path:line", or the catalog dataset, its split and the row's place in it


@dataclasses.dataclass(frozen=True)
class Catalog:
  """A TFDS catalog dataset of a row task: its name, the module that registers it, our split -> theirs,
  and its example (texts decoded to str) -> our fields."""

  name: str
  module: str
  splits: tuple[tuple[str, str], ...]
  fields: Callable[[Mapping], dict]
  needs_tensorflow: bool  # TFDS builds it only with TensorFlow installed


@dataclasses.dataclass(frozen=True)
class RowTask:
  name: str
  columns: tuple[Column, ...]
  prompt: Callable[[Mapping], str]  # MeZO's Template.encode
  verbalize: Callable[[Mapping, str], str]  # MeZO's Template.verbalize: the prompt and then the candidate
  golds: Callable[[Mapping], tuple[str, ...]]  # the right candidates (multiple choice) or reference answers
  candidates: Optional[Callable[[Mapping], tuple[str, ...]]] = None  # multiple choice; None: generation
  problem: Callable[[Mapping], str] = lambda fields: ""  # what is wrong with a row and what is valid; "" if none
  metric: str = "accuracy"  # "accuracy" (multiple choice) or a fttpu.data.qa_metrics name
  file_formats: tuple[str, ...] = ("jsonl",)  # local files: <split>.jsonl, or <split>.tsv where listed
  catalog: Optional[Catalog] = None

  @property
  def generation(self) -> bool:
    return self.candidates is None

  @property
  def kind(self) -> str:
    return "generation" if self.generation else "multiple-choice"


def encoded_text(text: str) -> str:
  """A template's output as MeZO's encode_prompt tokenizes it without demonstrations: leading whitespace
  and trailing spaces removed (`(train_prompts + sep + prompt.strip(' ')).lstrip().strip(' ')`)."""
  return text.lstrip().rstrip(" ")


def prompt_text(task: RowTask, fields: Mapping) -> str:
  """The text a row's candidates or answer follow (and that generation decodes after)."""
  return encoded_text(task.prompt(fields))


def continued_text(task: RowTask, fields: Mapping, candidate: str) -> str:
  """The prompt followed by `candidate` (MeZO's verbalize); it starts with prompt_text."""
  text, prompt = encoded_text(task.verbalize(fields, candidate)), prompt_text(task, fields)
  if not text.startswith(prompt):
    raise AssertionError(f"task {task.name}: the verbalized text does not start with the prompt: {text[:200]!r}")
  return text


def gold_indices(task: RowTask, fields: Mapping) -> tuple[int, ...]:
  """Multiple choice: the index among the row's candidates of each distinct gold, in gold order."""
  candidates = task.candidates(fields)
  return tuple(dict.fromkeys(candidates.index(gold) for gold in task.golds(fields)))


def row_problem(task: RowTask, fields: Mapping) -> str:
  """What makes a row unusable, naming what is valid; "" when it is fine."""
  if problem := task.problem(fields):
    return problem
  golds = task.golds(fields)
  if not golds:
    return (
      "no gold answer: a generation row needs at least one reference answer"
      if task.generation
      else "no gold candidate: a multiple-choice row needs at least one right candidate"
    )
  if task.generation:
    return ""
  candidates = task.candidates(fields)
  if missing := [gold for gold in golds if gold not in candidates]:
    return f"gold {missing[0]!r} is not among the row's candidates {list(candidates)}; each gold must be one of them"
  return ""


def check_rows(task: RowTask, rows: list[Row]) -> list[Row]:
  """`rows`, unless one is unusable: then a DataError naming its origin, what is wrong and what is valid."""
  for row in rows:
    if problem := row_problem(task, row.fields):
      raise DataError(f"{row.origin}: task {task.name!r}: {problem}")
  return rows
