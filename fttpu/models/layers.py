"""The base layers the model families share: an embedding table, LayerNorm and RMSNorm, each reading
its parameters through `perturbation.perturbed` (a zeroth-order step's noise is added where they are
read), dropout, and `axes`, the logical axis names the sharding rules map onto the mesh."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from fttpu.models.perturbation import entry_bits, perturbed

BATCH_AXES = ("data", "fsdp")  # the mesh axes a batch is split over (FSDP splits it like data parallelism)


def axes(init, names: tuple):
  """`init` annotated with logical axis names (flax partitioning metadata; the value stays plain)."""
  return nn.with_logical_partitioning(init, names)


def split_rows_for_logits(x: jax.Array) -> jax.Array:
  """x with its leading (batch) axis split over the data and fsdp axes of the mesh the step is traced
  under (trainer.compile_train_step sets it); unchanged outside a mesh or where the rows do not divide.
  The output layer's input needs it: left to itself, XLA contracts a causal LM's head over the
  fsdp-sharded hidden axis and all-reduces the logits of the whole batch on every device (OPT-13B,
  ReCoRD's 16 x 20 x 768 tokens at fsdp=8: 93 GiB of temporaries per device). Split, each device gathers
  the whole table instead (vocab x hidden), which costs more than the whole batch's logits (tokens x
  vocab) where the batch has fewer tokens than the hidden size (COPA's 16 x 2 x 64: 2.5 GiB against 0.9),
  so such a batch is left as it is."""
  axes = batch_split_axes()
  if not axes or x.size // x.shape[-1] <= x.shape[-1]:
    return x
  mesh = jax.sharding.get_abstract_mesh()
  if x.shape[0] % math.prod(mesh.shape[a] for a in axes):
    return x
  return jax.lax.with_sharding_constraint(x, P(axes))


def batch_split_axes() -> tuple:
  """The batch axes (data, fsdp) over which the mesh the step is traced under splits a batch: those of
  size > 1; () outside a mesh."""
  mesh = jax.sharding.get_abstract_mesh()
  return () if mesh.empty else tuple(a for a in BATCH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)


def keep_mask(key: jax.Array, rate, shape: tuple) -> jax.Array:
  """True with probability 1 - rate (to 2^-24) per entry, independently: 24 bits of a keyed hash of the
  entry's position (perturbation.entry_bits), element-wise, so it fuses into the activation it masks.
  jax.random.bernoulli runs threefry, on CPU a loop that stores its bits: flax's Dropout cost MiniLM's
  training step 0.05 s of 0.75 (tests/test_families.py checks the draw's statistics). `rate` may be traced
  (LoRA's per-layer lora_dropout)."""
  bits = entry_bits(jax.random.bits(key, (2,), jnp.uint32), shape)
  return (bits >> 8).astype(jnp.float32) >= rate * float(2**24)


def dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
  """x with each entry zeroed with probability `rate` and the rest scaled by 1 / (1 - rate)."""
  return jnp.where(keep_mask(key, rate, x.shape), x / (1.0 - rate), 0.0).astype(x.dtype)


class Dropout(nn.Module):
  """flax nn.Dropout's behaviour (its "dropout" rng stream, identity when deterministic or at rate 0)
  with the element-wise mask of `keep_mask`."""

  rate: float
  deterministic: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.deterministic or self.rate == 0.0:
      return x
    return dropout(x, self.rate, self.make_rng("dropout"))


class Embed(nn.Module):
  """A lookup table (flax nn.Embed's parameter, axes (rows, embed)); noise is drawn for the
  looked-up rows only. `attend` is the tied output layer: x @ table[ids].T, in float32."""

  num_embeddings: int
  features: int
  row_axis: str | None = "vocab"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    init = nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)
    self.embedding = self.param(
      "embedding", axes(init, (self.row_axis, "embed")), (self.num_embeddings, self.features), self.param_dtype
    )

  def rows(self, ids: jax.Array) -> jax.Array:
    """table[ids] (plus its noise), of shape ids.shape + (features,), in float32 or the table's dtype."""
    rows = jnp.take(self.embedding, ids, axis=0)
    if self.has_variable("noise", "embedding"):
      noise = self.get_variable("noise", "embedding").take(ids.reshape(-1))
      rows = rows.astype(jnp.float32) + noise.value((ids.size, self.features)).reshape(rows.shape)
    return rows

  def __call__(self, ids: jax.Array) -> jax.Array:
    return self.rows(ids).astype(self.dtype)

  def attend(self, x: jax.Array, ids: jax.Array | None = None) -> jax.Array:
    """Logits x @ table.T over every row, or over rows `ids` only (a verbalizer's words), float32.

    Over every row of a perturbed table (a causal LM's output layer) the perturbed table is formed
    whole, the one perturbed weight larger than a layer's slice: 1.5 GiB of OPT-13B's 24 on one device,
    a 1/t share under t-way tensor parallelism. (Blocks of rows cut it on one device, but a dynamic
    slice of the vocabulary-sharded table makes XLA gather it: 7.0 against 4.2 GiB at tensor=8.)
    """
    table = perturbed(self, "embedding", self.embedding) if ids is None else self.rows(ids)
    x = split_rows_for_logits(x)
    return jnp.einsum(
      "...h,vh->...v", x.astype(self.dtype), table.astype(self.dtype), preferred_element_type=jnp.float32
    )


class LayerNorm(nn.Module):
  """LayerNorm over the last axis (flax nn.LayerNorm's parameters; variance as PyTorch computes it),
  computed in float32 and returned in `dtype`."""

  epsilon: float
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = (x.shape[-1],)
    scale = perturbed(
      self, "scale", self.param("scale", axes(nn.initializers.ones, ("embed",)), features, self.param_dtype)
    )
    bias = perturbed(
      self, "bias", self.param("bias", axes(nn.initializers.zeros, ("embed",)), features, self.param_dtype)
    )
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    variance = jnp.square(x - mean).mean(-1, keepdims=True)
    out = (x - mean) * jax.lax.rsqrt(variance + self.epsilon) * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return out.astype(self.dtype)


class RMSNorm(nn.Module):
  """Root-mean-square norm (Llama): x / rms(x) in float32, cast to `dtype`, times the scale."""

  epsilon: float
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = perturbed(
      self, "scale", self.param("scale", axes(nn.initializers.ones, ("embed",)), (x.shape[-1],), self.param_dtype)
    )
    x = x.astype(jnp.float32)
    normed = (x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + self.epsilon)).astype(self.dtype)
    return scale.astype(self.dtype) * normed
