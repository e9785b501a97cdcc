"""LoRA adapters (Hu et al.), with the rsLoRA scale, DoRA magnitudes and PiSSA initialisation.

For each projection whose path matches `lora.targets` (default query and value), the model
computes x W + scale * dropout(x) A B (see models/transformer.py `Projection`); only A, B (and DoRA's
magnitude) train. scale = alpha / r, or alpha / sqrt(r) with rsLoRA.
  - default init: A Kaiming-uniform (as PEFT), B = 0, so the step-0 model is the base model.
  - PiSSA: A, B from the top-r singular triplets of W, and W keeps the residual W - scale A B.
  - DoRA: magnitude m = ||W||_in per output unit; output rescaled by m / ||W + scale A B||.
The artifact is the adapters only; for PiSSA it is rank 2r ([A; -A0], [B, B0]) so that it adds
onto the untouched pretrained weights.
On a quantised base (model.quantize: QLoRA with nf4) the adapters stay unmerged beside the quantised
kernels, for evaluation too; PiSSA, which rewrites the base weights, is refused there.
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
from fttpu.models import quantize
from fttpu.models.transformer import lora_delta
from fttpu.sharding import to_host

TRAINABLE = ("lora_a", "lora_b", "dora_magnitude")


KERNEL_LEAVES = ("kernel", *quantize.VALUE_LEAVES)  # a projection's kernel, as it is stored


def target_modules(model: dict, pattern: str) -> list[tuple]:
  """Paths of the projections (modules with a kernel of >= 2 axes per layer, float or quantised) matching
  `pattern`."""
  regex = re.compile(pattern)
  modules = [p[:-1] for p, v in traverse_util.flatten_dict(model).items() if p[-1] in KERNEL_LEAVES and v.ndim >= 3]
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
  """Model params with every LoRA/DoRA adapter folded into its float kernel (and its leaves removed);
  adapters on quantised kernels stay as they are (the model applies them unmerged)."""
  flat = traverse_util.flatten_dict(model)
  for module in [p[:-1] for p in flat if p[-1] == "lora_a" and p[:-1] + ("kernel",) in flat]:
    get = lambda name: flat.get(module + (name,))
    fold = jax.vmap(fold_adapter) if get("lora_scale").ndim else fold_adapter  # stacked layers: (L, ...)
    kernel = get("kernel")
    flat[module + ("kernel",)] = fold(
      kernel, get("lora_a"), get("lora_b"), get("lora_scale"), get("dora_magnitude")
    ).astype(kernel.dtype)
  folded = lambda p: p[-1] in LORA_LEAVES and p[:-1] + ("kernel",) in flat
  return traverse_util.unflatten_dict({p: v for p, v in flat.items() if not folded(p)})


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


def kernel_shape(stored: dict, in_dims: int) -> tuple:
  """(layers, one layer's kernel as a ShapeDtypeStruct) of a projection's leaves {name: stacked value},
  whether its kernel is float or quantised."""
  mode = quantize.stored_mode(stored)
  if mode == "none":
    kernel = stored["kernel"]
    return kernel.shape[0], jax.ShapeDtypeStruct(kernel.shape[1:], kernel.dtype)
  values = stored[quantize.LEAVES[mode][0]]
  return values.shape[0], jax.ShapeDtypeStruct(quantize.kernel_shape(mode, values.shape[1:], in_dims), jnp.float32)


def kernel_norms(stored: dict, in_dims: int):
  """||W|| over the input axes per output unit of each layer's kernel (DoRA's initial magnitude), as a
  float32 host array; a quantised kernel is dequantised one layer at a time."""
  mode = quantize.stored_mode(stored)
  if mode == "none":
    kernel = to_host(stored["kernel"]).astype(jnp.float32)
    return to_host(jnp.sqrt(jnp.square(kernel).sum(tuple(range(1, 1 + in_dims)))))
  leaves = {name: to_host(stored[name]) for name in quantize.LEAVES[mode]}
  layer = lambda l: quantize.dequantize({name: v[l] for name, v in leaves.items()}, in_dims, jnp.float32)
  layers = len(leaves[quantize.LEAVES[mode][0]])
  return to_host(jnp.stack([jnp.sqrt(jnp.square(layer(l)).sum(tuple(range(in_dims)))) for l in range(layers)]))


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
  mode = config.model.get("quantize", "none")
  uses_lora = config.method == "lora" or (config.method == "zo" and config.zo.base == "lora")
  check(
    not (l.pissa and uses_lora and mode != "none"),
    "lora.pissa",
    l.pissa,
    f"False with model.quantize={mode!r}: PiSSA replaces the base weights by their residual, which a quantised "
    "base cannot hold (model.quantize=none for PiSSA)",
  )


register_section("lora", section, check_section)


def leaf_axes(path: tuple, shape: tuple, model_axes: dict):
  """Logical names of an adapter leaf, from its kernel's: A (layers, in..., rank) shares its input axes,
  B (layers, rank, out...) its output axes, DoRA's magnitude (layers, out...) too."""
  name = path[-1]
  kernel = next((model_axes[path[:-1] + (k,)] for k in KERNEL_LEAVES if path[:-1] + (k,) in model_axes), None)
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


@register("lora", learning_rate=5e-4, zo_learning_rate=1e-3, frozen_base=True)
def make(config, model):
  c = config.lora
  scale = c.alpha / (np.sqrt(c.rank) if c.rslora else c.rank)

  def prepare(params, rng, context=None):
    flat = traverse_util.flatten_dict(params)
    for index, module in enumerate(target_modules(params, c.targets)):
      stored = {p[-1]: v for p, v in flat.items() if p[:-1] == module}
      layers, layer_shape = kernel_shape(stored, _in_dims(module[-1]))
      kernel = to_host(stored["kernel"]) if c.pissa else None  # PiSSA starts from the values (else the shape)
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
      if c.dora:  # (PiSSA: residual + scale A B = kernel)
        flat[module + ("dora_magnitude",)] = kernel_norms(stored, _in_dims(module[-1]))
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
