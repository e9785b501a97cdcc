"""In-context demonstrations: MeZO's ICL row (large_models/icl.sh:3, `--num_train 32` with no trainer).

`data.demonstrations` = k > 0 puts k of the run's training rows, each answered, before every evaluated
row (dev and test), laid out as MeZO's encode_prompt does (large_models/utils.py:124-125, 146, 156):

    demo_1 + "\\n\\n" + demo_2 + ... + "\\n\\n" + demo_k + "\\n\\n" + the evaluated row's text

  demo_i     the task's template filled with training row i and its gold answer, stripped of surrounding
             whitespace: `template.verbalize(sample, sample.correct_candidate).strip()` (utils.py:124):
             a classification row's label word (SST-2: "<sentence> It was great"), a multiple-choice
             row's gold candidate (ReCoRD: its first answer, templates.py:294), a generation row's
             first gold answer (templates.py:336, 346: "...Answer: <answer>", the newline stripped).
  "\\n\\n"    MeZO's Dataset.train_sep (large_models/tasks.py:41; no task sets another).
  the row    what fttpu encodes without demonstrations: the prompt followed by each candidate
             (utils.py:137, 146), or the prompt alone for generation (utils.py:156).

The joined text is tokenized whole and truncated from the LEFT to data.max_length tokens, the first (BOS)
token kept (utils.py:161-170; generation: max_length - max_new_tokens, utils.py:162-163). The evaluated
row is last, so it and its candidates stay whole whenever they fit alone.

Sampling follows MeZO's ICL default (neither --train_set_seed nor --num_train_sets: tasks.py:67-72,
run.py:512-521): every evaluated row has its own k distinct training rows, in the order drawn. MeZO seeds
those draws from seed 0 and draws from the whole train split; fttpu keys each row's draw by (the run's
seed, its split, its position) and draws from the run's training rows (data.train: the num_train or k-shot
sample), which never hold a dev or test row, so no row is its own demonstration. Training rows are
encoded without demonstrations (MeZO trains without them: run.py:362, 496), and demonstrations are for
evaluation only: validate allows them with method=zero_shot alone.
"""

import functools
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from fttpu.data import tasks
from fttpu.data.rows import Row, RowTask
from fttpu.errors import check

SEPARATOR = "\n\n"  # MeZO large_models/tasks.py:41, Dataset.train_sep
MEZO_COUNT = 32  # MeZO large_models/icl.sh:3, --num_train 32
EVALUATED_SPLITS = {"dev": 1, "test": 2}  # the splits whose rows get demonstrations, and their draw keys
EVALUATION_METHOD = "zero_shot"  # the one method demonstrations run with: it trains nothing

# (split, rows) -> each row's demonstrations prefix, "" for none
Prefixes = Callable[[str, int], list[str]]


def count_of(data_config) -> int:
  """data.demonstrations (0 for a config saved before the key existed)."""
  return getattr(data_config, "demonstrations", 0)


def draw(pool_size: int, count: int, seed: int, split: str, position: int) -> np.ndarray:
  """The training rows (positions in the pool) shown before row `position` of `split`: `count` distinct
  rows in the order drawn, from a generator keyed by (seed, split, position)."""
  rng = np.random.default_rng([seed, EVALUATED_SPLITS[split], position])
  return rng.choice(pool_size, size=count, replace=False)


def joined(texts) -> str:
  """The prefix before an evaluated row: each demonstration stripped, joined by SEPARATOR, and SEPARATOR
  after the last (MeZO: `train_sep.join(...).strip() + train_sep`); "" when there is none."""
  body = SEPARATOR.join(text.strip() for text in texts).strip()
  return body + SEPARATOR if body else ""


def check_pool(count: int, pool_size: int) -> None:
  check(
    count <= pool_size,
    "data.demonstrations",
    count,
    f"at most the {pool_size} training rows the demonstrations are drawn from (data.num_train, or data.k per class)",
  )


def prefixes(demonstration: Callable[[int], str], pool_size: int, count: int, seed: int, split: str, rows: int):
  """The prefix of each of the `rows` rows of `split`: `count` pool rows, `demonstration(i)` the text of
  pool row i. Rows of a split that is not evaluated (training rows) get none."""
  if split not in EVALUATED_SPLITS or not count:
    return [""] * rows
  check_pool(count, pool_size)
  return [joined(demonstration(int(i)) for i in draw(pool_size, count, seed, split, p)) for p in range(rows)]


def classification_text(task: tasks.Task, row, label: int) -> str:
  """A classification row answered: the causal prompt and its label word (a multiple-choice task folder's
  right choice), as encode_causal builds the row's candidate for that label."""
  prompt = tasks.fill(task.causal_template, task.text_fields, row)
  choices = [task.text_fields.index(field) for field in task.choice_fields]
  word = row[choices[label]].strip() if choices else task.label_words[label]
  return prompt + tasks.word_after(prompt, word)


def row_text(task: RowTask, fields: Mapping) -> str:
  """A row task's row answered: MeZO's verbalize with its first gold (candidate or reference answer)."""
  return task.verbalize(fields, task.golds(fields)[0])


def for_classification(data_config, task: tasks.Task, rows: Sequence, labels, seed: int) -> Prefixes:
  """Prefixes of evaluated rows drawn from the training `rows` (tuples of texts) and their `labels`."""
  text = lambda i: classification_text(task, rows[i], int(labels[i]))
  return functools.partial(prefixes, text, len(rows), count_of(data_config), seed)


def for_rows(data_config, task: RowTask, rows: Sequence[Row], seed: int) -> Prefixes:
  """Prefixes of evaluated rows drawn from a row task's training `rows`."""
  return functools.partial(prefixes, lambda i: row_text(task, rows[i].fields), len(rows), count_of(data_config), seed)


def validate(config) -> None:
  """data.demonstrations: an integer >= 0; above 0 only for a causal LM's evaluation (method=zero_shot)."""
  count = count_of(config.data)
  check(
    isinstance(count, int) and count >= 0,
    "data.demonstrations",
    count,
    f"an integer >= 0 (0: none; MeZO's ICL row: {MEZO_COUNT})",
  )
  if not count:
    return
  check(
    config.model.classifier == "causal",
    "data.demonstrations",
    count,
    f"0 for model.classifier={config.model.classifier!r}; demonstrations are prompts for a causal LM "
    "(model.classifier=causal, families opt and llama)",
  )
  check(
    config.method == EVALUATION_METHOD,
    "data.demonstrations",
    count,
    f"0 for method={config.method!r}; in-context learning is evaluation only: method={EVALUATION_METHOD} "
    "with data.demonstrations > 0 (MeZO's ICL row trains nothing)",
  )
