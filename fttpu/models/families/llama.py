"""Llama: the decoder of fttpu/models/decoder.py with rotary positions, RMSNorm, SwiGLU and grouped-query
attention, no biases, and an output matrix of its own unless tie_word_embeddings."""

from typing import Any

import tokenizers
from tokenizers import processors

from fttpu.data import vocab
from fttpu.models import decoder
from fttpu.models.families.base import Family, Names, register, tiny_common
from fttpu.models.transformer import ModelConfig

LAYER = {
  "query": "self_attn.q_proj",
  "key": "self_attn.k_proj",
  "value": "self_attn.v_proj",
  "attention_out": "self_attn.o_proj",
  "attention_norm": "input_layernorm",
  "mlp_norm": "post_attention_layernorm",
  "mlp_gate": "mlp.gate_proj",
  "mlp_in": "mlp.up_proj",
  "mlp_out": "mlp.down_proj",
}


def config_from_hf(hf: dict[str, Any], **overrides) -> ModelConfig:
  """The ModelConfig of a Hugging Face Llama config.json."""
  # transformers < 5 writes rope_theta and rope_scaling; 5 writes rope_parameters.
  rope = {
    "rope_theta": hf.get("rope_theta", 10000.0),
    **(hf.get("rope_scaling") or {}),
    **(hf.get("rope_parameters") or {}),
  }
  if rope.get("rope_type", rope.get("type", "default")) != "default":
    raise ValueError(f"rope scaling {rope} is not supported; only plain rotary positions (rope_type default) are")
  if hf.get("attention_bias", False) or hf.get("mlp_bias", False):
    raise ValueError("attention_bias/mlp_bias=true is not supported (Llama has no biases)")
  return ModelConfig(
    family="llama",
    vocab_size=hf["vocab_size"],
    hidden_size=hf["hidden_size"],
    num_layers=hf["num_hidden_layers"],
    num_heads=hf["num_attention_heads"],
    num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
    head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
    intermediate_size=hf["intermediate_size"],
    max_positions=hf.get("max_position_embeddings", 2048),
    norm_eps=hf.get("rms_norm_eps", 1e-6),
    hidden_act=hf.get("hidden_act", "silu"),
    pre_norm=True,
    rms_norm=True,
    gated_mlp=True,
    use_bias=False,
    causal=True,
    rotary_theta=rope["rope_theta"],
    hidden_dropout=0.0,
    attention_dropout=hf.get("attention_dropout", 0.0),
    pad_token_id=hf.get("pad_token_id") or 0,
    final_norm=True,
    lm_head=True,
    tied_embeddings=hf.get("tie_word_embeddings", False),
    **overrides,
  )


def tiny_config(vocab_size: int, max_positions: int) -> dict:
  return {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    **tiny_common(vocab_size, max_positions),
    "intermediate_size": 128,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
  }


def tokenizer(texts, vocab_size: int) -> tokenizers.Tokenizer:
  out = vocab.byte_level(texts, ["<unk>", "<s>", "</s>"], vocab_size)
  out.post_processor = processors.TemplateProcessing(
    single="<s> $A", pair="<s> $A <s>:1 $B:1", special_tokens=[("<s>", 1)]
  )
  return out


FAMILY = register(
  Family(
    name="llama",
    config_from_hf=config_from_hf,
    module=decoder.Decoder,
    masked_lm=False,
    names=Names(
      ("model.", ""),
      "layers.{i}.",
      {"word": "embed_tokens", "final_norm": "norm"},
      LAYER,
      {"lm_head": "lm_head"},
      (r"rotary_emb\.inv_freq$",),
    ),
    default_classifier="causal",
    output_embedding="lm_head",
    tiny_config=tiny_config,
    tokenizer=tokenizer,
  )
)
