"""Tiny random Hugging Face checkpoints of each family, built without PyTorch or a download.

  python -m fttpu.models.tiny --family=roberta --out=workdirs/tiny-roberta --data_dir=../shared/data --task=sst2

The tokenizer is trained (the family's, fttpu/models/families/) on the task's training sentences and prompts, so
the task's label words are single tokens; the weights are a random Flax init exported through
the same name table as a real checkpoint (hf.export). Tests and the end-to-end prompt demo use
these where the real RoBERTa-large, OPT or Llama cannot be fetched.
"""

import json
import os

import jax
from absl import flags

from fttpu import models
from fttpu.data import tasks, tfds_local
from fttpu.models import hf


def hf_config(family: str, vocab_size: int, max_positions: int = 130) -> dict:
  """A config.json for a tiny model of `family`, as transformers writes them (the family module's)."""
  return models.FAMILIES.get(family).tiny_config(vocab_size, max_positions)


def train_tokenizer(texts, family: str, vocab_size: int = 2000):
  """A `family`-style tokenizer (its specials and ids, see fttpu/models/families/) learnt from `texts`."""
  return models.FAMILIES.get(family).tokenizer(list(texts), vocab_size)


def task_texts(task_name: str, data_dir: str, cache_dir: str, limit: int = 5000) -> list[str]:
  """Training sentences of the task plus its prompts with every label word, for the tokenizer."""
  task = tasks.get_task(task_name, data_dir, style="mlm")
  rows, _ = tfds_local.load_splits(task, data_dir, cache_dir)["train"]
  texts = [" ".join(row) if isinstance(row, tuple) else row for row in rows[:limit]]
  prompts = [f"{tasks.fill(task.causal_template, task.text_fields, rows[0])} {word}." for word in task.label_words]
  return texts + prompts * 50


def build(family: str, out_dir: str, texts: list[str], seed: int = 0, vocab_size: int = 2000) -> str:
  """Writes a tiny random `family` checkpoint (config.json, model.safetensors, tokenizer.json) to out_dir."""
  tokenizer = train_tokenizer(texts, family, vocab_size)
  config_json = hf_config(family, tokenizer.get_vocab_size())
  config = models.make_config(family, config_json, lm_head=True)
  params = models.init_params(models.FAMILIES.get(family).module(config), jax.random.key(seed))
  os.makedirs(out_dir, exist_ok=True)
  tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config_json, f, indent=2)
  hf.export(jax.device_get(params), family, True, out_dir, out_dir)
  return out_dir


FLAGS = flags.FLAGS
flags.DEFINE_enum("family", "roberta", models.FAMILIES.names(), "model family")
flags.DEFINE_string("out", None, "output directory", required=True)
flags.DEFINE_string("data_dir", "../shared/data", "task data (the tokenizer is trained on it)")
flags.DEFINE_string("task", "sst2", "task whose sentences and label words the tokenizer learns")
flags.DEFINE_string("cache_dir", "~/.cache/fttpu/tfds", "prepared TFDS files")
flags.DEFINE_integer("seed", 0, "weight initialisation seed")


def main(argv):
  del argv
  path = build(FLAGS.family, FLAGS.out, task_texts(FLAGS.task, FLAGS.data_dir, FLAGS.cache_dir), FLAGS.seed)
  print(f"wrote a tiny random {FLAGS.family} checkpoint to {path}")


if __name__ == "__main__":
  from fttpu import cli

  cli.run(main)
