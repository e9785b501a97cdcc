"""What a model family declares, and the registry of families by name (config.model.family)."""

import dataclasses
from typing import Callable

import flax.linen as nn
import tokenizers

from fttpu.models.transformer import ModelConfig
from fttpu.registry import Registry


@dataclasses.dataclass(frozen=True)
class Names:
  """Where a family's parameters live in Hugging Face checkpoints.

  `prefixes`: the base model's prefixes (with a head first, then the bare model); `modules` and
  `layer_modules` (under `layer`, with {i} the layer) map Flax module names to HF module names;
  `head` maps head modules/leaves to absolute HF names; `ignored` are regexes of tensors that
  have no parameter here (tied copies, buffers, unused heads); `head_only` those of a head that a
  model built without it does not read.
  """

  prefixes: tuple[str, ...]
  layer: str
  modules: dict
  layer_modules: dict
  head: dict
  ignored: tuple[str, ...]
  head_only: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  config_from_hf: Callable[..., ModelConfig]  # (config.json dict, **ModelConfig overrides) -> ModelConfig
  module: Callable[[ModelConfig], nn.Module]
  masked_lm: bool  # an MLM head is optional (encoders); decoders always have theirs
  names: Names  # the Hugging Face tensor names (fttpu.models.hf)
  default_classifier: str  # similarity | mlm | causal (configs/fewshot.py)
  output_embedding: str  # the parameter whose rows score words (the zero-shot head of fttpu.classifier)
  tiny_config: Callable[[int, int], dict]  # (vocab size, positions) -> a tiny config.json (fttpu.models.tiny)
  tokenizer: Callable[[list, int], tokenizers.Tokenizer]  # (texts, vocab size) -> a tokenizer of its kind


FAMILIES: Registry[Family] = Registry("model family")


def register(family: Family) -> Family:
  return FAMILIES.register(family.name, family)


TINY_SIZES = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}


def tiny_common(vocab_size: int, max_positions: int) -> dict:
  return {"vocab_size": vocab_size, **TINY_SIZES, "max_position_embeddings": max_positions}
