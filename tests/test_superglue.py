"""The OPT-13B table's data: SuperGLUE tasks with MeZO's prompts, and its 1000/500/1000 row sampling."""

import os

import ml_collections
import numpy as np
import pytest

from fttpu.errors import ConfigError
from fttpu.data import fewshot, pipeline, tasks, tfds_local
from fttpu.models import tiny
from tests.conftest import data_dir

# One row per task (header fields, texts, label) and the prompt MeZO's large_models/templates.py builds for
# it (BoolQTemplateV3, CBTemplate, WICTemplate, WSCTemplate, MultiRCTemplate), written out by hand.
ROWS = {
  "boolq": (
    ("passage", "question"),
    ("Paris is the capital of France.", "is paris the capital of france"),
    1,
    "Paris is the capital of France. Is paris the capital of france?\n",
  ),
  "cb": (
    ("sentence1", "sentence2"),
    ("It rained all day.", "The ground is wet"),
    2,
    'Suppose It rained all day. Can we infer that "The ground is wet"? Yes, No, or Maybe?\n',
  ),
  "wic": (
    ("word", "sentence1", "sentence2"),
    ("bank", "He sat on the bank.", "The bank lent money."),
    0,
    'Does the word "bank" have the same meaning in these two sentences? Yes, No?\n'
    "He sat on the bank.\nThe bank lent money.\n",
  ),
  "wsc": (
    ("text", "span1", "span2"),
    ("Mark told Pete he was late.", "Pete", "He"),
    1,
    'Mark told Pete he was late.\nIn the previous sentence, does the pronoun "he" refer to Pete? Yes or No?\n',
  ),
  "multirc": (
    ("paragraph", "question", "answer"),
    ("Sam bought apples.", "What did Sam buy?", "apples"),
    1,
    'Sam bought apples.\nQuestion: What did Sam buy?\nI found this answer "apples". Is that correct? Yes or No?\n',
  ),
}
WORDS = {
  "boolq": ("No", "Yes"),
  "cb": ("Yes", "No", "Maybe"),
  "wic": ("No", "Yes"),
  "wsc": ("No", "Yes"),
  "multirc": ("No", "Yes"),
}


@pytest.fixture(scope="module")
def superglue_dir(tmp_path_factory):
  """A local TSV folder per task, in the task's own header (as a researcher exports SuperGLUE)."""
  root = tmp_path_factory.mktemp("superglue")
  for name, (fields, texts, label, _) in ROWS.items():
    os.makedirs(root / name)
    for split in ("train", "test"):
      (root / name / f"{split}.tsv").write_text("\t".join(fields) + "\tlabel\n" + "\t".join(texts) + f"\t{label}\n")
  return str(root)


@pytest.fixture(scope="module")
def opt_tokenizer():
  texts = [prompt for *_, prompt in ROWS.values()] + [" ".join(w) for w in WORDS.values()]
  return tiny.train_tokenizer(texts * 20, "opt")


@pytest.mark.parametrize("name", sorted(ROWS))
def test_superglue_tasks_read_from_a_folder_prompt_as_mezo_does(name, superglue_dir, opt_tokenizer, tmp_path):
  fields, texts, label, prompt = ROWS[name]
  task = tasks.get_task(name, superglue_dir, style="causal")
  assert task.text_fields == fields and task.label_words == WORDS[name] and task.tfds_name.startswith("super_glue/")
  rows, labels = tfds_local.load_splits(task, superglue_dir, str(tmp_path / "tfds"))["test"]
  assert rows == [texts] and labels.tolist() == [label]
  encoded = pipeline.encode_causal(opt_tokenizer, task, rows, labels, 128)
  for c, word in enumerate(WORDS[name]):
    ids, mask, target = encoded.input_ids[0, c], encoded.attention_mask[0, c], encoded.target_mask[0, c]
    # The word follows the prompt's newline directly (MeZO's verbalize), after OPT's BOS.
    assert opt_tokenizer.decode(ids[mask == 1].tolist(), skip_special_tokens=False) == f"</s>{prompt}{word}"
    assert opt_tokenizer.decode(ids[target == 1].tolist()) == word


def data_config(tfds_dir, **fields) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    dict(
      task="sst2",
      dir=data_dir(),
      cache_dir=tfds_dir,
      k=16,
      max_length=32,
      template="",
      label_descriptions=(),
      label_names=(),
      **fields,
    )
  )


def test_the_large_model_protocol_samples_rows_not_classes(tfds_dir, opt_tokenizer):
  """num_train + num_dev rows of the train split by the seed, disjoint; one test sample for every seed."""
  config = data_config(tfds_dir, num_train=100, num_dev=50, num_test=300)
  by_seed = {seed: pipeline.load_few_shot(config, opt_tokenizer, seed, style="causal") for seed in (13, 21)}
  for data in by_seed.values():
    assert (len(data.train), len(data.dev), len(data.test)) == (100, 50, 300)
    train, dev = (set(map(bytes, s.input_ids[:, 0])) for s in (data.train, data.dev))
    assert not train & dev
  a, b = by_seed[13], by_seed[21]
  np.testing.assert_array_equal(a.test.input_ids, b.test.input_ids)
  assert not np.array_equal(a.train.input_ids, b.train.input_ids)
  np.testing.assert_array_equal(
    a.train.input_ids, pipeline.load_few_shot(config, opt_tokenizer, 13, style="causal").train.input_ids
  )
  whole_test = pipeline.load_few_shot(
    data_config(tfds_dir, num_train=100, num_dev=50, num_test=0), opt_tokenizer, 13, style="causal"
  )
  assert len(whole_test.test) == 872


def test_more_rows_than_the_split_has_fail_naming_both():
  with pytest.raises(ConfigError, match=r"data.num_train=900 \+ data.num_dev=500 is more than the 1000 training rows"):
    fewshot.sample_rows(1000, 900, 500, seed=0)
  assert len(fewshot.sample_test(500, 1000)) == 500
