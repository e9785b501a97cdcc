"""Sparse deltas: the trainable entries of a weight as (flat index, value) pairs.

tree["delta"] mirrors the model tree down to each chosen weight, which holds
{"index": int32 (n,), "value": float32 (n,)}; the weight in use is base + scatter(value, index)
(base.scatter_deltas). Only the values train, so the optimizer state is sized to n, not to
the weight. Sparse (fixed masks), SpIEL (dynamic masks) and layer selection all use this.
"""

import numpy as np
import jax
from flax import traverse_util

from fttpu.methods import masks


def is_delta(_, x) -> bool:
  return isinstance(x, dict) and "index" in x


def build(params, indices: dict) -> dict:
  """{"model": params, "delta": ...} with zero values at `indices` ({model path tuple: flat indices})."""
  delta = {
    path: {"index": np.sort(np.asarray(index, np.int64)).astype(np.int32), "value": np.zeros(len(index), np.float32)}
    for path, index in indices.items()
    if len(index)
  }
  return {"model": params, "delta": traverse_util.unflatten_dict(delta)}


def labels(tree):
  """Delta values train; everything else (the base weights, the indices) is frozen."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: (
      masks.TRAIN if masks.path_name(path).startswith("delta/") and path[-1].key == "value" else masks.FREEZE
    ),
    tree,
  )


def flat_deltas(tree) -> dict:
  return traverse_util.flatten_dict(tree["delta"], is_leaf=is_delta)


def count(density: float, size: int) -> int:
  """Entries kept at `density` of `size` (at least one)."""
  return max(1, int(round(density * size)))


def top(scores: np.ndarray, n: int) -> np.ndarray:
  """Flat indices of the n largest scores."""
  flat = scores.reshape(-1)
  return np.argpartition(-flat, n - 1)[:n] if n < flat.size else np.arange(flat.size)


def target_paths(params, pattern: str, key: str) -> list[tuple]:
  """Model paths of the leaves matching `pattern` (error naming the valid paths if none)."""
  labels = masks.label_matching(params, pattern, key)
  return [
    tuple(k.key for k in path) for path, label in jax.tree_util.tree_leaves_with_path(labels) if label == masks.TRAIN
  ]


def remap_optimizer_state(opt_state, remaps: dict):
  """Optimizer-state leaves of delta values re-ordered: remaps[path] gives, per new entry, its old
  position, or -1 for a new entry whose state starts at zero (moments of a regrown weight)."""
  suffixes = {"delta/" + "/".join(path) + "/value": source for path, source in remaps.items()}

  def remap(path, x):
    name = masks.path_name(path)
    source = next((s for suffix, s in suffixes.items() if name.endswith(suffix)), None)
    if source is None:
      return x
    x = np.asarray(x)
    return np.where(source >= 0, x[np.maximum(source, 0)], 0).astype(x.dtype)

  return jax.tree_util.tree_map_with_path(remap, opt_state)
