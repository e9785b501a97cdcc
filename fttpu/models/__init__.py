"""Model families by name: a Flax module, its config, checkpoint import and tokenizer."""
import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tokenizers

from fttpu.models import bert, hf


@dataclasses.dataclass(frozen=True)
class Family:
  config_from_hf: Callable[[dict], Any]
  module: Callable[[Any], nn.Module]
  converter: Callable[[Any], Callable]
  ignored: tuple[str, ...]


FAMILIES = {
    "bert": Family(bert.BertConfig.from_hf, bert.BertEncoder, hf.bert_converter, hf.BERT_IGNORED),
}


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A pretrained encoder: module, params (numpy, host memory) and tokenizer."""
  module: nn.Module
  params: dict
  tokenizer: tokenizers.Tokenizer
  config: Any
  checkpoint_dir: str


def get_family(name: str) -> Family:
  if name not in FAMILIES:
    raise ValueError(f"unknown model.family {name!r}; valid: {sorted(FAMILIES)}")
  return FAMILIES[name]


def load(family_name: str, checkpoint_dir: str) -> LoadedModel:
  """Loads config.json, safetensors and tokenizer.json of a Hugging Face directory."""
  family = get_family(family_name)
  path = hf.resolve_checkpoint_dir(checkpoint_dir)
  config = family.config_from_hf(hf.read_config(path))
  module = family.module(config)
  dummy = jnp.zeros((1, 4), jnp.int32)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), dummy, dummy)["params"])
  params = hf.load_params(path, family.converter(config), family.ignored, shapes)
  tokenizer_path = f"{path}/tokenizer.json"
  try:
    tokenizer = tokenizers.Tokenizer.from_file(tokenizer_path)
  except Exception as e:  # tokenizers raises a bare Exception for missing or malformed files
    raise hf.CheckpointError(f"cannot read {tokenizer_path}: {e}") from e
  params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)
  return LoadedModel(module, params, tokenizer, config, path)
