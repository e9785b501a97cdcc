"""The issue's accuracy claims on real data (slow: about 6 minutes; `make test-all`).

16-shot full fine-tuning of MiniLM, seed 42, beats zero-shot by at least 3 points on SST-2
and reaches at least 80% on TREC (a PyTorch reference of the recipe reached 74.7% and 90.6%).
"""

import pytest

from configs import fewshot
from fttpu import train
from tests.conftest import data_dir


def run(task, method, workdir, tfds_dir):
  config = fewshot.get_config(f"task={task},method={method},k=16,seed=42")
  config.data.dir = data_dir()
  config.data.cache_dir = tfds_dir
  return train.run(config, str(workdir))["eval/accuracy"]


@pytest.mark.slow
def test_full_fine_tuning_beats_zero_shot_on_sst2_and_reaches_80_on_trec(tmp_path, tfds_dir):
  sst2_zero = run("sst2", "zero_shot", tmp_path / "sst2_zero", tfds_dir)
  sst2_full = run("sst2", "full", tmp_path / "sst2_full", tfds_dir)
  assert sst2_full >= sst2_zero + 0.03, (sst2_zero, sst2_full)
  trec_full = run("trec", "full", tmp_path / "trec_full", tfds_dir)
  assert trec_full >= 0.80, trec_full
