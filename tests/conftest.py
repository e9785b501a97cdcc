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
