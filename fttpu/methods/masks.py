"""Label trees ("train" / "freeze") over params, and the optax transform they drive.

The labels are the one mechanism that decides what trains: `partition` gives trainable
leaves the optimizer (with state) and frozen leaves `set_to_zero` (no state at all).
"""
from typing import Callable

import jax
import optax

TRAIN, FREEZE = "train", "freeze"


def path_name(key_path) -> str:
  """'layers/query/kernel' for a tree path."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in key_path)


def label_all(params, label: str):
  return jax.tree_util.tree_map(lambda _: label, params)


def partition(labels: Callable, trainable: optax.GradientTransformation) -> optax.GradientTransformation:
  """`trainable` on leaves labelled TRAIN, zero updates and no optimizer state on FREEZE."""
  return optax.partition({TRAIN: trainable, FREEZE: optax.set_to_zero()}, labels)


def count_trainable(params, labels) -> int:
  return sum(int(p.size) for p, l in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(labels))
             if l == TRAIN)


def apply_updates(params, updates, labels):
  """params + updates on TRAIN leaves; FREEZE leaves are returned as they are, bit for bit.

  (optax.apply_updates would add the zero updates, which turns -0.0 into +0.0.)
  """
  return jax.tree_util.tree_map(lambda label, p, u: (p + u).astype(p.dtype) if label == TRAIN else p,
                                labels, params, updates)
