"""The few-shot protocols: LM-BFF's (and MeZO's RoBERTa runs') k train and k dev examples per class,
and MeZO's large-model runs' fixed numbers of rows (1000 train, 500 dev, 1000 test), chosen by a seed."""

import numpy as np

from fttpu.errors import ConfigError

STANDARD_SEEDS = (13, 21, 42, 87, 100)


def sample_k_shot(labels: np.ndarray, k: int, seed: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """(train_indices, dev_indices): k per class each, disjoint, from one seeded shuffle of `labels`.

  The procedure of LM-BFF's generate_k_shot_data.py: shuffle the training set with the seed,
  then per class take the first k rows for train and the next k for dev. (It uses numpy's
  Generator, so the rows drawn differ from LM-BFF's published sample files.)
  """
  if k < 1:
    raise ConfigError(f"k={k} must be >= 1")
  order = np.random.default_rng(seed).permutation(len(labels))
  train, dev = [], []
  for label in range(num_classes):
    rows = order[labels[order] == label]
    if len(rows) < 2 * k:
      raise ConfigError(
        f"class {label} has {len(rows)} training rows; k={k} needs {2 * k} (k train + k dev); lower data.k"
      )
    train.append(rows[:k])
    dev.append(rows[k : 2 * k])
  # Interleave classes in shuffled order so batches are not sorted by label.
  train, dev = np.concatenate(train), np.concatenate(dev)
  rng = np.random.default_rng(seed + 1)
  return rng.permutation(train), rng.permutation(dev)


TEST_SEED = 0  # one test sample for every training seed, so seeds differ only in what they train on


def sample_rows(num_rows: int, num_train: int, num_dev: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train_indices, dev_indices): the first num_train + num_dev rows of a seeded shuffle, the last
  num_dev of them for dev (MeZO large_models: `sample_subset(num=num_train + num_dev)`, dev at the end)."""
  if num_train + num_dev > num_rows:
    raise ConfigError(f"data.num_train={num_train} + data.num_dev={num_dev} is more than the {num_rows} training rows")
  order = np.random.default_rng(seed).permutation(num_rows)
  return order[:num_train], order[num_train : num_train + num_dev]


def sample_test(num_rows: int, num_test: int) -> np.ndarray:
  """num_test rows of the test split in file order (a shuffle by TEST_SEED); all of them when 0 or too few."""
  if not 0 < num_test < num_rows:
    return np.arange(num_rows)
  return np.sort(np.random.default_rng(TEST_SEED).permutation(num_rows)[:num_test])
