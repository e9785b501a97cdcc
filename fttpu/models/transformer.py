"""The transformer block every family shares, its projections and attention.

One `Layer` covers BERT/RoBERTa (post-LayerNorm, GELU, biases), OPT (pre-LayerNorm, ReLU,
biases) and Llama (pre-RMSNorm, SwiGLU, rotary positions, grouped-query attention, no biases).
Families stack L of them and scan over the stack (`stack_layers`), so parameters live in one
tree with a leading layer axis, one layer body is compiled, and a zeroth-order step holds only
one layer's perturbed weights at a time.

Parameter names are the same in every family (query, key, value, attention_out, mlp_in,
mlp_gate, mlp_out, attention_norm, mlp_norm), so method regexes (`lora.targets=query|value`,
`layers/.*/kernel$`) mean the same thing everywhere. Every parameter carries logical axis
names (embed, heads, kv, mlp, vocab, layers) for the sharding rules.

Methods add leaves the layers look for: `lora_a`/`lora_b`/`lora_scale` (and `lora_dropout`,
`dora_magnitude`) beside a projection's kernel, `prefix_key`/`prefix_value` in a layer. With
`quantize` (model.quantize) the projections hold their kernel quantised instead (fttpu/models/quantize.py).

Decoding (fttpu/models/decoding.py) gives each layer a `cache` collection, `key` and `value` of shape
(batch, cache length, kv heads, head_dim): the layer writes its new keys/values at `cache_index` and
attends over the whole cache (stacked on the layer axis by the scan like `params` and `noise`).
"""

import dataclasses
import itertools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fttpu.errors import check
from fttpu.models import quantize as quantization
from fttpu.models.layers import Dropout, LayerNorm, RMSNorm, axes, batch_split_axes, dropout
from fttpu.models.perturbation import perturbed

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# train.remat: what the scanned layer keeps for the backward pass (jax.checkpoint's policies); the rest
# is recomputed there. "none" keeps every activation.
REMAT_POLICIES = {
  "none": None,
  "full": jax.checkpoint_policies.nothing_saveable,  # keeps only each layer's input
  "dots_saveable": jax.checkpoint_policies.dots_saveable,  # keeps matmul outputs, recomputes the rest
  "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # projections, not attention
}


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU as PyTorch computes it, x / 2 * (1 + erf(x / sqrt 2)) in float32. jax.nn.gelu's exact form
  goes through erfc, which costs far more on CPU: MiniLM's 1040 x 1536 MLP activation took 1.51 ms through
  it and 0.87 ms so. The two differ by at most 1e-6 (at large negative x, where both are ~0)."""
  x32 = x.astype(jnp.float32)
  return (x32 * (0.5 + 0.5 * jax.lax.erf(x32 * np.float32(math.sqrt(0.5))))).astype(x.dtype)


ACTIVATIONS = {
  "gelu": gelu,
  "gelu_new": lambda x: nn.gelu(x, approximate=True),
  "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
  "relu": nn.relu,
  "silu": nn.silu,
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The architecture (read from a Hugging Face config.json) and the precision policy."""

  family: str
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  max_positions: int
  num_kv_heads: int = 0  # 0: as many as num_heads (no grouped-query attention)
  head_dim: int = 0  # 0: hidden_size // num_heads
  norm_eps: float = 1e-12
  hidden_act: str = "gelu"
  pre_norm: bool = False  # norm before attention/MLP (OPT, Llama) or after the residual (BERT)
  rms_norm: bool = False
  gated_mlp: bool = False  # SwiGLU: act(x W_gate) * (x W_in)
  use_bias: bool = True
  causal: bool = False
  rotary_theta: float = 0.0  # > 0: rotary position embeddings with this base
  hidden_dropout: float = 0.0
  attention_dropout: float = 0.0
  pad_token_id: int = 0
  type_vocab_size: int = 0  # BERT token types
  position_offset: int = 0  # learned positions start here (RoBERTa: pad + 1, OPT: 2)
  positions_from_ids: bool = False  # RoBERTa: positions count non-pad tokens
  final_norm: bool = False  # a norm after the last layer (pre-norm decoders)
  lm_head: bool = False  # build the language-model head (MLM transform or decoder output)
  tied_embeddings: bool = True
  dtype: str = "float32"  # compute dtype of activations and matmuls
  param_dtype: str = "float32"  # storage dtype of parameters
  remat: str = "none"  # a key of REMAT_POLICIES: the scanned layer's rematerialisation
  quantize: str = "none"  # none | int8 | nf4: how the layers' projection kernels are stored (quantize.py)

  def __post_init__(self):
    if not self.num_kv_heads:
      object.__setattr__(self, "num_kv_heads", self.num_heads)
    if not self.head_dim:
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
    check(self.quantize in quantization.MODES, "model.quantize", self.quantize, str(list(quantization.MODES)))
    quantization.check_divisible(
      self.quantize, {"hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size}
    )

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def storage_dtype(self):
    return DTYPES[self.param_dtype]


def contract(x, y, dims: int):
  """Contracts the last `dims` axes of x with the first `dims` axes of y."""
  return jax.lax.dot_general(x, y, ((tuple(range(x.ndim - dims, x.ndim)), tuple(range(dims))), ((), ())))


def dequantized_contract(x, stored: dict, in_dims: int, dtype):
  """x @ the kernel dequantised from its `stored` leaves. Rematerialised: a backward pass keeps the
  stored leaves and dequantises again, so no layer's float kernel is kept for it (under the scan that
  would stack every layer's: the float model)."""

  def product(x, stored):
    return contract(x, quantization.dequantize(stored, in_dims, dtype), in_dims)

  return jax.checkpoint(product, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)(x, stored)


def lora_delta(a, b, scale):
  """The weight change scale * (A @ B) of a LoRA adapter, shaped like the kernel."""
  return scale * contract(a, b, 1)


class Projection(nn.Module):
  """x @ kernel + bias over x's last `in_dims` axes (flax DenseGeneral's parameters and shapes).

  `kernel_axes` names the kernel's logical axes (in..., out...). With `lora_a` (in..., r),
  `lora_b` (r, out...) and `lora_scale` () among its params it adds scale * dropout(x) @ A @ B
  without merging (LoRA; rank r). With `dora_magnitude` (out...) too, the output is rescaled to
  magnitude / ||W + scale A B|| per output unit (DoRA; the norm is not differentiated, as in the paper).
  With `quantize` (int8, nf4) the kernel is stored quantised (frozen: no noise is added to it) and
  dequantised here, where it is read.
  """

  features: tuple[int, ...]
  kernel_axes: tuple[str, ...]
  in_dims: int = 1
  use_bias: bool = True
  deterministic: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  quantize: str = "none"

  def stored_kernel(self, shape: tuple) -> dict:
    """The quantised kernel's leaves {name: value} (zeros at init: they are read from a checkpoint)."""
    return {
      name: self.param(name, axes(nn.initializers.zeros, names), leaf_shape, leaf_dtype)
      for name, (leaf_shape, leaf_dtype, names) in quantization.layout(
        self.quantize, shape, self.kernel_axes, self.in_dims
      ).items()
    }

  @nn.compact
  def __call__(self, x):
    in_shape = x.shape[x.ndim - self.in_dims :]
    shape = in_shape + tuple(self.features)
    x = x.astype(self.dtype)
    if self.quantize == "none":
      init = nn.initializers.lecun_normal(
        in_axis=tuple(range(self.in_dims)), out_axis=tuple(range(self.in_dims, self.in_dims + len(self.features)))
      )
      kernel = self.param("kernel", axes(init, self.kernel_axes), shape, self.param_dtype)
      kernel = perturbed(self, "kernel", kernel).astype(self.dtype)
      out = contract(x, kernel, self.in_dims)
      read_kernel = lambda: kernel
    else:
      stored = self.stored_kernel(shape)
      out = dequantized_contract(x, stored, self.in_dims, self.dtype)
      read_kernel = lambda: jax.lax.stop_gradient(quantization.dequantize(stored, self.in_dims, self.dtype))
    if self.has_variable("params", "lora_a"):
      a, b, scale = (
        perturbed(self, name, self.get_variable("params", name)).astype(self.dtype)
        for name in ("lora_a", "lora_b", "lora_scale")
      )
      if self.has_variable("params", "lora_dropout") and not self.deterministic:
        x = dropout(x, self.get_variable("params", "lora_dropout"), self.make_rng("dropout"))
      low_rank = scale * contract(contract(x, a, self.in_dims), b, 1)
      if self.has_variable("params", "dora_magnitude"):
        merged = read_kernel() + lora_delta(a, b, scale)
        norm = jnp.sqrt(jnp.sum(jnp.square(merged.astype(jnp.float32)), axis=tuple(range(self.in_dims))))
        magnitude = perturbed(self, "dora_magnitude", self.get_variable("params", "dora_magnitude"))
        ratio = (magnitude / jax.lax.stop_gradient(norm)).astype(self.dtype)
        out = ratio * (out + low_rank)
      else:
        out = out + low_rank
    if self.use_bias:
      bias_axes = self.kernel_axes[self.in_dims :]
      bias = self.param("bias", axes(nn.initializers.zeros, bias_axes), tuple(self.features), self.param_dtype)
      out = out + perturbed(self, "bias", bias).astype(self.dtype)
    return out


def rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary position embedding of x (batch, length, heads, head_dim), Hugging Face's rotate-half layout."""
  half = x.shape[-1] // 2
  inverse_frequency = 1.0 / (theta ** (jnp.arange(0, half, dtype=jnp.float32) * 2 / x.shape[-1]))
  angles = positions[..., None].astype(jnp.float32) * inverse_frequency  # (batch, length, half)
  cos = jnp.concatenate([jnp.cos(angles)] * 2, -1)[:, :, None, :]
  sin = jnp.concatenate([jnp.sin(angles)] * 2, -1)[:, :, None, :]
  x32 = x.astype(jnp.float32)
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], -1)
  return (x32 * cos + rotated * sin).astype(x.dtype)


def cache_attention_bias(key_mask: jax.Array, start, length: int) -> jax.Array:
  """Additive bias (batch, 1, length, cache length) of `length` queries at cache slots start, start + 1, ...:
  each sees the slots up to its own whose `key_mask` is 1, so neither padding nor a slot not yet written."""
  slots = jnp.arange(key_mask.shape[-1])
  queries = start + jnp.arange(length)
  visible = (key_mask[:, None, None, :] > 0) & (slots[None, None, None, :] <= queries[None, None, :, None])
  return jnp.where(visible, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)


def write_cache(module: nn.Module, k: jax.Array, v: jax.Array, index) -> tuple[jax.Array, jax.Array]:
  """The layer's cached keys and values with k and v (batch, length, kv heads, head_dim) written at slot
  `index` (the same for every row: prompts are left-padded), stored back into the `cache` collection."""
  out = []
  for name, new in (("key", k), ("value", v)):
    cached = module.get_variable("cache", name)
    cached = jax.lax.dynamic_update_slice(cached, new.astype(cached.dtype), (0, index, 0, 0))
    module.put_variable("cache", name, cached)
    out.append(cached.astype(new.dtype))
  return out[0], out[1]


def attention_bias(attention_mask: jax.Array, causal: bool, dtype) -> jax.Array:
  """Additive bias (batch, 1, query, key): -inf-like on padded keys and, if causal, on future keys."""
  visible = attention_mask[:, None, None, :] > 0
  if causal:
    length = attention_mask.shape[-1]
    visible = visible & jnp.tril(jnp.ones((length, length), bool))[None, None]
  return jnp.where(visible, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)


class Layer(nn.Module):
  """One transformer block; (hidden, (bias, positions, cache_index)) -> (hidden, None), to be scanned.
  With a `cache` collection (decoding) the keys and values are written into it at `cache_index` and
  attention reads the whole cache.

  `streams` (packed mode): the (batch, length) of several batches whose tokens come packed in one
  hidden of shape (tokens, hidden), with a tuple of biases and positions, one per stream. Every
  projection then reads its weight once for all streams (one matmul; a zeroth-order step draws the
  weight's noise once) and only attention runs per stream (`stack_layers` packs and unpacks)."""

  config: ModelConfig
  deterministic: bool
  streams: tuple = ()

  @nn.compact
  def __call__(self, hidden, inputs):
    bias, positions, cache_index = inputs
    c = self.config
    dtype, param_dtype = c.compute_dtype, c.storage_dtype
    drop = lambda rate: Dropout(rate, self.deterministic)
    project = lambda features, kernel_axes, name, in_dims=1: Projection(
      features, kernel_axes, in_dims, c.use_bias, self.deterministic, dtype, param_dtype, c.quantize, name=name
    )
    norm = lambda name: (
      RMSNorm(c.norm_eps, dtype, param_dtype, name=name)
      if c.rms_norm
      else LayerNorm(c.norm_eps, dtype, param_dtype, name=name)
    )

    x = norm("attention_norm")(hidden) if c.pre_norm else hidden
    q = project((c.num_heads, c.head_dim), ("embed", "heads", "kv"), "query")(x)
    k = project((c.num_kv_heads, c.head_dim), ("embed", "heads", "kv"), "key")(x)
    v = project((c.num_kv_heads, c.head_dim), ("embed", "heads", "kv"), "value")(x)
    attention_drop = drop(c.attention_dropout)
    if self.streams:
      split = lambda t: split_streams(t, self.streams)
      streams = zip(split(q), split(k), split(v), bias, positions)
      context = pack_streams([self.attend(attention_drop, *stream) for stream in streams])
    else:
      context = self.attend(attention_drop, q, k, v, bias, positions, cache_index)
    attended = project((c.hidden_size,), ("heads", "kv", "embed"), "attention_out", 2)(context)
    hidden = hidden + drop(c.hidden_dropout)(attended)
    if not c.pre_norm:
      hidden = norm("attention_norm")(hidden)

    x = norm("mlp_norm")(hidden) if c.pre_norm else hidden
    inner = project((c.intermediate_size,), ("embed", "mlp"), "mlp_in")(x)
    if c.gated_mlp:
      inner = ACTIVATIONS[c.hidden_act](project((c.intermediate_size,), ("embed", "mlp"), "mlp_gate")(x)) * inner
    else:
      inner = ACTIVATIONS[c.hidden_act](inner)
    out = project((c.hidden_size,), ("mlp", "embed"), "mlp_out")(inner)
    hidden = hidden + drop(c.hidden_dropout)(out)
    if not c.pre_norm:
      hidden = norm("mlp_norm")(hidden)
    return hidden.astype(dtype), None

  def attend(self, drop, q, k, v, bias, positions, cache_index=None):
    """Attention of one batch: q, k, v (batch, length, heads, head_dim) -> context, q's shape; `drop`
    is the attention dropout."""
    c = self.config
    if c.rotary_theta:
      q, k = rotary(q, positions, c.rotary_theta), rotary(k, positions, c.rotary_theta)
    self.sow("intermediates", "key_states", k)  # read by prefix tuning's initialisation
    self.sow("intermediates", "value_states", v)
    if self.has_variable("cache", "key"):
      k, v = write_cache(self, k, v, cache_index)
    if self.has_variable("params", "prefix_key"):  # prefix tuning: P trained keys/values first, seen by all

      def prefix(name, x):
        value = perturbed(self, name, self.get_variable("params", name)).astype(x.dtype)
        return jnp.broadcast_to(value, (x.shape[0],) + value.shape)

      k = jnp.concatenate([prefix("prefix_key", k), k], axis=1)
      v = jnp.concatenate([prefix("prefix_value", v), v], axis=1)
      bias = jnp.pad(bias, ((0, 0), (0, 0), (0, 0), (k.shape[1] - bias.shape[-1], 0)))
    groups = c.num_heads // c.num_kv_heads
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
      k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / jnp.sqrt(c.head_dim)
    probs = drop(jax.nn.softmax(scores + bias, axis=-1).astype(q.dtype))
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def pack_streams(streams) -> jax.Array:
  """Arrays (batch_i, length_i, ...) -> one (sum of batch_i * length_i, ...) of their tokens in order."""
  return jnp.concatenate([s.reshape((-1,) + s.shape[2:]) for s in streams], axis=0)


def split_streams(packed: jax.Array, shapes: tuple) -> list:
  """The inverse of pack_streams: the (batch, length, ...) arrays of `shapes` ((batch, length) each)."""
  sizes = [batch * length for batch, length in shapes]
  parts = jnp.split(packed, list(itertools.accumulate(sizes))[:-1], axis=0)
  return [part.reshape(shape + packed.shape[1:]) for part, shape in zip(parts, shapes)]


def stack_layers(config: ModelConfig, deterministic: bool, hidden, bias, positions, cache_index=None):
  """The L layers as one scanned module named "layers" (parameters stacked on a leading "layers" axis,
  and a decoding `cache` too).

  Given tuples (one hidden, bias and positions per stream: batches of different shapes, such as the
  sentences and the label descriptions of the similarity classifier) it returns a tuple of hiddens:
  the streams' tokens go through the layers packed together (`Layer.streams`), so each weight is read
  once for all. Where the mesh splits a batch over devices the streams run one after the other
  instead: packed, the sentences' shards and the replicated label descriptions would meet in one array
  and be resharded at every layer."""
  policy = REMAT_POLICIES[config.remat]
  layer = Layer if policy is None else nn.remat(Layer, policy=policy, prevent_cse=False)  # scan keeps CSE apart
  scanned = lambda streams=(): nn.scan(
    layer,
    variable_axes={"params": 0, "intermediates": 0, "noise": 0, "cache": 0},
    split_rngs={"params": True, "dropout": True},
    in_axes=nn.broadcast,
    length=config.num_layers,
    metadata_params={nn.PARTITION_NAME: "layers"},
  )(config, deterministic, streams, name="layers")
  if not isinstance(hidden, tuple):
    return scanned()(hidden, (bias, positions, cache_index))[0]
  if batch_split_axes():
    layers = scanned()
    return tuple(layers(h, (b, p, None))[0] for h, b, p in zip(hidden, bias, positions))
  shapes = tuple(h.shape[:2] for h in hidden)
  packed, _ = scanned(shapes)(pack_streams(hidden), (bias, positions, None))
  return tuple(split_streams(packed, shapes))


def gather_positions(hidden: jax.Array, positions: Optional[jax.Array]) -> jax.Array:
  """hidden[b, positions[b]] (batch, hidden) when positions are given, else hidden as it is."""
  if positions is None:
    return hidden
  return jnp.take_along_axis(hidden, positions[:, None, None].astype(jnp.int32), axis=1)[:, 0]
