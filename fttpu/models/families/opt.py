"""OPT: the decoder of fttpu/models/decoder.py with learned positions (offset 2), LayerNorm, ReLU and biases."""

from typing import Any

import tokenizers
from tokenizers import processors

from fttpu.data import vocab
from fttpu.models import decoder
from fttpu.models.families.base import Family, Names, register, tiny_common
from fttpu.models.transformer import ModelConfig

POSITION_OFFSET = 2  # OPT's learned position table has two leading rows it never uses for tokens
LAYER = {
  "query": "self_attn.q_proj",
  "key": "self_attn.k_proj",
  "value": "self_attn.v_proj",
  "attention_out": "self_attn.out_proj",
  "attention_norm": "self_attn_layer_norm",
  "mlp_in": "fc1",
  "mlp_out": "fc2",
  "mlp_norm": "final_layer_norm",
}


def config_from_hf(hf: dict[str, Any], **overrides) -> ModelConfig:
  """The ModelConfig of a Hugging Face OPT config.json."""
  if hf.get("word_embed_proj_dim", hf["hidden_size"]) != hf["hidden_size"]:
    raise ValueError(
      f"word_embed_proj_dim={hf['word_embed_proj_dim']} != hidden_size={hf['hidden_size']} "
      "(OPT-350m's project_in/out) is not supported"
    )
  if not hf.get("layer_norm_elementwise_affine", True):
    raise ValueError("layer_norm_elementwise_affine=false is not supported")
  pre_norm = hf.get("do_layer_norm_before", True)
  return ModelConfig(
    family="opt",
    vocab_size=hf["vocab_size"],
    hidden_size=hf["hidden_size"],
    num_layers=hf["num_hidden_layers"],
    num_heads=hf["num_attention_heads"],
    intermediate_size=hf["ffn_dim"],
    max_positions=hf["max_position_embeddings"] + POSITION_OFFSET,
    norm_eps=1e-5,
    hidden_act=hf.get("activation_function", "relu"),
    pre_norm=pre_norm,
    use_bias=hf.get("enable_bias", True),
    causal=True,
    hidden_dropout=hf.get("dropout", 0.1),
    attention_dropout=hf.get("attention_dropout", 0.0),
    pad_token_id=hf.get("pad_token_id", 1),
    position_offset=POSITION_OFFSET,
    final_norm=pre_norm and not hf.get("_remove_final_layer_norm", False),
    lm_head=True,
    tied_embeddings=hf.get("tie_word_embeddings", True),
    **overrides,
  )


def tiny_config(vocab_size: int, max_positions: int) -> dict:
  return {
    "architectures": ["OPTForCausalLM"],
    "model_type": "opt",
    **tiny_common(vocab_size, max_positions),
    "ffn_dim": 128,
    "word_embed_proj_dim": tiny_common(0, 0)["hidden_size"],
    "do_layer_norm_before": True,
    "activation_function": "relu",
    "pad_token_id": 1,
    "bos_token_id": 2,
    "eos_token_id": 2,
    "enable_bias": True,
  }


def tokenizer(texts, vocab_size: int) -> tokenizers.Tokenizer:
  out = vocab.byte_level(texts, ["<s>", "<pad>", "</s>", "<unk>"], vocab_size)
  out.post_processor = processors.TemplateProcessing(
    single="</s> $A", pair="</s> $A </s> $B:1", special_tokens=[("</s>", 2)]
  )
  return out


FAMILY = register(
  Family(
    name="opt",
    config_from_hf=config_from_hf,
    module=decoder.Decoder,
    masked_lm=False,
    names=Names(
      ("model.decoder.", "decoder.", ""),
      "layers.{i}.",
      {"word": "embed_tokens", "position": "embed_positions", "final_norm": "final_layer_norm"},
      LAYER,
      {},
      (r"^lm_head\.weight$",),
    ),
    default_classifier="causal",
    output_embedding="word",
    tiny_config=tiny_config,
    tokenizer=tokenizer,
  )
)
