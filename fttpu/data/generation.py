"""Generation tasks (SQuAD, DROP; rows.RowTask with no candidates) as arrays: what trains and what decodes.

  teacher forcing  pipeline.Encoded: input_ids, attention_mask, target_mask (n, L), labels (n,) all 0:
                   MeZO's prompt, then " " + the row's first gold answer + "\\n" (its verbalize),
                   truncated from the left (OPT's BOS kept) and padded right; target_mask is 1 at the
                   tokens after the prompt (the answer and the newline), so the LM loss on them is
                   MeZO's training objective (train_as_classification=False, only_train_option).
                   train_batch draws batches of it (pipeline's draw), with each row's prompt
                   (train_prompts) and its index, which zo.objective=f1 decodes and scores.
  Prompts          input_ids, attention_mask (n, P): the prompt alone, truncated from the left to
                   max_length - max_new_tokens (MeZO's room for the answer) and padded on the LEFT, so
                   every row's next token goes to column P; the decoder counts OPT's positions over the
                   attended tokens, so padding moves none. answers: each row's golds.

Evaluation decodes greedily from Prompts (at most max_new_tokens, stopping at stop_ids: the newline's
token or EOS, as MeZO's run.py), turns the new tokens into text with answer_text and scores them with
score (the task's metric from fttpu.data.qa_metrics, the best over each row's golds); a run reports
answer_metrics (F1 and exact match). Training's losses are fttpu/generation_objectives.py's.
"""

import dataclasses

import numpy as np
import tokenizers

from fttpu.data import demonstrations, pipeline, qa_metrics, row_tasks
from fttpu.data.rows import Row, RowTask, continued_text, prompt_text
from fttpu.errors import ConfigError, check

MAX_NEW_TOKENS = 50  # MeZO's run.py max_new_tokens
STOP = "\n"  # MeZO's run.py eos_token
MIN_PROMPT_TOKENS = 8  # of data.max_length beside the answer's max_new_tokens


@dataclasses.dataclass(frozen=True)
class Prompts:
  input_ids: np.ndarray  # (n, P) int32, left-padded: each prompt ends at the last column
  attention_mask: np.ndarray  # (n, P) int32
  answers: tuple[tuple[str, ...], ...]  # each row's gold answers

  def __len__(self):
    return len(self.answers)

  def take(self, indices) -> "Prompts":
    return Prompts(self.input_ids[indices], self.attention_mask[indices], tuple(self.answers[i] for i in indices))


@dataclasses.dataclass(frozen=True)
class GenerationData:
  task: RowTask
  train: pipeline.Encoded  # teacher forcing on the first gold answer
  train_prompts: Prompts  # the same training rows as prompts and golds (MeZO's non-differentiable objective)
  dev: Prompts
  test: Prompts
  max_new_tokens: int


def encode_teacher_forced(tokenizer: tokenizers.Tokenizer, task: RowTask, rows: list[Row], max_length: int):
  """Each row's prompt and first gold answer (MeZO's verbalize) as pipeline.Encoded, target_mask on the answer."""
  lengths = [len(prompt_text(task, row.fields)) for row in rows]
  texts = [continued_text(task, row.fields, task.golds(row.fields)[0]) for row in rows]
  ids, attention, target = pipeline.encode_continued(tokenizer, lengths, texts, max_length, "answer")
  return pipeline.Encoded(ids, attention, np.zeros(len(rows), np.int32), target)


def encode_prompts(
  tokenizer, task: RowTask, rows: list[Row], max_length: int, max_new_tokens: int, prefixes=None
) -> Prompts:
  """Each row's prompt (after its prefix: demonstrations), left-truncated to max_length - max_new_tokens
  tokens and padded on the left."""
  length = max_length - max_new_tokens
  if length < MIN_PROMPT_TOKENS:
    raise ConfigError(
      f"data.max_length={max_length} leaves {length} prompt tokens after the {max_new_tokens} the answer may take"
    )
  pad_id, pad = pipeline.pad_token(tokenizer)
  encoder = tokenizers.Tokenizer.from_str(tokenizer.to_str())
  encoder.enable_truncation(length, direction="left")
  encoder.enable_padding(direction="left", length=length, pad_id=pad_id, pad_token=pad)
  prefixes = prefixes or [""] * len(rows)
  encodings = encoder.encode_batch([prefix + prompt_text(task, row.fields) for prefix, row in zip(prefixes, rows)])
  return Prompts(
    np.asarray([e.ids for e in encodings], np.int32),
    np.asarray([e.attention_mask for e in encodings], np.int32),
    tuple(tuple(task.golds(row.fields)) for row in rows),
  )


def stop_ids(tokenizer: tokenizers.Tokenizer) -> tuple[int, ...]:
  """The tokens decoding stops at: the newline's (its last token, as MeZO's run.py) and EOS (</s>)."""
  newline = tokenizer.encode(STOP, add_special_tokens=False).ids[-1]
  eos = tokenizer.token_to_id("</s>")
  return (newline,) if eos is None else (newline, eos)


def answer_text(tokenizer: tokenizers.Tokenizer, new_ids) -> str:
  """The decoded answer: the new tokens up to the first stop token, without special tokens, stripped
  (MeZO: tokenizer.decode(new tokens, skip_special_tokens=True).strip())."""
  new_ids = [int(i) for i in new_ids]
  stops = set(stop_ids(tokenizer))
  end = next((i + 1 for i, token in enumerate(new_ids) if token in stops), len(new_ids))
  return tokenizer.decode(new_ids[:end], skip_special_tokens=True).strip()


def score(task: RowTask, predictions, prompts: Prompts) -> float:
  """The task's metric (MeZO's: SQuAD and DROP report F1) of the decoded answers against each row's golds."""
  return qa_metrics.mean_score(task.metric, predictions, prompts.answers)


def answer_metrics(predictions, prompts: Prompts) -> dict:
  """{"f1", "em"}: the mean token F1 and exact match of the decoded answers against each row's golds."""
  return {metric: qa_metrics.mean_score(metric, predictions, prompts.answers) for metric in ("f1", "em")}


GENERATION_TASKS = tuple(name for name, task in row_tasks.ROW_TASKS.items() if task.generation)


def is_generation_task(name: str) -> bool:
  """Whether data.task names a generation task (SQuAD, DROP): trained on its answers, scored by F1."""
  return name in GENERATION_TASKS


def validate(config) -> None:
  """config.data.max_new_tokens, and room for the prompt beside it in data.max_length (generation tasks)."""
  d = config.data
  if not is_generation_task(d.task):
    return
  check(d.max_new_tokens >= 1, "data.max_new_tokens", d.max_new_tokens, "an integer >= 1 (MeZO: 50)")
  check(
    d.max_length - d.max_new_tokens >= MIN_PROMPT_TOKENS,
    "data.max_length",
    d.max_length,
    f"at least data.max_new_tokens + {MIN_PROMPT_TOKENS} = {d.max_new_tokens + MIN_PROMPT_TOKENS} (task {d.task!r} "
    f"decodes up to {d.max_new_tokens} answer tokens after prompts of data.max_length - data.max_new_tokens tokens)",
  )


def train_rows(data: GenerationData, indices) -> dict:
  """Training rows `indices` as one batch: teacher forcing on the answer (pipeline's keys: input_ids,
  attention_mask, target_mask, labels, weights) and the rows' left-padded prompts (prompt_input_ids,
  prompt_attention_mask) with their indices into data.train_prompts (row_index), which the F1 objective
  decodes and scores against the rows' golds."""
  indices = np.asarray(indices, np.int64)
  return {
    **pipeline.whole(data.train.take(indices)),
    "prompt_input_ids": data.train_prompts.input_ids[indices],
    "prompt_attention_mask": data.train_prompts.attention_mask[indices],
    "row_index": indices.astype(np.int32),
  }


def train_batch(data: GenerationData, step: int, batch_size: int, seed: int) -> dict:
  """The training batch of global step `step` (the rows pipeline.train_batch would draw)."""
  return train_rows(data, pipeline.batch_indices(len(data.train), step, batch_size, seed))


def example_batch(batch_size: int, max_length: int, max_new_tokens: int, id_range: tuple | None = None) -> dict:
  """A batch shaped as train_rows' (teacher forcing (n, max_length), prompts (n, max_length - max_new_tokens),
  row_index (n,)) with no padding: token ids 0, or drawn uniformly from `id_range` = (low, high) with seed 0;
  target_mask on the last max_new_tokens tokens (the answer). fttpu.plan needs only its shapes."""
  prompt_length = max_length - max_new_tokens
  if prompt_length < MIN_PROMPT_TOKENS or max_new_tokens < 1:
    raise ConfigError(
      f"data.max_length={max_length} and data.max_new_tokens={max_new_tokens}: a generation batch needs "
      f"max_new_tokens >= 1 and max_length >= max_new_tokens + {MIN_PROMPT_TOKENS} (the prompt's room)"
    )
  rng = np.random.default_rng(0)
  ids = lambda shape: np.zeros(shape, np.int32) if id_range is None else rng.integers(*id_range, shape, dtype=np.int32)
  target = np.zeros((batch_size, max_length), np.int32)
  target[:, prompt_length:] = 1
  return {
    "input_ids": ids((batch_size, max_length)),
    "attention_mask": np.ones((batch_size, max_length), np.int32),
    "labels": np.zeros(batch_size, np.int32),
    "weights": np.ones(batch_size, np.float32),
    "target_mask": target,
    "prompt_input_ids": ids((batch_size, prompt_length)),
    "prompt_attention_mask": np.ones((batch_size, prompt_length), np.int32),
    "row_index": np.arange(batch_size, dtype=np.int32),
  }


def load_generation(data_config, tokenizer, seed: int, max_new_tokens: int = MAX_NEW_TOKENS) -> GenerationData:
  """The generation task config.data names, sampled by MeZO's protocol with `seed`, encoded to train and decode."""
  task, splits = row_tasks.load_sample(data_config, seed)
  if not task.generation:
    raise ConfigError(f"task {task.name!r} is multiple choice: pipeline.load_few_shot encodes it")
  prefixes = demonstrations.for_rows(data_config, task, splits["train"], seed)  # dev and test rows' only
  encode = lambda split: encode_prompts(
    tokenizer, task, splits[split], data_config.max_length, max_new_tokens, prefixes(split, len(splits[split]))
  )
  return GenerationData(
    task,
    encode_teacher_forced(tokenizer, task, splits["train"], data_config.max_length),
    encode("train"),
    encode("dev"),
    encode("test"),
    max_new_tokens,
  )
