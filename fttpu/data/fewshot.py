"""The LM-BFF / MeZO few-shot protocol: k train and k dev examples per class, chosen by a seed."""
import numpy as np

from fttpu.config import ConfigError

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
      raise ConfigError(f"class {label} has {len(rows)} training rows; k={k} needs {2 * k} (k train + k dev); "
                        f"lower data.k")
    train.append(rows[:k])
    dev.append(rows[k:2 * k])
  # Interleave classes in shuffled order so batches are not sorted by label.
  train, dev = np.concatenate(train), np.concatenate(dev)
  rng = np.random.default_rng(seed + 1)
  return rng.permutation(train), rng.permutation(dev)
