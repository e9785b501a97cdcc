"""The Flax BERT matches HF transformers (PyTorch) on the same weights; checkpoint import is strict."""

import json
import re
import shutil

import chex
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from fttpu import errors
from fttpu import models
from fttpu.data import pipeline
from tests.conftest import data_dir


def real_sentences(n=12):
  with open(f"{data_dir()}/sst2/test.tsv") as f:
    next(f)
    return [next(f).split("\t")[0] for _ in range(n)]


def test_last_hidden_states_match_transformers(minilm):
  import torch
  from transformers import AutoTokenizer, BertModel

  sentences = real_sentences()
  ids, mask = pipeline.encode(minilm.tokenizer, sentences, 64)
  assert mask.sum(1).min() < 64 and mask.sum(1).max() > mask.sum(1).min(), "batch must mix lengths and padding"
  ours = np.asarray(minilm.module.apply({"params": minilm.params}, ids, mask))

  reference = BertModel.from_pretrained(minilm.checkpoint_dir).eval()
  tokens = AutoTokenizer.from_pretrained(minilm.checkpoint_dir)(
    sentences, padding="max_length", max_length=64, truncation=True, return_tensors="pt"
  )
  np.testing.assert_array_equal(tokens["input_ids"].numpy(), ids)
  with torch.no_grad():
    theirs = reference(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state.numpy()
  assert np.abs(ours - theirs).max() <= 1e-4
  real = mask.astype(bool)
  assert np.abs(ours[real] - theirs[real]).max() <= 1e-4


@pytest.fixture
def checkpoint_copy(tmp_path, minilm):
  """A writable copy of the checkpoint directory: (path, tensors)."""
  for name in ("config.json", "tokenizer.json"):
    shutil.copy(f"{minilm.checkpoint_dir}/{name}", tmp_path / name)
  return tmp_path, load_file(f"{minilm.checkpoint_dir}/model.safetensors")


def test_sharded_safetensors_with_index_load_the_same_params(checkpoint_copy, minilm):
  path, tensors = checkpoint_copy
  names = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
  for shard, keys in shards.items():
    save_file({k: tensors[k] for k in keys}, path / shard)
  with open(path / "model.safetensors.index.json", "w") as f:
    json.dump({"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}, f)
  loaded = models.load("bert", str(path))
  chex.assert_trees_all_equal(loaded.params, minilm.params)


@pytest.mark.parametrize(
  "edit, message",
  [
    (lambda t: t.pop("encoder.layer.3.attention.self.key.weight"), "encoder.layer.3.attention.self.key.weight"),
    (lambda t: t.update({"encoder.layer.0.extra.weight": np.zeros(3, np.float32)}), "encoder.layer.0.extra.weight"),
    (
      lambda t: t.update({"encoder.layer.2.output.dense.bias": np.zeros(7, np.float32)}),
      "encoder.layer.2.output.dense.bias",
    ),
    (
      lambda t: t.update({"embeddings.word_embeddings.weight": np.zeros((100, 384), np.float32)}),
      "embeddings.word_embeddings.weight: the checkpoint has (100, 384)",
    ),
  ],
)
def test_bad_checkpoints_name_the_offending_tensor(checkpoint_copy, edit, message):
  path, tensors = checkpoint_copy
  edit(tensors)
  save_file(tensors, path / "model.safetensors")
  with pytest.raises(errors.CheckpointError, match=re.escape(message)):
    models.load("bert", str(path))


def test_a_checkpoint_of_another_family_is_rejected(minilm):
  with pytest.raises(errors.CheckpointError, match=r"model_type='bert' but model.family='roberta'"):
    models.load("roberta", minilm.checkpoint_dir)


def test_directory_without_config_is_rejected(tmp_path):
  with pytest.raises(errors.CheckpointError, match="no config.json"):
    models.load("bert", str(tmp_path))


def test_staging_a_pytorch_checkpoint_gives_the_same_model_and_tokenizer(minilm, tmp_path):
  """`python -m fttpu.models.stage` on what Hugging Face directories often hold: sharded
  pytorch_model-*.bin with their index and a tokenizer without tokenizer.json (vocab.txt). The staged
  directory loads into the same parameters, bit for bit, and tokenizes real sentences the same."""
  import subprocess
  import sys
  import torch
  from safetensors.torch import load_file as load_torch
  from tests.conftest import REPO

  legacy, staged = tmp_path / "hf", tmp_path / "staged"
  legacy.mkdir()
  source = minilm.checkpoint_dir
  for name in ("config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(f"{source}/{name}", legacy / name)  # a BERT tokenizer as vocab.txt, no tokenizer.json
  tensors = load_torch(f"{source}/model.safetensors")
  names = sorted(tensors)
  shards = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
  for shard, keys in shards.items():
    torch.save({k: tensors[k] for k in keys}, legacy / shard)
  (legacy / "pytorch_model.bin.index.json").write_text(
    json.dumps({"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}})
  )
  result = subprocess.run(
    [sys.executable, "-m", "fttpu.models.stage", f"--from={legacy}", f"--to={staged}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  files = json.loads(result.stdout.strip().splitlines()[-1])["files"]
  assert "model.safetensors.index.json" in files and "tokenizer.json" in files
  assert len([f for f in files if f.endswith(".safetensors")]) >= 2 and not any(f.endswith(".bin") for f in files)
  loaded = models.load("bert", str(staged))
  chex.assert_trees_all_equal(loaded.params, minilm.params)
  sentences = real_sentences()
  tokens = lambda tokenizer: [
    [i for i, m in zip(e.ids, e.attention_mask) if m] for e in tokenizer.encode_batch(sentences)
  ]
  assert tokens(loaded.tokenizer) == tokens(minilm.tokenizer)  # the shipped file also pads to 128: fttpu pads itself
  again = subprocess.run(
    [sys.executable, "-m", "fttpu.models.stage", f"--from={legacy}", f"--to={staged}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert again.returncode != 0 and "exists and is not an empty directory" in again.stderr
  assert "Traceback" not in again.stderr
