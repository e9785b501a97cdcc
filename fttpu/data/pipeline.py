"""Task splits -> tokenized few-shot arrays -> fixed-shape batches.

Batches are pure functions of (step, seed): resuming at step s replays exactly the batches
an uninterrupted run would have seen, with no iterator state to checkpoint.
"""
import dataclasses
from typing import Iterator

import numpy as np
import tokenizers

from fttpu.data import fewshot, tasks, tfds_local


@dataclasses.dataclass(frozen=True)
class Encoded:
  input_ids: np.ndarray       # (n, length) int32
  attention_mask: np.ndarray  # (n, length) int32
  labels: np.ndarray          # (n,) int32

  def __len__(self):
    return len(self.labels)

  def take(self, indices) -> "Encoded":
    return Encoded(self.input_ids[indices], self.attention_mask[indices], self.labels[indices])


@dataclasses.dataclass(frozen=True)
class FewShotData:
  task: tasks.Task
  train: Encoded
  dev: Encoded
  test: Encoded
  prompts: dict  # label descriptions, tokenized: {"label_input_ids", "label_attention_mask"}


def _unpadded_copy(tokenizer: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
  """A private copy with the file's own padding and truncation settings removed."""
  copy = tokenizers.Tokenizer.from_str(tokenizer.to_str())
  copy.no_padding()
  copy.no_truncation()
  return copy


def encode(tokenizer: tokenizers.Tokenizer, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
  """Token ids and attention mask, truncated and padded to `max_length`."""
  pad = tokenizer.padding or {"pad_id": tokenizer.token_to_id("[PAD]") or 0, "pad_token": "[PAD]"}
  tokenizer = _unpadded_copy(tokenizer)
  tokenizer.enable_truncation(max_length)
  tokenizer.enable_padding(length=max_length, pad_id=pad["pad_id"], pad_token=pad["pad_token"])
  encodings = tokenizer.encode_batch(texts)
  return (np.asarray([e.ids for e in encodings], np.int32),
          np.asarray([e.attention_mask for e in encodings], np.int32))


def encode_split(tokenizer, task: tasks.Task, sentences, labels, max_length: int) -> Encoded:
  ids, mask = encode(tokenizer, [task.template.format(sentence=s) for s in sentences], max_length)
  return Encoded(ids, mask, np.asarray(labels, np.int32))


def load_few_shot(data_config, tokenizer, seed: int) -> FewShotData:
  """The task of `data_config`, k-shot sampled with `seed` and tokenized."""
  task = tasks.get_task(data_config.task, data_config.dir, data_config.template,
                        tuple(data_config.label_descriptions), tuple(data_config.label_names))
  splits = tfds_local.load_splits(task, data_config.dir, data_config.cache_dir)
  train_sentences, train_labels = splits["train"]
  train_idx, dev_idx = fewshot.sample_k_shot(train_labels, data_config.k, seed, task.num_classes)
  train_all = [train_sentences[i] for i in np.concatenate([train_idx, dev_idx])]
  encoded = encode_split(tokenizer, task, train_all, train_labels[np.concatenate([train_idx, dev_idx])],
                         data_config.max_length)
  test = encode_split(tokenizer, task, *splits["test"], data_config.max_length)
  label_length = max(len(e.ids) for e in _unpadded_copy(tokenizer).encode_batch(list(task.label_descriptions)))
  label_ids, label_mask = encode(tokenizer, list(task.label_descriptions), label_length)
  n = len(train_idx)
  return FewShotData(task, encoded.take(np.arange(n)), encoded.take(np.arange(n, len(encoded))), test,
                     {"label_input_ids": label_ids, "label_attention_mask": label_mask})


def train_batch(data: Encoded, step: int, batch_size: int, seed: int) -> dict:
  """The batch of global step `step`: a fresh seeded permutation of the examples every epoch."""
  positions = step * batch_size + np.arange(batch_size)
  epochs, offsets = np.divmod(positions, len(data))
  indices = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):
    permutation = np.random.default_rng([seed, int(epoch)]).permutation(len(data))
    indices[epochs == epoch] = permutation[offsets[epochs == epoch]]
  batch = data.take(indices)
  return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "labels": batch.labels,
          "weights": np.ones(batch_size, np.float32)}


def whole(data: Encoded) -> dict:
  """Every example as one batch (linear probes fit on all training features at once)."""
  return {"input_ids": data.input_ids, "attention_mask": data.attention_mask, "labels": data.labels,
          "weights": np.ones(len(data), np.float32)}


def eval_batches(data: Encoded, batch_size: int) -> Iterator[dict]:
  """Fixed-size batches over all of `data`; padding rows carry weight 0."""
  for start in range(0, len(data), batch_size):
    indices = np.arange(start, start + batch_size)
    weights = (indices < len(data)).astype(np.float32)
    batch = data.take(np.minimum(indices, len(data) - 1))
    yield {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "labels": batch.labels,
           "weights": weights}
