"""MeZO's multiple-choice tasks whose candidates differ per row: COPA and ReCoRD.

Templates are MeZO's large_models/templates.py, quoted in each function's comment; MeZO's tasks.py says
which texts are a row's candidates and golds. Both read from a local folder (<split>.jsonl in the
fields of TFDS's and Hugging Face's super_glue/copa and super_glue/record; COPA also <split>.tsv) or
the TFDS catalog.
"""

from typing import Mapping

from fttpu.data.rows import LABEL, TEXTS, Catalog, Column, RowTask
from fttpu.errors import ConfigError

_SUPER_GLUE = "tensorflow_datasets.text.super_glue"
SUPER_GLUE_SPLITS = (("train", "train"), ("test", "validation"))  # SuperGLUE's test labels are hidden
COPA_CONNECTIVES = {"cause": " because ", "effect": " so "}  # CopaTemplate cause_conj, effect_conj


# MeZO CopaTemplate (capitalization "correct"):
#   premise = sample.data["premise"].rstrip(); if premise.endswith("."): premise = premise[:-1]
#   encode: premise + conjunction (" so " for effect, " because " for cause)
#   verbalize: premise + conjunction + capitalize(candidate), where capitalize lowercases the candidate's
#   first word (split on " ") unless it is "I".
def copa_prompt(fields: Mapping) -> str:
  premise = fields["premise"].rstrip()
  if premise.endswith("."):
    premise = premise[:-1]
  return premise + COPA_CONNECTIVES[fields["question"]]


def copa_capitalize(candidate: str) -> str:
  """CopaTemplate.capitalize: the first word lowercased, unless it is "I"."""
  words = candidate.split(" ")
  if words[0] != "I":
    words[0] = words[0].lower()
  return " ".join(words)


def copa_verbalize(fields: Mapping, candidate: str) -> str:
  return copa_prompt(fields) + copa_capitalize(candidate)


def copa_problem(fields: Mapping) -> str:
  if fields["question"] not in COPA_CONNECTIVES:
    return (
      f"question {fields['question']!r} is not one of {list(COPA_CONNECTIVES)} (the premise's cause, "
      "joined by 'because', or its effect, joined by 'so')"
    )
  if fields["label"] not in (0, 1):
    return f"label {fields['label']!r} is not 0 (choice1) or 1 (choice2)"
  return ""


COPA = RowTask(
  name="copa",
  columns=(Column("premise"), Column("choice1"), Column("choice2"), Column("question"), Column("label", LABEL)),
  prompt=copa_prompt,
  verbalize=copa_verbalize,
  candidates=lambda fields: (fields["choice1"], fields["choice2"]),
  golds=lambda fields: (fields[f"choice{fields['label'] + 1}"],),  # MeZO's CopaDataset correct_candidate
  problem=copa_problem,
  file_formats=("jsonl", "tsv"),
  catalog=Catalog(
    "super_glue/copa",
    _SUPER_GLUE,
    SUPER_GLUE_SPLITS,
    lambda example: {k: example[k] for k in ("premise", "choice1", "choice2", "question", "label")},
    needs_tensorflow=True,  # the builder's features use tf.int32; the zip is extracted with tf.io.gfile
  ),
)


# MeZO ReCoRDTemplateGPT3 (the one its ReCoRDDataset uses):
#   passage = sample.data['passage'].replace("@highlight\n", "- ")
#   encode: f"{passage}\n-"
#   verbalize: f"{passage}\n- {query}" with the query's "@placeholder" replaced by the candidate
PLACEHOLDER = "@placeholder"


def record_passage(fields: Mapping) -> str:
  return fields["passage"].replace("@highlight\n", "- ")


def record_prompt(fields: Mapping) -> str:
  return f"{record_passage(fields)}\n-"


def record_verbalize(fields: Mapping, candidate: str) -> str:
  return f"{record_passage(fields)}\n- {fields['query'].replace(PLACEHOLDER, candidate)}"


def record_problem(fields: Mapping) -> str:
  if PLACEHOLDER not in fields["query"]:
    return f"query {fields['query'][:80]!r} has no {PLACEHOLDER!r}, the slot each candidate entity fills"
  if not fields["entities"]:
    return "no candidate entities: 'entities' must list the entities that may fill the query's @placeholder"
  return ""


RECORD = RowTask(
  name="record",
  columns=(Column("passage"), Column("query"), Column("entities", TEXTS), Column("answers", TEXTS)),
  prompt=record_prompt,
  verbalize=record_verbalize,
  candidates=lambda fields: tuple(fields["entities"]),  # MeZO: candidates=example['entities']
  golds=lambda fields: tuple(fields["answers"]),  # correct_candidate=example['answers']: any of them is right
  problem=record_problem,
  catalog=Catalog(
    "super_glue/record",
    _SUPER_GLUE,
    SUPER_GLUE_SPLITS,
    lambda example: {k: example[k] for k in ("passage", "query", "entities", "answers")},
    needs_tensorflow=True,  # TFDS extracts the zip with tf.io.gfile
  ),
)


# Candidates per row where the task fixes them (COPA: choice1, choice2); ReCoRD's vary with its entities, and a
# sample's batches have as many as its row with the most (pipeline.load_choice_rows).
FIXED_CHOICES = {"copa": 2}


def batch_choices(task: str, choices: int = 0) -> int:
  """Candidates per row of `task`'s batches, for an example batch without data (fttpu.plan --choices):
  the task's fixed count, where it has one, else `choices`, which then must be given."""
  fixed = FIXED_CHOICES.get(task)
  if fixed and choices not in (0, fixed):
    raise ConfigError(
      f"choices={choices} for task {task!r}, whose rows have {fixed} candidates each; give {fixed} or 0"
    )
  if fixed:
    return fixed
  if choices < 2:
    raise ConfigError(
      f"choices={choices} for task {task!r}: its rows have differing numbers of candidates (ReCoRD: the passage's "
      "entities) and its batches have as many as the sample's row with the most; give that number, >= 2 "
      "(fttpu.plan: --choices=N)"
    )
  return choices
