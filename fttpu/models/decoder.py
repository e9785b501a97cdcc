"""OPT and Llama decoders in Flax Linen: causal transformers with a language-model head.

OPT: learned positions (offset 2, counted over real tokens), pre-LayerNorm (post-LayerNorm for
configs with do_layer_norm_before=false), ReLU, biases, a final LayerNorm, output tied to the
word embeddings. Llama: rotary positions, pre-RMSNorm, SwiGLU, grouped-query attention, no
biases, a final RMSNorm, and an output matrix of its own unless tie_word_embeddings.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fttpu.models import transformer
from fttpu.models.perturbation import Embed, LayerNorm, RMSNorm
from fttpu.models.transformer import ModelConfig

OPT_POSITION_OFFSET = 2  # OPT's learned position table has two leading rows it never uses for tokens


def opt_config_from_hf(hf: dict[str, Any], **overrides) -> ModelConfig:
  """The ModelConfig of a Hugging Face OPT config.json."""
  if hf.get("word_embed_proj_dim", hf["hidden_size"]) != hf["hidden_size"]:
    raise ValueError(f"word_embed_proj_dim={hf['word_embed_proj_dim']} != hidden_size={hf['hidden_size']} "
                     "(OPT-350m's project_in/out) is not supported")
  if not hf.get("layer_norm_elementwise_affine", True):
    raise ValueError("layer_norm_elementwise_affine=false is not supported")
  pre_norm = hf.get("do_layer_norm_before", True)
  return ModelConfig(
      family="opt", vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"], intermediate_size=hf["ffn_dim"],
      max_positions=hf["max_position_embeddings"] + OPT_POSITION_OFFSET, norm_eps=1e-5,
      hidden_act=hf.get("activation_function", "relu"), pre_norm=pre_norm, use_bias=hf.get("enable_bias", True),
      causal=True, hidden_dropout=hf.get("dropout", 0.1), attention_dropout=hf.get("attention_dropout", 0.0),
      pad_token_id=hf.get("pad_token_id", 1), position_offset=OPT_POSITION_OFFSET,
      final_norm=pre_norm and not hf.get("_remove_final_layer_norm", False), lm_head=True,
      tied_embeddings=hf.get("tie_word_embeddings", True), **overrides)


def llama_config_from_hf(hf: dict[str, Any], **overrides) -> ModelConfig:
  """The ModelConfig of a Hugging Face Llama config.json."""
  # transformers < 5 writes rope_theta and rope_scaling; 5 writes rope_parameters.
  rope = {"rope_theta": hf.get("rope_theta", 10000.0), **(hf.get("rope_scaling") or {}),
          **(hf.get("rope_parameters") or {})}
  if rope.get("rope_type", rope.get("type", "default")) != "default":
    raise ValueError(f"rope scaling {rope} is not supported; only plain rotary positions (rope_type default) are")
  if hf.get("attention_bias", False) or hf.get("mlp_bias", False):
    raise ValueError("attention_bias/mlp_bias=true is not supported (Llama has no biases)")
  return ModelConfig(
      family="llama", vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"], num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
      head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
      intermediate_size=hf["intermediate_size"], max_positions=hf.get("max_position_embeddings", 2048),
      norm_eps=hf.get("rms_norm_eps", 1e-6), hidden_act=hf.get("hidden_act", "silu"), pre_norm=True, rms_norm=True,
      gated_mlp=True, use_bias=False, causal=True, rotary_theta=rope["rope_theta"],
      hidden_dropout=0.0, attention_dropout=hf.get("attention_dropout", 0.0),
      pad_token_id=hf.get("pad_token_id") or 0, final_norm=True, lm_head=True,
      tied_embeddings=hf.get("tie_word_embeddings", False), **overrides)


class Decoder(nn.Module):
  """Token ids and attention mask -> `output`: "hidden" states after the final norm (batch, length,
  hidden); "features", the same at `positions` (one per row); or "logits", next-token logits
  (float32), (batch, length, vocab) or at `positions` over `vocab_ids`."""
  config: ModelConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask, deterministic: bool = True, *, output: str = "hidden",
               positions=None, vocab_ids=None):
    c = self.config
    dtype, param_dtype = c.compute_dtype, c.storage_dtype
    if c.position_offset:  # OPT: count of real tokens before each one
      mask = attention_mask.astype(jnp.int32)
      token_positions = jnp.cumsum(mask, axis=-1) * mask - 1
    else:
      token_positions = jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)
    word = Embed(c.vocab_size, c.hidden_size, "vocab", dtype, param_dtype, name="word")
    hidden = word(input_ids)
    if c.position_offset:
      hidden = hidden + Embed(c.max_positions, c.hidden_size, None, dtype, param_dtype,
                              name="position")(token_positions + c.position_offset)
    hidden = nn.Dropout(c.hidden_dropout, deterministic=deterministic)(hidden)
    bias = transformer.attention_bias(attention_mask, True, dtype)
    hidden = transformer.stack_layers(c, deterministic, hidden, bias, token_positions)
    if c.final_norm:
      hidden = (RMSNorm(c.norm_eps, dtype, param_dtype, name="final_norm") if c.rms_norm
                else LayerNorm(c.norm_eps, dtype, param_dtype, name="final_norm"))(hidden)
    if output == "features":
      return transformer.gather_positions(hidden, positions)
    if output == "hidden" and not self.is_initializing():
      return hidden
    head = word if c.tied_embeddings else Embed(c.vocab_size, c.hidden_size, "vocab", dtype, param_dtype,
                                                name="lm_head")
    out = head.attend(transformer.gather_positions(hidden, positions), vocab_ids)
    return out if output == "logits" else hidden
