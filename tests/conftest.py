"""Shared fixtures: the real MiniLM checkpoint and real 16-shot SST-2, loaded once per session."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> str:
  """DATA_DIR (relative paths are taken from the repo root, as make passes them), else ../shared/data."""
  path = Path(os.environ.get("DATA_DIR", "../shared/data"))
  path = path if path.is_absolute() else (REPO / path).resolve()
  if not (path / "sst2" / "train.tsv").is_file():
    raise FileNotFoundError(f"the tests need the real task data: no {path}/sst2/train.tsv; set DATA_DIR")
  return str(path)


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  os.environ["FTTPU_TFDS_DIR"] = path  # subprocesses of the end-to-end tests prepare here too
  return path


@pytest.fixture(scope="session")
def minilm():
  from fttpu import models

  return models.load("bert", "")


@pytest.fixture(scope="session")
def sst2_config(tfds_dir):
  from configs import fewshot

  config = fewshot.get_config("task=sst2,method=full,k=16,seed=42")
  config.data.dir = data_dir()
  config.data.cache_dir = tfds_dir
  return config


@pytest.fixture(scope="session")
def sst2_16shot(sst2_config, minilm):
  from fttpu.data import pipeline

  return pipeline.load_few_shot(sst2_config.data, minilm.tokenizer, sst2_config.seed)


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory, tfds_dir):
  """A tiny random RoBERTa checkpoint directory (tokenizer trained on SST-2), for end-to-end runs."""
  from fttpu.models import tiny

  path = str(tmp_path_factory.mktemp("tiny-roberta"))
  return tiny.build("roberta", path, tiny.task_texts("sst2", data_dir(), tfds_dir))


@pytest.fixture(scope="session")
def tiny():
  return make_tiny()


def make_tiny():
  """A 2-layer random BERT (hidden 32, 4 heads) for the mechanics of methods: fast to compile."""
  import jax
  import numpy as np
  from fttpu import models
  from fttpu.models import bert

  config = models.transformer.ModelConfig(
    family="bert",
    vocab_size=1200,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    intermediate_size=64,
    max_positions=32,
    type_vocab_size=2,
  )
  module = bert.BertEncoder(config)
  params = jax.tree_util.tree_map(np.asarray, models.init_params(module, jax.random.key(0)))
  return models.LoadedModel(module, params, None, config, "")


def tiny_batch(seed: int, size: int = 8, length: int = 12) -> dict:
  """Random token ids with padding, binary labels and two label descriptions."""
  import numpy as np

  rng = np.random.default_rng(seed)
  lengths = rng.integers(4, length + 1, size)
  mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
  return {
    "input_ids": (rng.integers(1000, 1200, (size, length)) * mask).astype(np.int32),
    "attention_mask": mask,
    "labels": rng.integers(0, 2, size).astype(np.int32),
    "weights": np.ones(size, np.float32),
    "label_input_ids": rng.integers(1000, 1200, (2, 5)).astype(np.int32),
    "label_attention_mask": np.ones((2, 5), np.int32),
  }


# The method matrix (tests/test_family_methods.py) runs whole on RoBERTa (encoder, MLM) and Llama (decoder:
# rotary, GQA, untied head) in `make test`; BERT-MLM runs RoBERTa's code but for positions, OPT Llama's
# decoder with other options, so `make test` runs these methods on them and `make test-all` the rest.
SHARED_CODE_FAMILIES = ("bert", "opt")
SHARED_CODE_FAST_METHODS = ("full", "lora", "mezo")


def pytest_collection_modifyitems(config, items):
  import pytest

  for item in items:
    callspec = getattr(item, "callspec", None)
    if (
      item.originalname == "test_every_method_trains_its_leaves_on_every_family"
      and callspec
      and callspec.params.get("family_setup") in SHARED_CODE_FAMILIES
      and callspec.params.get("method_name") not in SHARED_CODE_FAST_METHODS
    ):
      item.add_marker(pytest.mark.slow)
