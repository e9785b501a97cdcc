"""LoRA adapters (Hu et al.), with the rsLoRA scale, DoRA magnitudes and PiSSA initialisation.

For each projection whose path matches `lora.targets` (default query and value), the model
computes x W + scale * dropout(x) A B (see models/transformer.py `Projection`); only A, B (and DoRA's
magnitude) train. scale = alpha / r, or alpha / sqrt(r) with rsLoRA.
  - default init: A Kaiming-uniform (as PEFT), B = 0, so the step-0 model is the base model.
  - PiSSA: A, B from the top-r singular triplets of W, and W keeps the residual W - scale A B.
  - DoRA: magnitude m = ||W||_in per output unit; output rescaled by m / ||W + scale A B||.
The artifact is the adapters only; for PiSSA it is rank 2r ([A; -A0], [B, B0]) so that it adds
onto the untouched pretrained weights.
"""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from fttpu.errors import ConfigError, check, check_regex
from fttpu.methods import masks
from fttpu.methods.base import (
  extra_leaves,
  make_method,
  register,
  register_added_leaves,
  register_section,
  scatter_deltas,
)
from fttpu.models.transformer import lora_delta
from fttpu.sharding import to_host

TRAINABLE = ("lora_a", "lora_b", "dora_magnitude")


def target_modules(model: dict, pattern: str) -> list[tuple]:
  """Paths of the projections (modules with a kernel of >= 2 axes per layer) matching `pattern`."""
  regex = re.compile(pattern)
  modules = [p[:-1] for p, v in traverse_util.flatten_dict(model).items() if p[-1] == "kernel" and v.ndim >= 3]
  chosen = [m for m in modules if regex.search("/".join(m))]
  if not chosen:
    raise ConfigError(
      f"lora.targets={pattern!r} matches no projection; valid projections: {['/'.join(m) for m in modules]}"
    )
  return chosen


def _in_dims(name: str) -> int:
  return 2 if name == "attention_out" else 1  # attention_out contracts (heads, head_dim)


LORA_LEAVES = ("lora_a", "lora_b", "lora_scale", "lora_dropout", "dora_magnitude", "lora_a0", "lora_b0")


def fold_adapter(kernel, a, b, scale, magnitude=None):
  """One projection's kernel with its LoRA (and DoRA magnitude) folded in."""
  merged = kernel + lora_delta(a, b, scale)
  if magnitude is not None:
    merged = merged * (magnitude / jnp.sqrt(jnp.sum(jnp.square(merged), axis=tuple(range(a.ndim - 1)))))
  return merged


def fold_adapters(model: dict) -> dict:
  """Model params with every LoRA/DoRA adapter folded into its kernel (and its leaves removed)."""
  flat = traverse_util.flatten_dict(model)
  for module in [p[:-1] for p in flat if p[-1] == "lora_a"]:
    get = lambda name: flat.get(module + (name,))
    fold = jax.vmap(fold_adapter) if get("lora_scale").ndim else fold_adapter  # stacked layers: (L, ...)
    kernel = get("kernel")
    flat[module + ("kernel",)] = fold(
      kernel, get("lora_a"), get("lora_b"), get("lora_scale"), get("dora_magnitude")
    ).astype(kernel.dtype)
  return traverse_util.unflatten_dict({p: v for p, v in flat.items() if p[-1] not in LORA_LEAVES})


def merge(tree) -> dict:
  """Plain model weights: deltas scattered and every adapter folded into its kernel."""
  tree = scatter_deltas(tree)
  return {**tree, "model": fold_adapters(tree["model"])}


def init_adapter(kernel, in_dims: int, rank: int, scale: float, rng, pissa: bool):
  """(A, B, residual kernel or None) for one layer's kernel (in..., out...). Only PiSSA reads the
  kernel's values (a numpy array then); otherwise its shape is all that is used."""
  in_shape, out_shape = kernel.shape[:in_dims], kernel.shape[in_dims:]
  rows = int(np.prod(in_shape))
  if pissa:
    matrix = kernel.reshape(rows, int(np.prod(out_shape)))
    u, s, vt = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
    root = np.sqrt(s[:rank] / scale)
    a, b = u[:, :rank] * root, root[:, None] * vt[:rank]
    residual = matrix - scale * (a @ b)
    return (
      a.reshape(in_shape + (rank,)).astype(np.float32),
      b.reshape((rank,) + out_shape).astype(np.float32),
      residual.reshape(kernel.shape).astype(kernel.dtype),
    )
  bound = 1.0 / np.sqrt(rows)  # PEFT: kaiming_uniform(a=sqrt(5)) on A, fan_in = in features
  a = np.asarray(jax.random.uniform(rng, (rows, rank), jnp.float32, -bound, bound))
  return a.reshape(in_shape + (rank,)), np.zeros((rank,) + out_shape, np.float32), None


def section() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    {
      "rank": 8,
      "alpha": 16.0,
      "dropout": 0.0,
      "targets": "query|value",  # regex over projection paths (layers/query, layers/mlp_in, ...)
      "rslora": False,  # scale alpha / sqrt(rank) instead of alpha / rank
      "dora": False,  # DoRA: trained magnitude per output unit
      "pissa": False,  # PiSSA: initialise from the top singular vectors
    }
  )


def check_section(config) -> None:
  l = config.lora
  check(l.rank >= 1, "lora.rank", l.rank, "an integer >= 1")
  check(l.alpha > 0, "lora.alpha", l.alpha, "a number > 0")
  check(0 <= l.dropout < 1, "lora.dropout", l.dropout, "a probability in [0, 1)")
  check_regex(l.targets, "lora.targets")


register_section("lora", section, check_section)


def leaf_axes(path: tuple, shape: tuple, model_axes: dict):
  """Logical names of an adapter leaf, from its kernel's: A (layers, in..., rank) shares its input axes,
  B (layers, rank, out...) its output axes, DoRA's magnitude (layers, out...) too."""
  name, kernel = path[-1], model_axes.get(path[:-1] + ("kernel",))
  if kernel is None:
    return None
  kernel = tuple(kernel)
  if name in ("lora_a", "lora_a0"):
    return kernel[: len(shape) - 1] + (None,)
  if name in ("lora_b", "lora_b0"):
    return kernel[:1] + (None,) + kernel[len(kernel) - len(shape) + 2 :]
  if name == "dora_magnitude":
    return kernel[:1] + kernel[len(kernel) - len(shape) + 1 :]
  return kernel[:1]  # lora_scale, lora_dropout: one per layer


register_added_leaves("lora_", leaf_axes)
register_added_leaves("dora_", leaf_axes)


@register("lora", learning_rate=5e-4, zo_learning_rate=1e-3)
def make(config, model):
  c = config.lora
  scale = c.alpha / (np.sqrt(c.rank) if c.rslora else c.rank)

  def prepare(params, rng, context=None):
    flat = traverse_util.flatten_dict(params)
    for index, module in enumerate(target_modules(params, c.targets)):
      kernel = flat[module + ("kernel",)]
      layers = kernel.shape[0]
      if c.pissa or c.dora:  # the adapters start from the weight's values (else from its shape only)
        kernel = to_host(kernel)
      layer_shape = jax.ShapeDtypeStruct(kernel.shape[1:], kernel.dtype)
      adapters = [
        init_adapter(
          kernel[l] if c.pissa else layer_shape,
          _in_dims(module[-1]),
          c.rank,
          scale,
          jax.random.fold_in(rng, index * layers + l),
          c.pissa,
        )
        for l in range(layers)
      ]
      a, b = (np.stack(parts) for parts in list(zip(*adapters))[:2])
      flat[module + ("lora_a",)], flat[module + ("lora_b",)] = a, b
      flat[module + ("lora_scale",)] = np.full((layers,), scale, np.float32)
      if c.dropout:
        flat[module + ("lora_dropout",)] = np.full((layers,), c.dropout, np.float32)
      if c.dora:
        in_axes = tuple(range(1, 1 + _in_dims(module[-1])))  # (PiSSA: residual + scale A B = kernel)
        flat[module + ("dora_magnitude",)] = to_host(jnp.sqrt(jnp.square(kernel.astype(jnp.float32)).sum(in_axes)))
      if c.pissa:
        flat[module + ("lora_a0",)], flat[module + ("lora_b0",)] = a.copy(), b.copy()
        flat[module + ("kernel",)] = np.stack([residual for _, _, residual in adapters])
      # (otherwise the kernel stays as it was given: on the host, or sharded over the devices)
    return {"model": traverse_util.unflatten_dict(flat)}

  def labels(tree):
    return jax.tree_util.tree_map_with_path(
      lambda path, _: masks.TRAIN if str(path[-1].key) in TRAINABLE else masks.FREEZE, tree
    )

  def artifact(tree):
    """The adapters; PiSSA's as rank-2r adapters over the pretrained (not the residual) kernel."""
    if not c.pissa:
      return extra_leaves(tree)
    flat = traverse_util.flatten_dict(extra_leaves(tree))
    for module in [p[:-1] for p in flat if p[-1] == "lora_a0"]:
      a, b, a0, b0 = (
        flat.pop(module + (n,)) if n.endswith("0") else flat[module + (n,)]
        for n in ("lora_a", "lora_b", "lora_a0", "lora_b0")
      )
      flat[module + ("lora_a",)] = jnp.concatenate([a, -a0], axis=-1)
      flat[module + ("lora_b",)] = jnp.concatenate([b, b0], axis=1)
    return traverse_util.unflatten_dict(flat)

  return make_method("lora", prepare, labels, merge=merge, artifact=artifact)
