"""Label trees ("train" / "freeze") over params, and the optax transform they drive.

The labels are the one mechanism that decides what trains: `partition` gives trainable
leaves the optimizer (with state) and frozen leaves `set_to_zero` (no state at all).
"""

import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from fttpu.errors import ConfigError
from fttpu.models import perturbation

TRAIN, FREEZE = "train", "freeze"


def path_name(key_path) -> str:
  """'layers/query/kernel' for a tree path."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in key_path)


def label_all(params, label: str):
  return jax.tree_util.tree_map(lambda _: label, params)


def label_matching(tree, pattern: str, key: str = "pattern"):
  """TRAIN where the leaf's path ('model/layers/query/bias') matches `pattern` (re.search)."""
  regex = re.compile(pattern)
  labels = jax.tree_util.tree_map_with_path(lambda path, _: TRAIN if regex.search(path_name(path)) else FREEZE, tree)
  if TRAIN not in jax.tree_util.tree_leaves(labels):
    raise ConfigError(f"{key}={pattern!r} matches no parameter; parameter paths are: {leaf_paths(tree)}")
  return labels


def leaf_paths(tree) -> list[str]:
  return [path_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def partition(labels: Callable, trainable: optax.GradientTransformation) -> optax.GradientTransformation:
  """`trainable` on leaves labelled TRAIN, zero updates and no optimizer state on FREEZE."""
  return optax.partition({TRAIN: trainable, FREEZE: optax.set_to_zero()}, labels)


def count_trainable(params, labels) -> int:
  return sum(
    int(p.size) for p, l in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(labels)) if l == TRAIN
  )


def optimizer_state_entries(opt_state) -> int:
  """Entries of the optimizer's per-parameter buffers (Adam's moments, momentum), without scalars
  such as step counters: what a method's optimizer memory grows with."""
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(opt_state) if jnp.ndim(x) > 0)


def split(tree, labels):
  """(list of the TRAIN leaves, rebuild) where rebuild(new TRAIN leaves) is the whole tree again."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  flags = [label == TRAIN for label in treedef.flatten_up_to(labels)]

  def rebuild(trainable):
    it = iter(trainable)
    return treedef.unflatten([next(it) if f else x for x, f in zip(leaves, flags)])

  return [x for x, f in zip(leaves, flags) if f], rebuild


def fill(tree, labels, trainable_values):
  """A tree shaped like `tree`: `trainable_values` on TRAIN leaves, zeros elsewhere."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  it = iter(trainable_values)
  return treedef.unflatten(
    [next(it) if label == TRAIN else jnp.zeros_like(x) for x, label in zip(leaves, treedef.flatten_up_to(labels))]
  )


def apply_updates(params, updates, labels, key):
  """params + updates on TRAIN leaves; FREEZE leaves are returned as they are, bit for bit.

  (optax.apply_updates would add the zero updates, which turns -0.0 into +0.0.)
  Leaves stored below float32 (bfloat16, float16) are updated in float32 and rounded back
  stochastically with `key` (see `stochastic_round`), so updates smaller than half the spacing
  between representable weights move them in expectation instead of vanishing.
  """
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))

  def update(label, p, u, k):
    if label != TRAIN:
      return p
    if jnp.dtype(p.dtype).itemsize < 4:
      return stochastic_round(p.astype(jnp.float32) + u.astype(jnp.float32), p.dtype, k)
    return (p + u).astype(p.dtype)

  return jax.tree_util.tree_unflatten(
    treedef,
    [
      update(label, p, u, k)
      for label, p, u, k in zip(jax.tree_util.tree_leaves(labels), leaves, treedef.flatten_up_to(updates), keys)
    ],
  )


def rounding_bits(key: jax.Array, shape: tuple) -> jax.Array:
  """32 random bits (uint32) per entry of `shape` for stochastic rounding: a hash of the entry's position
  and one draw of `key` (perturbation.entry_bits). Element-wise, so it fuses into its consumer:
  jax.random.bits of a leaf's shape is a stored array of the leaf's size on CPU (threefry runs as a loop),
  several GiB per step for a billion-parameter model. Positions past 2^32 wrap (their dither repeats),
  harmless here."""
  return perturbation.entry_bits(jax.random.bits(key, (2,), jnp.uint32), shape)


def stochastic_round(x: jax.Array, dtype, key: jax.Array) -> jax.Array:
  """x (float32) in `dtype` (bfloat16, float16), rounded to one of its two neighbours with probability
  by proximity (unbiased: E[result] = x; NaN and infinities pass through).

  On the bits: adding a random integer below 2^d to the magnitude's bits and clearing their low d bits,
  d the float32 mantissa bits `dtype` lacks (16 for bfloat16, 13 for float16; more in float16's
  subnormal range, whose spacing stays 2^-24), carries into the kept bits with probability exactly
  the dropped fraction. Integer arithmetic in place of rounding to nearest, stepping with nextafter
  and comparing a uniform to the gap: 0.77 -> 0.60 ns an entry of a float16 update in place on this
  CPU, the hash included (experiments/noise_cost.py)."""
  info = jnp.finfo(dtype)
  lacking = 23 - info.nmant
  raw = jax.lax.bitcast_convert_type(x, jnp.uint32)
  magnitude = raw & jnp.uint32(0x7FFFFFFF)
  if info.minexp > -126:  # float16's subnormals (below 2^-14) keep one bit fewer per binade, to 2^-24's 23
    biased_exponent = (magnitude >> 23).astype(jnp.int32)  # 127 + floor(log2 |x|)
    dropped = lacking + jnp.clip(info.minexp + 127 - biased_exponent, 0, info.nmant).astype(jnp.uint32)
    low = (jnp.uint32(1) << dropped) - 1
  else:  # bfloat16 shares float32's exponents: the same 16 bits everywhere
    low = jnp.uint32((1 << lacking) - 1)
  bits = rounding_bits(key, x.shape)
  rounded = ((magnitude + (bits & low)) & ~low) | (raw & jnp.uint32(0x80000000))
  rounded = jax.lax.bitcast_convert_type(rounded, jnp.float32)
  smallest = np.float32(2.0 ** (info.minexp - info.nmant))  # 2^-24 (float16), 2^-133 (bfloat16)
  if smallest >= np.finfo(np.float32).tiny:  # float16: below its smallest subnormal, 0 or +-2^-24
    fraction = jnp.abs(x) / smallest
    tiny = jnp.copysign(jnp.where((bits >> 8).astype(jnp.int32) < fraction * 2**24, smallest, 0.0), x)
    rounded = jnp.where(jnp.abs(x) < smallest, tiny, rounded)
  return jnp.where(jnp.isfinite(x), rounded, x).astype(dtype)
