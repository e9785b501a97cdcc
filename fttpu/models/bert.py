"""BERT encoder in Flax Linen, with the transformer layers stacked and scanned.

Parameters of the L layers live in one stacked tree (leading axis = layer), so a step can
walk the layers one at a time (`nn.scan`) and compile one layer body instead of L.
Attention projections keep heads as their own axis: query/key/value kernels are
(embed, heads, head_dim) and the output kernel is (heads, head_dim, embed).

Parameter-efficient methods add leaves that the layers look for (see fttpu/methods/):
`lora_a`/`lora_b`/`lora_scale` (and `lora_dropout`, `dora_magnitude`) beside a projection's
kernel, and `prefix_key`/`prefix_value` in a layer. Without them the model is plain BERT.
Every parameter is read through `perturbed`: zeroth-order methods pass their noise as a
`noise` collection (see perturbation.py), so no perturbed copy of the model is ever built.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fttpu.models.perturbation import Embed, LayerNorm, perturbed


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


def _contract(x, y, dims: int):
  """Contracts the last `dims` axes of x with the first `dims` axes of y."""
  return jax.lax.dot_general(x, y, ((tuple(range(x.ndim - dims, x.ndim)), tuple(range(dims))), ((), ())))


def lora_delta(a, b, scale):
  """The weight change scale * (A @ B) of a LoRA adapter, shaped like the kernel."""
  return scale * _contract(a, b, 1)


class Projection(nn.Module):
  """x @ kernel + bias over x's last `in_dims` axes (flax DenseGeneral's parameters and shapes).

  With `lora_a` (in..., r), `lora_b` (r, out...) and `lora_scale` () among its params it adds
  scale * dropout(x) @ A @ B without merging (LoRA; rank r). With `dora_magnitude` (out...) too,
  the output is rescaled to magnitude / ||W + scale A B|| per output unit (DoRA; the norm is not
  differentiated, as in the paper).
  """
  features: tuple[int, ...]
  in_dims: int = 1
  deterministic: bool = True

  @nn.compact
  def __call__(self, x):
    in_shape = x.shape[x.ndim - self.in_dims:]
    kernel = self.param("kernel", nn.initializers.lecun_normal(
        in_axis=tuple(range(self.in_dims)), out_axis=tuple(range(self.in_dims, self.in_dims + len(self.features)))),
        in_shape + tuple(self.features))
    kernel = perturbed(self, "kernel", kernel)
    bias = perturbed(self, "bias", self.param("bias", nn.initializers.zeros, tuple(self.features)))
    out = _contract(x, kernel, self.in_dims)
    if self.has_variable("params", "lora_a"):
      a, b, scale = (perturbed(self, name, self.get_variable("params", name))
                     for name in ("lora_a", "lora_b", "lora_scale"))
      if self.has_variable("params", "lora_dropout") and not self.deterministic:
        rate = self.get_variable("params", "lora_dropout")
        keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - rate, x.shape)
        x = jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)
      low_rank = scale * _contract(_contract(x, a, self.in_dims), b, 1)
      if self.has_variable("params", "dora_magnitude"):
        merged = kernel + lora_delta(a, b, scale)
        norm = jnp.sqrt(jnp.sum(jnp.square(merged), axis=tuple(range(self.in_dims))))
        magnitude = perturbed(self, "dora_magnitude", self.get_variable("params", "dora_magnitude"))
        ratio = magnitude / jax.lax.stop_gradient(norm)
        return ratio * (out + low_rank) + bias
      out = out + low_rank
    return out + bias


class BertLayer(nn.Module):
  """One post-LayerNorm transformer block; returns (hidden, None) to be scanned."""
  config: BertConfig
  deterministic: bool

  @nn.compact
  def __call__(self, hidden, attention_bias):
    c = self.config
    drop = lambda rate: nn.Dropout(rate, deterministic=self.deterministic)
    heads = (c.num_heads, c.head_dim)
    project = lambda features, name, in_dims=1: Projection(features, in_dims, self.deterministic, name=name)
    q = project(heads, "query")(hidden)
    k = project(heads, "key")(hidden)
    v = project(heads, "value")(hidden)
    self.sow("intermediates", "key_states", k)      # read by prefix tuning's initialisation
    self.sow("intermediates", "value_states", v)
    if self.has_variable("params", "prefix_key"):  # prefix tuning: P trained keys/values first
      def prefix(name, x):
        value = perturbed(self, name, self.get_variable("params", name)).astype(x.dtype)
        return jnp.broadcast_to(value, (x.shape[0],) + value.shape)

      k = jnp.concatenate([prefix("prefix_key", k), k], axis=1)
      v = jnp.concatenate([prefix("prefix_value", v), v], axis=1)
      attention_bias = jnp.pad(attention_bias, ((0, 0), (k.shape[1] - attention_bias.shape[1], 0)))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(c.head_dim).astype(q.dtype)
    probs = jax.nn.softmax(scores + attention_bias[:, None, None, :], axis=-1)
    probs = drop(c.attention_dropout)(probs)
    context = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    attended = project((c.hidden_size,), "attention_out", 2)(context)
    hidden = LayerNorm(c.layer_norm_eps, name="attention_norm")(hidden + drop(c.hidden_dropout)(attended))
    inner = _ACTIVATIONS[c.hidden_act](project((c.intermediate_size,), "mlp_in")(hidden))
    out = project((c.hidden_size,), "mlp_out")(inner)
    hidden = LayerNorm(c.layer_norm_eps, name="mlp_norm")(hidden + drop(c.hidden_dropout)(out))
    return hidden, None


class BertEncoder(nn.Module):
  """Token ids and attention mask -> last hidden states (batch, length, hidden)."""
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask, deterministic: bool = True):
    c = self.config
    positions = jnp.arange(input_ids.shape[-1])[None, :]
    embedded = (Embed(c.vocab_size, c.hidden_size, name="word")(input_ids)
                + Embed(c.max_positions, c.hidden_size, name="position")(positions)
                + Embed(c.type_vocab_size, c.hidden_size, name="token_type")(jnp.zeros_like(input_ids)))
    hidden = LayerNorm(c.layer_norm_eps, name="embedding_norm")(embedded)
    hidden = nn.Dropout(c.hidden_dropout, deterministic=deterministic)(hidden)
    attention_bias = jnp.where(attention_mask > 0, 0.0, jnp.finfo(hidden.dtype).min).astype(hidden.dtype)
    layers = nn.scan(BertLayer, variable_axes={"params": 0, "intermediates": 0, "noise": 0},
                     split_rngs={"params": True, "dropout": True},
                     in_axes=nn.broadcast, length=c.num_layers)
    hidden, _ = layers(c, deterministic, name="layers")(hidden, attention_bias)
    return hidden
