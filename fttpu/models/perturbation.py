"""Parameters perturbed where they are read: the zeroth-order methods' noise, never stored.

A zeroth-order step evaluates the loss at theta + eps * z and theta - eps * z. Adding z to
every weight up front would hold a second copy of the model; instead the step passes a
`noise` variable collection beside `params` (same paths, trainable leaves only) and each
module adds its parameter's noise as it reads it. Under `nn.scan` the collection is sliced
per layer like the params, so at most one layer's perturbed weights are alive, and an
embedding table draws noise only for the rows it looks up.

The noise of a leaf is regenerated per slice along axis 0 for leaves of two or more
dimensions (a layer of a stacked weight, a row of an embedding table), as a whole otherwise.
`Noise.value` gives it for the whole leaf, `Noise.take` for rows.
"""
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("gaussian", "rademacher")
# JAX's default generator. (philox4x32 draws normals 2.6x faster on CPU, but its mulhi fails to
# compile in sharded CPU programs with jax 0.10.)
IMPL = "threefry2x32"
DRAW_BLOCK = 1 << 19  # gaussian entries drawn at once (see Noise.unit)


def words_per_row(shape: tuple) -> int:
  """uint32 words of packed signs per row of a leaf (32 signs a word)."""
  return -(-int(np.prod(shape[1:] if len(shape) >= 2 else shape)) // 32)


def unpack_signs(words: jax.Array, shape: tuple, dtype=jnp.float32) -> jax.Array:
  """+-1 of `shape` from packed bits (bit i of word j is entry 32 j + i)."""
  size = int(np.prod(shape))
  bits = (words[..., None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
  return (1 - 2 * bits.reshape(-1)[:size].astype(dtype)).reshape(shape)


def normal(key_data: jax.Array, shape: tuple, dtype=jnp.float32) -> jax.Array:
  return jax.random.normal(jax.random.wrap_key_data(key_data, impl=IMPL), shape, dtype)


@flax.struct.dataclass
class Noise:
  """scale * z for one parameter leaf, regenerated from `bits` (see the module docstring).

  gaussian:   bits are raw keys, (2,) for the whole leaf or (rows, 2) one per slice along axis 0.
  rademacher: bits are the signs themselves, packed 32 to a uint32 word: (words,) or (rows, words);
              the whole model's signs take 1/32 of its size, so they are drawn once per step.
  """
  bits: jax.Array
  scale: jax.Array   # () or (rows,)
  kind: str = flax.struct.field(pytree_node=False, default="gaussian")

  def unit(self, shape: tuple, dtype=jnp.float32) -> jax.Array:
    """z itself, for a leaf of `shape`.

    Gaussian rows are drawn in blocks of about DRAW_BLOCK entries: on CPU JAX's threefry runs as
    a loop whose random bits are stored, so a whole embedding table at once would store its size
    in bits. (Signs are unpacked from words, element-wise, and fuse into their consumer.)
    """
    if self.kind == "rademacher":
      if self.scale.ndim == 0:
        return unpack_signs(self.bits, shape, dtype)
      return jax.vmap(lambda words: unpack_signs(words, shape[1:], dtype))(self.bits)
    if self.scale.ndim == 0:
      return normal(self.bits, shape, dtype)
    row = lambda key: normal(key, shape[1:], dtype)
    rows_per_draw = max(1, DRAW_BLOCK // max(1, int(np.prod(shape[1:]))))
    if rows_per_draw >= shape[0]:
      return jax.vmap(row)(self.bits)
    return jax.lax.map(row, self.bits, batch_size=rows_per_draw)

  def value(self, shape: tuple, dtype=jnp.float32) -> jax.Array:
    """scale * z (element-wise in z: signs fuse into whatever consumes them)."""
    z = self.unit(shape, dtype)
    scale = self.scale.astype(dtype)
    return scale.reshape(scale.shape + (1,) * (len(shape) - scale.ndim)) * z

  def take(self, rows: jax.Array) -> "Noise":
    return Noise(jnp.take(self.bits, rows, axis=0), jnp.take(self.scale, rows, axis=0), self.kind)


def gaussian_noise(key: jax.Array, shape: tuple) -> Noise:
  """Unit-scale normal noise of a leaf of `shape` from its key (of IMPL): keys per row for 2+ dims."""
  if len(shape) < 2:
    return Noise(jax.random.key_data(key), jnp.ones(()), "gaussian")
  keys = jax.vmap(lambda i: jax.random.key_data(jax.random.fold_in(key, i)))(jnp.arange(shape[0]))
  return Noise(keys, jnp.ones((shape[0],)), "gaussian")


def rademacher_noise(key: jax.Array, shapes: list) -> list:
  """Unit-scale sign noise for leaves of `shapes`, all packed words drawn by one call."""
  counts = [words_per_row(s) * (s[0] if len(s) >= 2 else 1) for s in shapes]
  words = jax.random.bits(key, (sum(counts),), jnp.uint32)
  out, start = [], 0
  for shape, count in zip(shapes, counts):
    chunk = words[start:start + count]
    start += count
    rows = (shape[0], words_per_row(shape)) if len(shape) >= 2 else (count,)
    out.append(Noise(chunk.reshape(rows), jnp.ones(rows[:-1]), "rademacher"))
  return out


def perturbed(module: nn.Module, name: str, value: jax.Array) -> jax.Array:
  """The parameter `name` as the module should use it: plus its noise when one is given.

  The sum is formed in float32 (and then cast once to the compute dtype by the caller), so a
  perturbation smaller than a low-precision weight's spacing is not rounded away in the add.
  """
  if not module.has_variable("noise", name):
    return value
  return value.astype(jnp.float32) + module.get_variable("noise", name).value(value.shape, jnp.float32)


def axes(init, names: tuple):
  """`init` annotated with logical axis names (flax partitioning metadata; the value stays plain)."""
  return nn.with_logical_partitioning(init, names)


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
    self.embedding = self.param("embedding", axes(init, (self.row_axis, "embed")),
                                (self.num_embeddings, self.features), self.param_dtype)

  def rows(self, ids: jax.Array) -> jax.Array:
    """table[ids] (plus its noise), of shape ids.shape + (features,), in float32 or the table's dtype."""
    rows = jnp.take(self.embedding, ids, axis=0)
    if self.has_variable("noise", "embedding"):
      noise = self.get_variable("noise", "embedding").take(ids.reshape(-1))
      rows = rows.astype(jnp.float32) + noise.value((ids.size, self.features), jnp.float32).reshape(rows.shape)
    return rows

  def __call__(self, ids: jax.Array) -> jax.Array:
    return self.rows(ids).astype(self.dtype)

  def attend(self, x: jax.Array, ids: jax.Array | None = None) -> jax.Array:
    """Logits x @ table.T over every row, or over rows `ids` only (a verbalizer's words), float32."""
    table = perturbed(self, "embedding", self.embedding) if ids is None else self.rows(ids)
    return jnp.einsum("...h,vh->...v", x.astype(self.dtype), table.astype(self.dtype),
                      preferred_element_type=jnp.float32)


class LayerNorm(nn.Module):
  """LayerNorm over the last axis (flax nn.LayerNorm's parameters; variance as PyTorch computes it),
  computed in float32 and returned in `dtype`."""
  epsilon: float
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = (x.shape[-1],)
    scale = perturbed(self, "scale", self.param("scale", axes(nn.initializers.ones, ("embed",)), features,
                                                self.param_dtype))
    bias = perturbed(self, "bias", self.param("bias", axes(nn.initializers.zeros, ("embed",)), features,
                                              self.param_dtype))
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
    scale = perturbed(self, "scale", self.param("scale", axes(nn.initializers.ones, ("embed",)), (x.shape[-1],),
                                                self.param_dtype))
    x = x.astype(jnp.float32)
    normed = (x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + self.epsilon)).astype(self.dtype)
    return scale.astype(self.dtype) * normed
