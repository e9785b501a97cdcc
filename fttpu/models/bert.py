"""BERT encoder in Flax Linen, with the transformer layers stacked and scanned.

Parameters of the L layers live in one stacked tree (leading axis = layer), so a step can
walk the layers one at a time (`nn.scan`) and compile one layer body instead of L.
Attention projections keep heads as their own axis: query/key/value kernels are
(embed, heads, head_dim) and the output kernel is (heads, head_dim, embed).
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The architecture, read from a Hugging Face config.json."""
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  max_positions: int
  type_vocab_size: int
  layer_norm_eps: float = 1e-12
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  hidden_act: str = "gelu"
  pad_token_id: int = 0

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @classmethod
  def from_hf(cls, hf: dict[str, Any]) -> "BertConfig":
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(f"position_embedding_type={hf['position_embedding_type']!r} is not supported; "
                       "only 'absolute' is.")
    if hf["hidden_size"] % hf["num_attention_heads"]:
      raise ValueError(f"hidden_size={hf['hidden_size']} is not divisible by "
                       f"num_attention_heads={hf['num_attention_heads']}")
    return cls(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
               num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
               intermediate_size=hf["intermediate_size"], max_positions=hf["max_position_embeddings"],
               type_vocab_size=hf.get("type_vocab_size", 2), layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
               hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
               attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
               hidden_act=hf.get("hidden_act", "gelu"), pad_token_id=hf.get("pad_token_id", 0) or 0)


_ACTIVATIONS = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
}


class BertLayer(nn.Module):
  """One post-LayerNorm transformer block; returns (hidden, None) to be scanned."""
  config: BertConfig
  deterministic: bool

  @nn.compact
  def __call__(self, hidden, attention_bias):
    c = self.config
    drop = lambda rate: nn.Dropout(rate, deterministic=self.deterministic)
    heads = (c.num_heads, c.head_dim)
    q = nn.DenseGeneral(heads, name="query")(hidden)
    k = nn.DenseGeneral(heads, name="key")(hidden)
    v = nn.DenseGeneral(heads, name="value")(hidden)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(c.head_dim).astype(q.dtype)
    probs = jax.nn.softmax(scores + attention_bias[:, None, None, :], axis=-1)
    probs = drop(c.attention_dropout)(probs)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    attended = nn.DenseGeneral(c.hidden_size, axis=(-2, -1), name="attention_out")(context)
    hidden = nn.LayerNorm(c.layer_norm_eps, name="attention_norm")(hidden + drop(c.hidden_dropout)(attended))
    inner = _ACTIVATIONS[c.hidden_act](nn.Dense(c.intermediate_size, name="mlp_in")(hidden))
    out = nn.Dense(c.hidden_size, name="mlp_out")(inner)
    hidden = nn.LayerNorm(c.layer_norm_eps, name="mlp_norm")(hidden + drop(c.hidden_dropout)(out))
    return hidden, None


class BertEncoder(nn.Module):
  """Token ids and attention mask -> last hidden states (batch, length, hidden)."""
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask, deterministic: bool = True):
    c = self.config
    positions = jnp.arange(input_ids.shape[-1])[None, :]
    embedded = (nn.Embed(c.vocab_size, c.hidden_size, name="word")(input_ids)
                + nn.Embed(c.max_positions, c.hidden_size, name="position")(positions)
                + nn.Embed(c.type_vocab_size, c.hidden_size, name="token_type")(jnp.zeros_like(input_ids)))
    hidden = nn.LayerNorm(c.layer_norm_eps, name="embedding_norm")(embedded)
    hidden = nn.Dropout(c.hidden_dropout, deterministic=deterministic)(hidden)
    attention_bias = jnp.where(attention_mask > 0, 0.0, jnp.finfo(hidden.dtype).min).astype(hidden.dtype)
    layers = nn.scan(BertLayer, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                     in_axes=nn.broadcast, length=c.num_layers)
    hidden, _ = layers(c, deterministic, name="layers")(hidden, attention_bias)
    return hidden
