"""RoBERTa: BERT's encoder with positions counted from pad + 1, one token type and a byte-level BPE."""

import functools

import tokenizers
from tokenizers import AddedToken, processors

from fttpu.data import vocab
from fttpu.models import bert as encoder
from fttpu.models.families import bert
from fttpu.models.families.base import Family, Names, register, tiny_common


def tiny_config(vocab_size: int, max_positions: int) -> dict:
  return {
    "architectures": ["RobertaForMaskedLM"],
    "model_type": "roberta",
    **tiny_common(vocab_size, max_positions),
    "intermediate_size": 128,
    "type_vocab_size": 1,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "layer_norm_eps": 1e-5,
    "max_position_embeddings": max_positions + 2,
    "hidden_act": "gelu",
  }


def tokenizer(texts, vocab_size: int) -> tokenizers.Tokenizer:
  out = vocab.byte_level(
    texts, ["<s>", "<pad>", "</s>", "<unk>", AddedToken("<mask>", lstrip=True, special=True)], vocab_size
  )
  out.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False)
  return out


FAMILY = register(
  Family(
    name="roberta",
    config_from_hf=functools.partial(bert.config_from_hf, family="roberta"),
    module=encoder.BertEncoder,
    masked_lm=True,
    names=Names(
      ("roberta.", ""),
      "encoder.layer.{i}.",
      bert.MODULES,
      bert.LAYER,
      {"lm_transform": "lm_head.dense", "lm_norm": "lm_head.layer_norm", "lm_bias": "lm_head.bias"},
      bert.IGNORED,
      head_only=(r"^lm_head\.",),
    ),
    default_classifier="mlm",
    output_embedding="word",
    tiny_config=tiny_config,
    tokenizer=tokenizer,
  )
)
