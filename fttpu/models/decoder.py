"""OPT and Llama decoders in Flax Linen: causal transformers with a language-model head.

OPT: learned positions (offset 2, counted over real tokens), pre-LayerNorm (post-LayerNorm for
configs with do_layer_norm_before=false), ReLU, biases, a final LayerNorm, output tied to the
word embeddings. Llama: rotary positions, pre-RMSNorm, SwiGLU, grouped-query attention, no
biases, a final RMSNorm, and an output matrix of its own unless tie_word_embeddings.

Decoding (fttpu/models/decoding.py) passes `token_positions` (each token's count of real tokens before
it, for both families, as Hugging Face's generate does on left-padded batches) and `cache_index`: the
input then goes into a `cache` collection at that slot and `attention_mask` masks the cache's slots.
"""

import flax.linen as nn
import jax.numpy as jnp

from fttpu.models import transformer
from fttpu.models.layers import Dropout, Embed, LayerNorm, RMSNorm
from fttpu.models.transformer import ModelConfig


def real_token_positions(attention_mask):
  """Each token's count of real (mask 1) tokens before it; -1 at padding."""
  mask = attention_mask.astype(jnp.int32)
  return jnp.cumsum(mask, axis=-1) * mask - 1


def default_positions(config: ModelConfig, input_ids, attention_mask):
  """The positions of a forward pass: OPT counts real tokens, Llama counts columns."""
  if config.position_offset:
    return real_token_positions(attention_mask)
  return jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)


class Decoder(nn.Module):
  """Token ids and attention mask -> `output`: "hidden" states after the final norm (batch, length,
  hidden); "features", the same at `positions` (one per row); or "logits", next-token logits
  (float32), (batch, length, vocab) or at `positions` over `vocab_ids`.

  `token_positions` (batch, length): the position of each token (default: OPT counts real tokens,
  Llama counts columns). With `cache_index` (decoding) the tokens are written to the `cache` collection
  from that slot on and `attention_mask` (batch, cache length) says which cache slots hold real tokens.
  Tuples of ids and masks (streams, see transformer.stack_layers) give a tuple of hidden states."""

  config: ModelConfig

  @nn.compact
  def __call__(
    self,
    input_ids,
    attention_mask,
    deterministic: bool = True,
    *,
    output: str = "hidden",
    positions=None,
    vocab_ids=None,
    token_positions=None,
    cache_index=None,
  ):
    c = self.config
    dtype, param_dtype = c.compute_dtype, c.storage_dtype
    word = Embed(c.vocab_size, c.hidden_size, "vocab", dtype, param_dtype, name="word")
    position = (
      Embed(c.max_positions, c.hidden_size, None, dtype, param_dtype, name="position") if c.position_offset else None
    )
    embedding_dropout = Dropout(c.hidden_dropout, deterministic)
    final_norm = (
      (RMSNorm if c.rms_norm else LayerNorm)(c.norm_eps, dtype, param_dtype, name="final_norm")
      if c.final_norm
      else None
    )

    def embed(input_ids, token_positions):
      hidden = word(input_ids)
      if position is not None:
        hidden = hidden + position(token_positions + c.position_offset)
      return embedding_dropout(hidden)

    finish = lambda hidden: hidden if final_norm is None else final_norm(hidden)
    if isinstance(input_ids, tuple):  # streams: batches of different shapes through one pass (stack_layers)
      if output != "hidden" or token_positions is not None or cache_index is not None:
        raise ValueError("several streams of ids take output='hidden' and neither token_positions nor cache_index")
      token_positions = tuple(default_positions(c, ids, mask) for ids, mask in zip(input_ids, attention_mask))
      hidden = tuple(map(embed, input_ids, token_positions))
      bias = tuple(transformer.attention_bias(mask, True, dtype) for mask in attention_mask)
      return tuple(map(finish, transformer.stack_layers(c, deterministic, hidden, bias, token_positions)))
    if token_positions is None:
      token_positions = default_positions(c, input_ids, attention_mask)
    hidden = embed(input_ids, token_positions)
    if cache_index is None:
      bias = transformer.attention_bias(attention_mask, True, dtype)
    else:
      bias = transformer.cache_attention_bias(attention_mask, cache_index, input_ids.shape[-1])
    hidden = finish(transformer.stack_layers(c, deterministic, hidden, bias, token_positions, cache_index))
    if output == "features":
      return transformer.gather_positions(hidden, positions)
    if output == "hidden" and not self.is_initializing():
      return hidden
    head = (
      word if c.tied_embeddings else Embed(c.vocab_size, c.hidden_size, "vocab", dtype, param_dtype, name="lm_head")
    )
    out = head.attend(transformer.gather_positions(hidden, positions), vocab_ids)
    return out if output == "logits" else hidden
