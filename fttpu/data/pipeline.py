"""Task splits -> tokenized few-shot arrays -> batches (one shape per training split, a few for evaluation).

Batches are pure functions of (step, seed): resuming at step s replays exactly the batches
an uninterrupted run would have seen, with no iterator state to checkpoint.

Each style (tasks.STYLES) encodes differently:
  similarity  input_ids (n, L) of task.template; prompts = the label descriptions, tokenized:
              {"label_input_ids", "label_attention_mask"} (C, L').
  mlm         input_ids (n, L) of task.mlm_template with exactly one mask token per row;
              prompts = {"verbalizer_ids": (C,)}, the token of each class's label word.
  causal      input_ids (n, C, L): task.causal_template followed by each class's label word, and
              target_mask (n, C, L), 1 at the label word's tokens; prompts = {}.
              Row tasks' multiple choice (COPA, ReCoRD; encode_choices): each row's own candidates after
              MeZO's prompt, C the most any row has, plus choice_mask (n, C), 0 at the padding
              candidates of rows with fewer, and gold_mask (n, C), 1 at every right candidate.
Generation tasks (SQuAD, DROP) are encoded by fttpu.data.generation. With data.demonstrations > 0 the
dev and test rows' texts follow their in-context demonstrations (fttpu.data.demonstrations).
"""

import dataclasses
import string
from typing import Iterator, Optional

import numpy as np
import tokenizers

from fttpu.errors import ConfigError, check
from fttpu.data import demonstrations, fewshot, row_tasks, tasks, tfds_local
from fttpu.data.rows import RowTask, continued_text, gold_indices, prompt_text

STYLES = tasks.STYLES


@dataclasses.dataclass(frozen=True)
class Encoded:
  input_ids: np.ndarray  # (n, length) int32; causal: (n, classes, length)
  attention_mask: np.ndarray  # like input_ids, int32
  labels: np.ndarray  # (n,) int32
  target_mask: Optional[np.ndarray] = None  # causal only: like input_ids, 1 at the label word's tokens
  choice_mask: Optional[np.ndarray] = None  # row tasks' multiple choice: (n, classes), 0 at padding candidates
  gold_mask: Optional[np.ndarray] = None  # row tasks' multiple choice: (n, classes), 1 at each right candidate

  def __len__(self):
    return len(self.labels)

  def take(self, indices) -> "Encoded":
    return Encoded(*(None if x is None else x[indices] for x in dataclasses.astuple(self)))

  def lengths(self) -> np.ndarray:
    """(n,) each example's tokens up to its last attended one (the longest of its candidates, causal)."""
    attended = self.attention_mask.reshape(len(self), -1, self.attention_mask.shape[-1]).any(axis=1)
    return np.where(attended, np.arange(1, attended.shape[-1] + 1), 0).max(axis=-1)

  def trimmed(self, multiple: int) -> "Encoded":
    """The same examples without the trailing columns that are padding in every one of them, kept to a
    multiple of `multiple` tokens (fewer shapes to compile); `multiple` 0 keeps every column."""
    columns = self.input_ids.shape[-1]
    if multiple:
      columns = min(columns, -(-max(int(self.lengths().max(initial=0)), 1) // multiple) * multiple)
    cut = lambda x: None if x is None else x[..., :columns]
    return dataclasses.replace(
      self, input_ids=cut(self.input_ids), attention_mask=cut(self.attention_mask), target_mask=cut(self.target_mask)
    )


@dataclasses.dataclass(frozen=True)
class FewShotData:
  task: tasks.Task | RowTask
  train: Encoded
  dev: Encoded
  test: Encoded
  prompts: dict  # shared by every batch; per style, see the module docstring
  style: str = "similarity"


def _unpadded_copy(tokenizer: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
  """A private copy with the file's own padding and truncation settings removed."""
  copy = tokenizers.Tokenizer.from_str(tokenizer.to_str())
  copy.no_padding()
  copy.no_truncation()
  return copy


def pad_token(tokenizer: tokenizers.Tokenizer) -> tuple[int, str]:
  """(id, token) to pad with: the file's padding setting, else the first of [PAD], <pad>, <unk> it has.

  (Llama's tokenizer has no pad token: its rows are padded with <unk>, hidden by the attention mask.)
  """
  if tokenizer.padding:
    return tokenizer.padding["pad_id"], tokenizer.padding["pad_token"]
  for token in ("[PAD]", "<pad>", "<unk>"):
    if (token_id := tokenizer.token_to_id(token)) is not None:
      return token_id, token
  return 0, tokenizer.id_to_token(0) or "[PAD]"


def _encoder(tokenizer: tokenizers.Tokenizer, max_length: int, direction: str = "right") -> tokenizers.Tokenizer:
  """A copy that truncates from `direction` (special tokens are added after) and pads right to max_length."""
  pad_id, pad = pad_token(tokenizer)
  tokenizer = _unpadded_copy(tokenizer)
  tokenizer.enable_truncation(max_length, direction=direction)
  tokenizer.enable_padding(length=max_length, pad_id=pad_id, pad_token=pad)
  return tokenizer


def encode(
  tokenizer: tokenizers.Tokenizer, texts: list[str], max_length: int, direction: str = "right"
) -> tuple[np.ndarray, np.ndarray]:
  """Token ids and attention mask, truncated (from `direction`) and padded to `max_length`."""
  encodings = _encoder(tokenizer, max_length, direction).encode_batch(texts)
  return (np.asarray([e.ids for e in encodings], np.int32), np.asarray([e.attention_mask for e in encodings], np.int32))


def mask_token(tokenizer: tokenizers.Tokenizer) -> tuple[str, int]:
  """The tokenizer's mask token and id: <mask> (RoBERTa) or [MASK] (BERT)."""
  for token in ("<mask>", "[MASK]"):
    if (token_id := tokenizer.token_to_id(token)) is not None:
      return token, token_id
  raise ConfigError("the tokenizer has no mask token (<mask> or [MASK]): the mlm style needs a masked LM's tokenizer")


def verbalizer_ids(tokenizer: tokenizers.Tokenizer, words) -> np.ndarray:
  """(classes,) int32: the single token of each label word, as it follows a space (" great"), else bare."""
  tokenizer = _unpadded_copy(tokenizer)
  unknown = {tokenizer.token_to_id(t) for t in ("[UNK]", "<unk>")} - {None}
  ids = []
  for word in words:
    tried = [tokenizer.encode(text, add_special_tokens=False) for text in (" " + word, word)]
    single = [e.ids[0] for e in tried if len(e.ids) == 1 and e.ids[0] not in unknown]
    if not single:
      raise ConfigError(
        f"label word {word!r} is not one token: {' ' + word!r} -> {tried[0].tokens}, {word!r} -> "
        f"{tried[1].tokens}; MLM prompts need one token per class (change data.label_words)"
      )
    ids.append(single[0])
  return np.asarray(ids, np.int32)


def _mask_side(template: str) -> str:
  """Where {mask} sits relative to the texts: 'after' all, 'before' all, or 'between'."""
  names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
  texts = [i for i, name in enumerate(names) if name != "mask"]
  mask = names.index("mask")
  return "after" if all(i < mask for i in texts) else "before" if all(i > mask for i in texts) else "between"


def _fitted(tokenizer: tokenizers.Tokenizer, task: tasks.Task, template: str, row, max_length: int, **extra) -> tuple:
  """`row` with its longest text cut by whole tokens from its end until the filled template fits max_length."""
  row = [text.strip() for text in ((row,) if isinstance(row, str) else row)]
  while (length := len(tokenizer.encode(tasks.fill(template, task.text_fields, row, **extra)).ids)) > max_length:
    pieces = [tokenizer.encode(text, add_special_tokens=False) for text in row]
    longest = max(range(len(row)), key=lambda i: len(pieces[i].ids))
    if not row[longest]:
      raise ConfigError(f"data.max_length={max_length} is too short for the template {template!r} alone")
    keep = len(pieces[longest].ids) - (length - max_length)
    cut = min(pieces[longest].offsets[keep][0], len(row[longest]) - 1) if keep > 0 else 0  # always shorter
    row[longest] = row[longest][:cut].strip()
  return tuple(row)


def encode_mlm(tokenizer: tokenizers.Tokenizer, task: tasks.Task, rows, labels, max_length: int) -> Encoded:
  """task.mlm_template per row, its mask token kept whatever the truncation.

  The mask after every text: truncate from the left (the start of the text goes; special tokens are
  added after truncation, so <s>/[CLS] stay); before every text: from the right; between texts (pair
  templates): the longest text is shortened until the row fits.
  """
  token, token_id = mask_token(tokenizer)
  side = _mask_side(task.mlm_template)
  if side == "between":
    unpadded = _unpadded_copy(tokenizer)
    texts = [tasks.fill(task.mlm_template, task.text_fields, row, mask=token) for row in rows]
    lengths = [len(e.ids) for e in unpadded.encode_batch(texts)]
    rows = [
      _fitted(unpadded, task, task.mlm_template, row, max_length, mask=token) if n > max_length else row
      for row, n in zip(rows, lengths)
    ]
  texts = [tasks.fill(task.mlm_template, task.text_fields, row, mask=token) for row in rows]
  ids, attention = encode(tokenizer, texts, max_length, "left" if side == "after" else "right")
  counts = (ids == token_id).sum(1)
  if (bad := np.flatnonzero(counts != 1)).size:
    i = bad[0]
    raise ConfigError(
      f"{len(bad)} MLM examples do not encode to exactly one mask token {token!r} (id {token_id}); "
      f"example {i} has {counts[i]}: {texts[i][:200]!r}"
    )
  return Encoded(ids, attention, np.asarray(labels, np.int32))


def encode_continued(
  tokenizer: tokenizers.Tokenizer, prompt_lengths, texts: list[str], max_length: int, what: str = "label-word"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(input_ids, attention_mask, target_mask), each (len(texts), max_length): each text truncated from the
  left (special tokens kept) and padded right; target_mask marks what follows its prompt, the first
  prompt_lengths[i] characters of texts[i].

  A token is a target when it is a real, non-special token that starts at or after the end of the
  prompt (character offsets into the text).
  """
  encodings = _encoder(tokenizer, max_length, "left").encode_batch(texts)
  starts = np.asarray([[start for start, _ in e.offsets] for e in encodings], np.int64)
  real = np.asarray([[a and not s for a, s in zip(e.attention_mask, e.special_tokens_mask)] for e in encodings], bool)
  target = (real & (starts >= np.asarray(prompt_lengths, np.int64)[:, None])).astype(np.int32)
  if (bad := np.flatnonzero(target.sum(1) == 0)).size:
    raise ConfigError(
      f"{len(bad)} causal candidates have no {what} token after truncation to "
      f"data.max_length={max_length}; e.g. {texts[bad[0]][-200:]!r}"
    )
  ids = np.asarray([e.ids for e in encodings], np.int32)
  return ids, np.asarray([e.attention_mask for e in encodings], np.int32), target


def encode_causal(
  tokenizer: tokenizers.Tokenizer, task: tasks.Task, rows, labels, max_length: int, prefixes=None
) -> Encoded:
  """Prompt + each label word per row (each of the row's choices, for multiple choice), truncated from
  the left; target_mask marks the word's tokens (encode_continued). `prefixes`: a text before each row's
  prompt (its demonstrations)."""
  prefixes = prefixes or [""] * len(rows)
  prompts = [prefix + tasks.fill(task.causal_template, task.text_fields, row) for prefix, row in zip(prefixes, rows)]
  choices = [task.text_fields.index(f) for f in task.choice_fields]
  words = [[row[i].strip() for i in choices] if choices else task.label_words for row in rows]  # multiple choice
  texts = [prompt + tasks.word_after(prompt, word) for prompt, row_words in zip(prompts, words) for word in row_words]
  prompt_ends = np.repeat([len(p) for p in prompts], task.num_classes)
  shape = (len(prompts), task.num_classes, max_length)
  ids, attention, target = (a.reshape(shape) for a in encode_continued(tokenizer, prompt_ends, texts, max_length))
  return Encoded(ids, attention, np.asarray(labels, np.int32), target)


def encode_choices(
  tokenizer: tokenizers.Tokenizer, task: RowTask, examples, max_length: int, choices: int, prefixes=None
) -> Encoded:
  """A multiple-choice row task's rows (rows.Row), as encode_causal's arrays (n, choices, max_length): each
  row's prompt followed by each of its candidates (MeZO's verbalize), target_mask on the candidate.

  A row with fewer candidates than `choices` (ReCoRD's) repeats its first; choice_mask (n, choices) is 0
  there, so the copies neither win nor take probability. gold_mask (n, choices) is 1 at every right
  candidate (a prediction is right when it is any of them); labels is the first gold (MeZO's
  correct_candidate_id for training). `prefixes`: a text before each row's prompt (its demonstrations).
  """
  prompt_ends, texts, golds, counts = [], [], [], []
  for row, prefix in zip(examples, prefixes or [""] * len(examples)):
    candidates = task.candidates(row.fields)
    if len(candidates) > choices:
      raise ValueError(f"{row.origin}: {len(candidates)} candidates, more than the {choices} encoded per row")
    padded = list(candidates) + [candidates[0]] * (choices - len(candidates))
    prompt_ends.append(len(prefix) + len(prompt_text(task, row.fields)))
    texts += [prefix + continued_text(task, row.fields, candidate) for candidate in padded]
    golds.append(gold_indices(task, row.fields))
    counts.append(len(candidates))
  shape = (len(examples), choices, max_length)
  ids, attention, target = encode_continued(tokenizer, np.repeat(prompt_ends, choices), texts, max_length, "candidate")
  choice_mask = (np.arange(choices)[None, :] < np.asarray(counts)[:, None]).astype(np.int32)
  gold_mask = np.zeros((len(examples), choices), np.int32)
  for i, row_golds in enumerate(golds):
    gold_mask[i, list(row_golds)] = 1
  labels = np.asarray([row_golds[0] for row_golds in golds], np.int32)
  return Encoded(ids.reshape(shape), attention.reshape(shape), labels, target.reshape(shape), choice_mask, gold_mask)


def encode_split(
  tokenizer, task: tasks.Task, rows, labels, max_length: int, style: str = "similarity", prefixes=None
) -> Encoded:
  """Rows (tuples of texts, or strings for one-text tasks) encoded for `style`; `prefixes` (causal only):
  a text before each row's prompt."""
  if style == "mlm":
    return encode_mlm(tokenizer, task, rows, labels, max_length)
  if style == "causal":
    return encode_causal(tokenizer, task, rows, labels, max_length, prefixes)
  ids, mask = encode(tokenizer, [tasks.fill(task.template, task.text_fields, row) for row in rows], max_length)
  return Encoded(ids, mask, np.asarray(labels, np.int32))


def prompts(tokenizer, task: tasks.Task, style: str = "similarity") -> dict:
  """What every batch of `style` shares (see the module docstring)."""
  if style == "mlm":
    return {
      "verbalizer_ids": verbalizer_ids(tokenizer, task.label_words),
      "mask_token_id": np.asarray(mask_token(tokenizer)[1], np.int32),
    }
  if style == "causal":
    return {}
  label_length = max(len(e.ids) for e in _unpadded_copy(tokenizer).encode_batch(list(task.label_descriptions)))
  label_ids, label_mask = encode(tokenizer, list(task.label_descriptions), label_length)
  return {"label_input_ids": label_ids, "label_attention_mask": label_mask}


def check_classes(task: tasks.Task, labels: dict) -> None:
  """The task's classes (one per label word, description or choice) are the classes its data files
  show (labels 0..C-1 over its splits), whichever sampling protocol then draws from them."""
  shown = max(int(np.max(split_labels)) + 1 for split_labels in labels.values() if len(split_labels))
  if shown != task.num_classes:
    raise ConfigError(
      f"task {task.name!r}: its data files show {shown} classes (labels 0..{shown - 1} in its "
      f"{' and '.join(sorted(labels))} splits) but the task has {task.num_classes} "
      f"{list(task.label_names)}, one per label word or description; give one per class "
      "(data.label_words, data.label_descriptions, data.label_names)"
    )


# The causal LM families (fttpu/models/families/: default_classifier "causal"): the data layer names them
# without importing the models.
DECODER_FAMILIES = ("opt", "llama")


def validate_row_task(config) -> None:
  """A row task (row_tasks.ROW_TASKS) runs on a causal LM with MeZO's row sampling."""
  d, m = config.data, config.model
  task = row_tasks.ROW_TASKS[d.task]
  how = "generates its answers" if task.generation else "scores its candidates by their likelihood"
  check(
    m.family in DECODER_FAMILIES,
    "model.family",
    m.family,
    f"{' or '.join(map(repr, DECODER_FAMILIES))} (task {d.task!r} {how} under a causal LM; the encoder "
    f"family {m.family!r} has none)",
  )
  check(m.classifier == "causal", "model.classifier", m.classifier, f"'causal' for the {task.kind} task {d.task!r}")
  check(
    d.num_train > 0,
    "data.num_train",
    d.num_train,
    f"an integer > 0: task {d.task!r} samples rows, not k per class (MeZO: {row_tasks.MEZO_ROWS[d.task]} "
    "train / dev / test rows in data.num_train, data.num_dev, data.num_test)",
  )


def validate(config) -> None:
  """config.data: the task exists and its prompts fit the classifier style; the sampling sizes."""
  d = config.data
  known = d.task in tasks.TASKS or d.task in row_tasks.ROW_TASKS or tasks.task_dir(d.task, d.dir) is not None
  check(
    known,
    "data.task",
    d.task,
    f"{sorted(tasks.TASKS | row_tasks.ROW_TASKS)}, a folder under data.dir={d.dir!r}, or an absolute path, "
    "with train.tsv and test.tsv",
  )
  if d.task in row_tasks.ROW_TASKS:
    validate_row_task(config)
  else:
    tasks.task_of(d, config.model.classifier)  # its prompts fit
  check(d.k >= 1, "data.k", d.k, "an integer >= 1 (examples per class)")
  check(
    d.max_length >= 8, "data.max_length", d.max_length, "8..the checkpoint's positions (512 for BERT, 2048 for OPT)"
  )
  check(
    d.pad_to_multiple_of >= 0,
    "data.pad_to_multiple_of",
    d.pad_to_multiple_of,
    "an integer >= 0 (pad each split and evaluation batch to its longest example rounded up to a multiple of "
    "this; 0: to data.max_length)",
  )
  for key in ("num_train", "num_dev", "num_test"):
    check(
      d[key] >= 0, f"data.{key}", d[key], "an integer >= 0 (0: k per class for train and dev, the whole test split)"
    )
  check(
    (d.num_train > 0) == (d.num_dev > 0),
    "data.num_dev",
    d.num_dev,
    f"> 0 exactly when data.num_train > 0 (num_train={d.num_train})",
  )
  demonstrations.validate(config)


def padding_multiple(data_config) -> int:
  """data.pad_to_multiple_of: each split is padded to its longest example rounded up to a multiple of this
  (0: to data.max_length), and evaluation batches to theirs (eval_batches)."""
  return getattr(data_config, "pad_to_multiple_of", 0)


def load_choice_rows(data_config, tokenizer, seed: int) -> FewShotData:
  """A multiple-choice row task (COPA, ReCoRD) sampled by MeZO's protocol, as causal batches whose rows
  all have as many candidates as the sample's row with the most (encode_choices)."""
  task, splits = row_tasks.load_sample(data_config, seed)
  if task.generation:
    raise ConfigError(
      f"task {task.name!r} is a generation task: fttpu.data.generation.load_generation encodes it (teacher "
      "forcing to train, prompts to decode greedily and score by F1)"
    )
  choices = max(len(task.candidates(row.fields)) for split in splits.values() for row in split)
  prefixes = demonstrations.for_rows(data_config, task, splits["train"], seed)
  encoded = {
    k: encode_choices(tokenizer, task, v, data_config.max_length, choices, prefixes(k, len(v)))
    for k, v in splits.items()
  }
  trim = lambda split: encoded[split].trimmed(padding_multiple(data_config))
  return FewShotData(task, trim("train"), trim("dev"), trim("test"), {}, "causal")


def load_few_shot(data_config, tokenizer, seed: int, style: str = "similarity") -> FewShotData:
  """The task of `data_config`, k-shot sampled with `seed` and tokenized for `style`."""
  if data_config.task in row_tasks.ROW_TASKS:
    return load_choice_rows(data_config, tokenizer, seed)
  optional = lambda key, default: getattr(data_config, key, default)  # keys a config may not have
  task = tasks.task_of(data_config, style)
  splits = tfds_local.load_splits(task, data_config.dir, data_config.cache_dir)
  check_classes(task, {name: labels for name, (_, labels) in splits.items()})
  train_rows, train_labels = splits["train"]
  if optional("num_train", 0):  # MeZO's large-model protocol
    train_idx, dev_idx = fewshot.sample_rows(len(train_labels), data_config.num_train, data_config.num_dev, seed)
  else:
    train_idx, dev_idx = fewshot.sample_k_shot(train_labels, data_config.k, seed, task.num_classes)
  chosen = np.concatenate([train_idx, dev_idx])
  prefixes = demonstrations.for_classification(
    data_config, task, [train_rows[i] for i in train_idx], train_labels[train_idx], seed
  )
  encode = lambda rows, labels, indices, split_prefixes: encode_split(
    tokenizer, task, [rows[i] for i in indices], labels[indices], data_config.max_length, style, split_prefixes
  )
  encoded = encode(train_rows, train_labels, chosen, prefixes("train", len(train_idx)) + prefixes("dev", len(dev_idx)))
  test_rows, test_labels = splits["test"]
  test_idx = fewshot.sample_test(len(test_labels), optional("num_test", 0))
  test = encode(test_rows, test_labels, test_idx, prefixes("test", len(test_idx)))
  n = len(train_idx)
  trim = lambda split: split.trimmed(padding_multiple(data_config))
  return FewShotData(
    task,
    trim(encoded.take(np.arange(n))),
    trim(encoded.take(np.arange(n, len(encoded)))),
    trim(test),
    prompts(tokenizer, task, style),
    style,
  )


# One row per example; generation tasks' training batches add each row's prompt and its index (to decode).
EXAMPLE_KEYS = ("input_ids", "attention_mask", "labels", "weights", "target_mask", "choice_mask", "gold_mask")
EXAMPLE_KEYS += ("prompt_input_ids", "prompt_attention_mask", "row_index")


def micro_batches(batch: dict, count: int) -> tuple[dict, dict]:
  """(the example arrays as `count` micro-batches stacked on a new leading axis, the prompts they share).

  Micro-batch m holds rows m, m + count, m + 2 count, ...: a batch sharded over devices by rows keeps
  each micro-batch spread over all of them. (A jax or numpy batch; rows must divide by `count`.)
  """
  examples = {k: v for k, v in batch.items() if k in EXAMPLE_KEYS}
  split = lambda x: x.reshape((x.shape[0] // count, count) + x.shape[1:]).swapaxes(0, 1)
  return {k: split(v) for k, v in examples.items()}, {k: v for k, v in batch.items() if k not in EXAMPLE_KEYS}


def _batch(data: Encoded, weights: np.ndarray) -> dict:
  """The batch dict of `data`: target_mask, choice_mask and gold_mask only when the data has them."""
  batch = {
    "input_ids": data.input_ids,
    "attention_mask": data.attention_mask,
    "labels": data.labels,
    "weights": weights,
  }
  for key in ("target_mask", "choice_mask", "gold_mask"):
    if getattr(data, key) is not None:
      batch[key] = getattr(data, key)
  return batch


def batch_indices(examples: int, step: int, batch_size: int, seed: int) -> np.ndarray:
  """The example indices of global step `step`'s batch: a fresh seeded permutation every epoch."""
  positions = step * batch_size + np.arange(batch_size)
  epochs, offsets = np.divmod(positions, examples)
  indices = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):
    permutation = np.random.default_rng([seed, int(epoch)]).permutation(examples)
    indices[epochs == epoch] = permutation[offsets[epochs == epoch]]
  return indices


def train_batch(data: Encoded, step: int, batch_size: int, seed: int) -> dict:
  """The batch of global step `step`: a fresh seeded permutation of the examples every epoch."""
  indices = batch_indices(len(data), step, batch_size, seed)
  return _batch(data.take(indices), np.ones(batch_size, np.float32))


def whole(data: Encoded) -> dict:
  """Every example as one batch (linear probes fit on all training features at once)."""
  return _batch(data, np.ones(len(data), np.float32))


def eval_batches(data: Encoded, batch_size: int, multiple: int = 0) -> Iterator[dict]:
  """Batches of `batch_size` rows over all of `data`; padding rows carry weight 0. With `multiple` > 0
  the examples go longest first and each batch is trimmed to its longest, a multiple of `multiple` tokens
  (Encoded.trimmed): short sentences do not pay for the longest one's padding."""
  order = np.argsort(-data.lengths(), kind="stable") if multiple else np.arange(len(data))
  for start in range(0, len(data), batch_size):
    indices = np.arange(start, start + batch_size)
    weights = (indices < len(data)).astype(np.float32)
    yield _batch(data.take(order[np.minimum(indices, len(data) - 1)]).trimmed(multiple), weights)


def example_batch(
  style: str,
  batch_size: int,
  length: int,
  classes: int,
  label_length: int = 16,
  id_range: tuple | None = None,
  row_choices: bool = False,
) -> dict:
  """A batch shaped as this module's batches of `style` (with their prompts), no padding: token ids 0,
  or drawn uniformly from `id_range` = (low, high) with seed 0. `row_choices` (causal): a row task's
  multiple choice (encode_choices), `classes` candidates per row with choice_mask and gold_mask (n, classes).
  fttpu.plan needs only its shapes; fttpu.bench times steps on the random ids."""
  rng = np.random.default_rng(0)
  ids = lambda shape: np.zeros(shape, np.int32) if id_range is None else rng.integers(*id_range, shape, dtype=np.int32)
  rows = (batch_size, classes, length) if style == "causal" else (batch_size, length)
  batch = {
    "input_ids": ids(rows),
    "attention_mask": np.ones(rows, np.int32),
    "labels": rng.integers(0, classes, batch_size, dtype=np.int32) if id_range else np.zeros(batch_size, np.int32),
    "weights": np.ones(batch_size, np.float32),
  }
  if style == "causal":
    batch["target_mask"] = np.ones(rows, np.int32)
    if row_choices:
      batch["choice_mask"] = np.ones((batch_size, classes), np.int32)
      batch["gold_mask"] = (np.arange(classes)[None, :] == batch["labels"][:, None]).astype(np.int32)
  elif style == "mlm":
    batch.update(verbalizer_ids=np.arange(classes, dtype=np.int32), mask_token_id=np.asarray(0, np.int32))
  else:
    batch.update(
      label_input_ids=ids((classes, label_length)), label_attention_mask=np.ones((classes, label_length), np.int32)
    )
  return batch
