"""BERT and RoBERTa encoders in Flax Linen, optionally with the masked-LM head (tied embeddings).

The layers are `transformer.Layer` with post-LayerNorm, stacked and scanned. RoBERTa differs
from BERT only in its inputs: learned positions start at pad_token_id + 1 and count non-pad
tokens, and it has one token type. Its MLM head is BERT's (dense, GELU, LayerNorm, the word
embeddings transposed, a bias per word).
"""

import flax.linen as nn
import jax.numpy as jnp

from fttpu.models import transformer
from fttpu.models.layers import Dropout, Embed, LayerNorm, axes
from fttpu.models.perturbation import perturbed
from fttpu.models.transformer import ModelConfig


class BertEncoder(nn.Module):
  """Token ids and attention mask -> `output`: "hidden" states (batch, length, hidden); "features",
  the MLM head's transformed states before the word projection; or "logits", the MLM logits
  (float32). With `positions` (one per row) the head runs there only, and with `vocab_ids` over
  those words only (a verbalizer). Tuples of ids and masks (streams, see transformer.stack_layers)
  give a tuple of hidden states."""

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
  ):
    c = self.config
    dtype, param_dtype = c.compute_dtype, c.storage_dtype
    word = Embed(c.vocab_size, c.hidden_size, "vocab", dtype, param_dtype, name="word")
    position = Embed(c.max_positions, c.hidden_size, None, dtype, param_dtype, name="position")
    token_type = Embed(c.type_vocab_size, c.hidden_size, None, dtype, param_dtype, name="token_type")
    embedding_norm = LayerNorm(c.norm_eps, dtype, param_dtype, name="embedding_norm")
    embedding_dropout = Dropout(c.hidden_dropout, deterministic)

    def embed(input_ids):
      """(hidden, token positions) of one batch."""
      if c.positions_from_ids:  # RoBERTa: pad + cumulative count of real tokens; pads get pad
        real = (input_ids != c.pad_token_id).astype(jnp.int32)
        token_positions = jnp.cumsum(real, axis=-1) * real + c.pad_token_id
      else:
        token_positions = jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)
      embedded = word(input_ids) + position(token_positions) + token_type(jnp.zeros_like(input_ids))
      return embedding_dropout(embedding_norm(embedded)), token_positions

    bias = lambda mask: transformer.attention_bias(mask, False, dtype)
    if isinstance(input_ids, tuple):  # streams: batches of different shapes through one pass (stack_layers)
      if output != "hidden":
        raise ValueError(f"output={output!r} with several streams of ids; valid: 'hidden'")
      hidden, token_positions = zip(*map(embed, input_ids))
      return transformer.stack_layers(c, deterministic, hidden, tuple(map(bias, attention_mask)), token_positions)
    hidden, token_positions = embed(input_ids)
    hidden = transformer.stack_layers(c, deterministic, hidden, bias(attention_mask), token_positions)
    if not c.lm_head or (output == "hidden" and not self.is_initializing()):
      return hidden
    # The MLM head: transform, then the tied word embeddings (only the rows asked for) plus a bias.
    x = transformer.gather_positions(hidden, positions)
    x = transformer.Projection(
      (c.hidden_size,), ("embed", "mlp"), dtype=dtype, param_dtype=param_dtype, name="lm_transform"
    )(x)
    x = LayerNorm(c.norm_eps, dtype, param_dtype, name="lm_norm")(transformer.ACTIVATIONS[c.hidden_act](x))
    if output == "features":
      return x
    word_bias = self.param("lm_bias", axes(nn.initializers.zeros, ("vocab",)), (c.vocab_size,), param_dtype)
    word_bias = perturbed(self, "lm_bias", word_bias).astype(jnp.float32)
    if vocab_ids is not None:
      word_bias = jnp.take(word_bias, vocab_ids)
    out = word.attend(x, vocab_ids) + word_bias
    return out if output == "logits" else hidden
