"""Task definitions: label names, prompts for each classification style, where the data lives.

A task is a directory of `train.tsv` and `test.tsv` (header `sentence<TAB>label`, or
`sentence1<TAB>sentence2<TAB>label` for sentence pairs; integer labels). Registered tasks carry
their prompts; any other directory works when the config gives the prompts its style uses.

Styles (how a class is scored):
  similarity  the sentence (`template`) against an embedding of each label description.
  mlm         a masked LM fills {mask} in `mlm_template`; the class is its label word (LM-BFF).
  causal      a causal LM scores each label word after `causal_template` (MeZO's OPT runs).

Templates are Python format strings over the task's text fields ({sentence}, or {sentence1} and
{sentence2}) and their derived forms {<field>_trimmed} (the last character dropped when it is
punctuation: LM-BFF's `sent-_`), {<field>_lowerfirst} (first letter lowercased: LM-BFF's
`sentl_`) and {<field>_upperfirst} (first letter uppercased: MeZO's BoolQ question); texts are stripped
of surrounding whitespace first.
"""

import dataclasses
import os
import string
from typing import Optional

from fttpu import files
from fttpu.errors import ConfigError
from fttpu.data import tsv

STYLES = ("similarity", "mlm", "causal")
PAIR = ("sentence1", "sentence2")


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  label_names: tuple[str, ...]
  label_descriptions: tuple[str, ...] = ()  # similarity style: one per class
  template: str = "{sentence}"  # similarity style
  mlm_template: str = ""  # mlm style: contains {mask} once
  causal_template: str = ""  # causal style: the prompt before each label word
  label_words: tuple[str, ...] = ()  # mlm and causal styles: one per class
  text_fields: tuple[str, ...] = ("sentence",)
  # TFDS catalog entry used when no local copy exists, and its split names for train/test.
  tfds_name: Optional[str] = None
  tfds_module: Optional[str] = None  # the module that registers tfds_name (TFDS imports catalog modules lazily)
  tfds_splits: tuple[tuple[str, str], ...] = ()
  tfds_fields: tuple[str, ...] = ()  # the catalog's feature names for text_fields; () = the same names

  @property
  def num_classes(self) -> int:
    return len(self.label_names)

  @property
  def choice_fields(self) -> tuple[str, ...]:
    """Multiple choice: the text fields that are each row's candidates (choice1, choice2, ...)."""
    return tuple(f for f in self.text_fields if f.startswith("choice"))


_GLUE = "tensorflow_datasets.text.glue"
_SUPER_GLUE = "tensorflow_datasets.text.super_glue"
_NO_YES = ("No", "Yes")  # SuperGLUE's binary labels: 0 = False, 1 = True
_NLI_LABELS = ("entailment", "neutral", "contradiction")  # TFDS glue/mnli and snli order
_NLI_DESCRIPTIONS = (
  "The hypothesis follows from the premise.",
  "The hypothesis might be true given the premise.",
  "The hypothesis contradicts the premise.",
)
_PAIR_TEMPLATE = "Premise: {sentence1} Hypothesis: {sentence2}"
# LM-BFF (Gao et al. 2021, Table 1 and their run scripts; MeZO's RoBERTa runs use the same). RoBERTa's
# "<mask>" is an added token with lstrip=True: it takes the space before it, so "was <mask>." gives
# the tokens of LM-BFF's `_was*mask*.` (and "? <mask>," those of `?*mask*,`).
_SST_MLM = "{sentence} It was {mask}."  # *cls**sent_0*_It_was*mask*.*sep+*
_NLI_MLM = "{sentence1_trimmed}? {mask}, {sentence2_lowerfirst}"  # *cls**sent-_0*?*mask*,*+sentl_1**sep+*
# Causal prompts; the label word follows after a space, or directly when the prompt ends in whitespace.
_SST_CAUSAL = "{sentence} It was"  # MeZO large_models/templates.py SST2Template: f"{text} It was" + " great"
# MeZO's CBTemplate ("From PromptSource"): f'Suppose {premise} Can we infer that "{hypothesis}"? Yes, No,
# or Maybe?\n' then the word; used here for the 3-way NLI tasks.
_NLI_CAUSAL = 'Suppose {sentence1} Can we infer that "{sentence2}"? Yes, No, or Maybe?\n'


def _nli_task(name: str, tfds_name: str, tfds_module: str, test_split: str) -> Task:
  """A 3-way NLI task (premise, hypothesis) with LM-BFF's MLM prompt and the CB causal prompt."""
  return Task(
    name=name,
    label_names=_NLI_LABELS,
    label_descriptions=_NLI_DESCRIPTIONS,
    template=_PAIR_TEMPLATE,
    mlm_template=_NLI_MLM,
    causal_template=_NLI_CAUSAL,
    label_words=("Yes", "Maybe", "No"),
    text_fields=PAIR,
    tfds_name=tfds_name,
    tfds_module=tfds_module,
    tfds_splits=(("train", "train"), ("test", test_split)),
    tfds_fields=("premise", "hypothesis"),
  )


def _yes_no_task(
  name: str, text_fields: tuple[str, ...], causal_template: str, catalog: str = "", catalog_fields: tuple[str, ...] = ()
) -> Task:
  """A SuperGLUE task whose label is False/True (0/1), answered No/Yes by a causal LM; the TFDS catalog's
  super_glue/<catalog or name>, tested on its validation split (the test labels are hidden)."""
  return Task(
    name=name,
    label_names=("false", "true"),
    causal_template=causal_template,
    label_words=_NO_YES,
    text_fields=text_fields,
    tfds_name=f"super_glue/{catalog or name}",
    tfds_module=_SUPER_GLUE,
    tfds_splits=(("train", "train"), ("test", "validation")),
    tfds_fields=catalog_fields,
  )


TASKS = {
  "sst2": Task(
    name="sst2",
    label_names=("negative", "positive"),
    label_descriptions=("It was terrible.", "It was great."),
    mlm_template=_SST_MLM,
    causal_template=_SST_CAUSAL,
    label_words=("terrible", "great"),
    tfds_name="glue/sst2",
    tfds_module=_GLUE,
    # GLUE's test labels are hidden: the few-shot literature tests on the validation split.
    tfds_splits=(("train", "train"), ("test", "validation")),
  ),
  "sst5": Task(  # no TFDS catalog entry: a local directory only (LM-BFF's data/original/sst-5)
    name="sst5",
    label_names=("very negative", "negative", "neutral", "positive", "very positive"),
    label_descriptions=("It was terrible.", "It was bad.", "It was okay.", "It was good.", "It was great."),
    mlm_template=_SST_MLM,
    causal_template=_SST_CAUSAL,
    label_words=("terrible", "bad", "okay", "good", "great"),
  ),
  "trec": Task(
    name="trec",
    label_names=("description", "entity", "abbreviation", "human", "location", "number"),
    label_descriptions=(
      "A question asking for a description or definition.",
      "A question asking about a thing or an object.",
      "A question asking what an abbreviation stands for.",
      "A question asking about a person.",
      "A question asking about a place or location.",
      "A question asking for a number, a date or an amount.",
    ),
    mlm_template="{mask}: {sentence}",  # *cls**mask*:*+sent_0**sep+*
    # Ours (MeZO has no TREC prompt): the answer type after the question.
    causal_template="Question: {sentence}\nAnswer type:",
    # LM-BFF's mapping; ABBR is "Expression".
    label_words=("Description", "Entity", "Expression", "Human", "Location", "Number"),
  ),
  # SuperGLUE, for causal LMs, with the prompts of MeZO's large_models/templates.py (PromptSource's);
  # GLUE's and SuperGLUE's test labels are hidden, so the test split is validation (MeZO samples 1000 of it).
  "cb": dataclasses.replace(
    _nli_task("cb", "super_glue/cb", _SUPER_GLUE, "validation"),
    label_names=("entailment", "contradiction", "neutral"),  # super_glue/cb order
    label_descriptions=(),
    label_words=("Yes", "No", "Maybe"),
  ),
  "boolq": _yes_no_task(
    "boolq", ("passage", "question"), "{passage} {question_upperfirst}?\n"
  ),  # BoolQTemplateV3 (its questions have no "?")
  "wic": _yes_no_task(
    "wic",
    ("word", "sentence1", "sentence2"),
    'Does the word "{word}" have the same meaning in these two sentences? Yes, No?\n{sentence1}\n{sentence2}\n',
  ),
  # MeZO lowercases the pronoun (span2); its spans are single pronouns, so the first letter is all of it.
  "wsc": _yes_no_task(
    "wsc",
    ("text", "span1", "span2"),
    '{text}\nIn the previous sentence, does the pronoun "{span2_lowerfirst}" refer to {span1}? Yes or No?\n',
    catalog="wsc.fixed",
    catalog_fields=("text", "span1_text", "span2_text"),
  ),
  "multirc": _yes_no_task(
    "multirc",
    ("paragraph", "question", "answer"),
    '{paragraph}\nQuestion: {question}\nI found this answer "{answer}". Is that correct? Yes or No?\n',
  ),
  "mnli": _nli_task("mnli", "glue/mnli", _GLUE, "validation_matched"),  # LM-BFF tests on dev-matched
  # SNLI rows without a gold label (-1) are dropped.
  "snli": _nli_task("snli", "snli", "tensorflow_datasets.datasets.snli.snli_dataset_builder", "test"),
  "rte": Task(
    name="rte",
    label_names=("entailment", "not_entailment"),  # glue/rte order
    label_descriptions=("The hypothesis follows from the premise.", "The hypothesis does not follow from the premise."),
    template=_PAIR_TEMPLATE,
    mlm_template=_NLI_MLM,
    # MeZO large_models/templates.py RTETemplate ("From PromptSource"):
    # f'{premise}\nDoes this mean that "{hypothesis}" is true? Yes or No?\n' followed by "Yes"/"No".
    causal_template='{sentence1}\nDoes this mean that "{sentence2}" is true? Yes or No?\n',
    label_words=("Yes", "No"),
    text_fields=PAIR,
    tfds_name="glue/rte",
    tfds_module=_GLUE,
    tfds_splits=(("train", "train"), ("test", "validation")),
  ),
}


def task_dir(name: str, data_dir: str) -> Optional[str]:
  """DATA_DIR/name, or `name` itself when it is an absolute path or a bucket URI; None when neither is a
  directory."""
  for candidate in (files.join(data_dir, name), name if os.path.isabs(name) or files.is_remote(name) else None):
    if candidate and files.isdir(candidate):
      return candidate
  return None


def template_fields(text_fields: tuple[str, ...], row) -> dict:
  """The format fields of one example: each text, stripped, and its _trimmed and _lowerfirst forms."""
  row = (row,) if isinstance(row, str) else row
  fields = {}
  for name, text in zip(text_fields, row, strict=True):
    text = text.strip()
    trimmed = text[:-1].rstrip() if text and text[-1] in string.punctuation else text
    fields.update(
      {
        name: text,
        f"{name}_trimmed": trimmed,
        f"{name}_lowerfirst": text[:1].lower() + text[1:],
        f"{name}_upperfirst": text[:1].upper() + text[1:],
      }
    )
  return fields


def fill(template: str, text_fields: tuple[str, ...], row, **extra) -> str:
  """`template` filled with the texts of `row` (a tuple, or a string for one field) and `extra` fields."""
  return template.format(**template_fields(text_fields, row), **extra)


def word_after(prompt: str, word: str) -> str:
  """A label word or candidate as it follows its causal prompt: after a space, or directly after whitespace
  (MeZO's RTE prompt ends in a newline)."""
  return word if prompt[-1:].isspace() else " " + word


def _checked_template(template: str, key: str, text_fields: tuple[str, ...], mask: bool = False) -> str:
  """`template` if it uses every text field (or a derived form), {mask} exactly once when `mask`, and nothing else."""
  allowed = set(template_fields(text_fields, ("",) * len(text_fields))) | ({"mask"} if mask else set())
  wanted = ", ".join(f"{{{f}}}" for f in text_fields) + (" and {mask} exactly once" if mask else "")
  try:
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    template.format(**dict.fromkeys(allowed, ""))
  except (KeyError, IndexError, ValueError, AttributeError):
    names = None
  if names is None or not set(names) <= allowed:
    derived = ", ".join(sorted(f"{{{f}}}" for f in allowed - set(text_fields) - {"mask"}))
    raise ConfigError(
      f"{key}={template!r} must contain {wanted} and no other {{...}} field (derived fields: {derived})"
    )
  used = {name.rsplit("_", 1)[0] if name not in text_fields else name for name in names}
  if not set(text_fields) <= used or (mask and names.count("mask") != 1):
    raise ConfigError(f"{key}={template!r} must contain {wanted}")
  return template


def _choice_fields(directory: str) -> tuple[str, ...]:
  return tuple(f for f in tsv.header_fields(os.path.join(directory, "train.tsv")) or () if f.startswith("choice"))


def _default_template(text_fields: tuple[str, ...]) -> str:
  return _PAIR_TEMPLATE if tuple(text_fields) == PAIR else "{sentence}"


def task_of(data_config, style: str) -> "Task":
  """The task config.data names, with its template and label overrides, for the classifier `style`."""
  optional = lambda key, default: getattr(data_config, key, default)  # keys an older config may not have
  return get_task(
    data_config.task,
    data_config.dir,
    data_config.template,
    tuple(data_config.label_descriptions),
    tuple(data_config.label_names),
    mlm_template=optional("mlm_template", ""),
    causal_template=optional("causal_template", ""),
    label_words=tuple(optional("label_words", ())),
    style=style,
  )


def _base_task(name: str, data_dir: str, label_descriptions, label_names, label_words, style: str) -> Task:
  """The registered task `name`, or one for the directory DATA_DIR/name, before config overrides."""
  if name in TASKS:
    return TASKS[name]
  elif (directory := task_dir(name, data_dir)) and (choices := _choice_fields(directory)):
    if style != "causal":
      raise ConfigError(
        f"task {name!r} is multiple choice ({', '.join(choices)}): its candidates are scored by a "
        f"causal LM (model.classifier=causal, families opt and llama), not by style {style!r}"
      )
    text_fields = tsv.header_fields(os.path.join(directory, "train.tsv"))
    return Task(
      name=name, label_names=tuple(label_names) or choices, causal_template="{sentence}", text_fields=text_fields
    )
  elif directory:
    per_class = tuple(label_descriptions) if style == "similarity" else tuple(label_words)
    if not per_class:
      flag = (
        "--config.data.label_descriptions='(\"desc of 0\", \"desc of 1\", ...)'"
        if style == "similarity"
        else f"--config.data.{style}_template=... --config.data.label_words='(\"word0\", \"word1\", ...)'"
      )
      raise ConfigError(
        f"task {name!r} is not registered (registered: {sorted(TASKS)}); for a task directory "
        f"give its prompts with {flag}"
      )
    text_fields = tsv.header_fields(os.path.join(directory, "train.tsv")) or ("sentence",)
    return Task(
      name=name,
      label_names=tuple(label_names) or tuple(str(i) for i in range(len(per_class))),
      template=_default_template(text_fields),
      text_fields=text_fields,
    )
  else:
    raise ConfigError(
      f"unknown task {name!r}: not registered (registered: {sorted(TASKS)}) and no directory "
      f"{os.path.join(data_dir, name)!r}"
    )


def get_task(
  name: str,
  data_dir: str,
  template: str = "",
  label_descriptions=(),
  label_names=(),
  *,
  mlm_template: str = "",
  causal_template: str = "",
  label_words=(),
  style: str = "similarity",
) -> Task:
  """The registered task `name`, or a task for the directory DATA_DIR/name, with config overrides.

  Fails unless the task has the prompts `style` uses (similarity: label descriptions; mlm: an MLM
  template and label words; causal: a causal template and label words).
  """
  if style not in STYLES:
    raise ConfigError(f"style {style!r} is not one of {list(STYLES)}")
  task = _base_task(name, data_dir, label_descriptions, label_names, label_words, style)
  fields = tuple(f for f in task.text_fields if f not in task.choice_fields)  # what a prompt may show
  overrides = {}
  if template:
    overrides["template"] = _checked_template(template, "data.template", fields)
  if mlm_template:
    overrides["mlm_template"] = _checked_template(mlm_template, "data.mlm_template", fields, mask=True)
  if causal_template:
    overrides["causal_template"] = _checked_template(causal_template, "data.causal_template", fields)
  if label_descriptions:
    overrides["label_descriptions"] = tuple(label_descriptions)
  if label_words:
    overrides["label_words"] = tuple(label_words)
  if label_names:
    overrides["label_names"] = tuple(label_names)
  task = dataclasses.replace(task, **overrides)
  for what, values in (("label descriptions", task.label_descriptions), ("label words", task.label_words)):
    if values and len(values) != task.num_classes:
      raise ConfigError(
        f"task {name!r} has {task.num_classes} classes {list(task.label_names)} but {len(values)} {what}"
      )
  needs = {
    "similarity": (("label_descriptions", task.label_descriptions),),
    "mlm": (("mlm_template", task.mlm_template), ("label_words", task.label_words)),
    "causal": (("causal_template", task.causal_template), ("label_words", task.label_words or task.choice_fields)),
  }[style]
  for key, value in needs:
    if not value:
      raise ConfigError(f"task {name!r} has no {key} for style {style!r}: give --config.data.{key}=...")
  return task
