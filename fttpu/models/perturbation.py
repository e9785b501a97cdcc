"""Parameters perturbed where they are read: the zeroth-order methods' noise, never stored.

A zeroth-order step evaluates the loss at theta + eps * z and theta - eps * z. Adding z to
every weight up front would hold a second copy of the model; instead the step passes a
`noise` variable collection beside `params` (same paths, trainable leaves only) and each
module adds its parameter's noise as it reads it. Under `nn.scan` the collection is sliced
per layer like the params, so at most one layer's perturbed weights are alive, and an
embedding table draws noise only for the rows it looks up.

z is a pure function of (row key, position in the row), computed element-wise by `Noise.unit`,
the one place any z is made: the two losses, the embedding rows, the update and replay all
call it. So z is the same vector bit for bit wherever it is drawn, whatever the weight's
storage or compute dtype (it is always formed in float32) and however the leaf is sliced
(a layer of a stacked weight, rows of a table, a device's shard). A leaf of two or more
dimensions has one key per row along axis 0, a smaller one one key; each entry's 32 random
bits are a keyed hash of its position (`entry_bits`), so nothing is stored: the draw fuses
into its consumer (the perturbed read, the optimizer's update) on every backend. JAX's own
threefry runs as a rolled loop on CPU whose bits are materialised at the size of the draw
(twice a leaf's size for a whole stacked weight).
"""

import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("gaussian", "rademacher")
# JAX's default generator: a step's noise key of each sample (its leaves' and rows' keys are subkeys).
IMPL = "threefry2x32"
# What draws z, recorded in a trajectory: replaying one drawn by another generator would diverge.
GENERATOR = "fmix32-position-hash/box-muller-16-16/polynomial-log-minimax-sine"


def fmix32(x: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finalizer: a bijection in which every input bit flips each output bit
  with probability ~1/2."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def offset_positions(offset: jax.Array, shape: tuple) -> jax.Array:
  """offset + the row-major position of each entry of `shape`, uint32 (wrapping past 2^32).

  Summed onto the (per-row) offset axis by axis: a position array on its own is the same in every
  layer of a scan, and XLA hoists it out of the loop as a stored array of the slice's size.
  """
  index, stride = offset, 1
  for axis in reversed(range(len(shape))):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride % 2**32)
    stride *= shape[axis]
  return index


def entry_bits(keys: jax.Array, shape: tuple) -> jax.Array:
  """32 random bits per entry of `shape`: a keyed hash of the entry's position in its row.

  keys: (2,) uint32 for the whole of `shape`, or (shape[0], 2) one per row along axis 0 (positions
  then count within the row, so a row's bits do not depend on which other rows are drawn).
  """
  if keys.ndim == 1:
    index, k1 = offset_positions(keys[0], shape), keys[1]
  else:
    per_row = lambda k: k.reshape(k.shape + (1,) * (len(shape) - 1))
    index, k1 = offset_positions(per_row(keys[:, 0]), (1,) + tuple(shape[1:])), per_row(keys[:, 1])
  return fmix32(fmix32(index) ^ k1)


def symmetric_uniform(bits: jax.Array) -> jax.Array:
  """Uniform in (-1, 1) from 16 bits (the low 16 of `bits`): odd integers in [1 - 2^16, 2^16 - 1]
  over 2^16, exact in float32 and symmetric about 0."""
  odd = (bits & 0xFFFF).astype(jnp.int32) * 2 + (1 - 2**16)
  return odd.astype(jnp.float32) * (1.0 / 2**16)


def open_unit_interval(bits: jax.Array) -> jax.Array:
  """Uniform in (0, 1) from the top 16 bits: the midpoints (2k + 1) / 2^17, exact in float32."""
  return ((bits >> 16).astype(jnp.int32) * 2 + 1).astype(jnp.float32) * (1.0 / 2**17)


def polynomial(terms: tuple, x: jax.Array) -> jax.Array:
  """terms[0] + terms[1] x + terms[2] x^2 + ... by Horner's rule (a multiply-add a term)."""
  total = terms[-1]
  for term in reversed(terms[:-1]):
    total = term + total * x
  return total


# sin(pi u / 2) ~ u (c1 + c3 u^2 + c5 u^4 + c7 u^6) on [-1, 1]: a minimax fit (Lawson's iteration), rounded to
# float32, within 7.4e-7 (the Taylor series to x^9 it replaced was within 4e-6 with a term more).
SINE_TERMS = tuple(np.float32(c) for c in (1.570791006, -0.6458928585, 0.07943434268, -0.004333095159))


def sin_half_period(u: jax.Array) -> jax.Array:
  """sin(pi u / 2) for u in [-1, 1], as a polynomial: jnp.sin's range reduction is the costliest
  part of the draw on CPU (5 ns an entry) and this range needs none."""
  return u * polynomial(SINE_TERMS, u * u)


# log(1 + x) ~ x (c1 + c2 x + ... + c7 x^6) on [sqrt(1/2) - 1, sqrt(2) - 1]: a least-squares fit of the relative
# error at Chebyshev nodes, rounded to float32 (within 1.5e-6 of log; tests/test_zo.py holds the bound).
LOG1P_TERMS = tuple(
  np.float32(c)
  for c in (1.000001073, -0.5000084639, 0.3331342936, -0.2492185831, 0.2052961439, -0.1856033653, 0.1162362993)
)
SQRT_HALF_BITS = 0x3F3504F3  # float32 sqrt(1/2)


def log_positive(u: jax.Array) -> jax.Array:
  """ln u for float32 u > 0 (normal, finite), within 1.5e-6 relative (exact at u = 1).

  u = 2^k m with m in [sqrt(1/2), sqrt(2)) read off the bits (subtracting sqrt(1/2)'s bits makes the
  exponent field k), then k ln 2 + log(1 + (m - 1)) by a polynomial: half the work of jnp.log on CPU,
  which also handles zeros, negatives, infinities and subnormals this draw never has."""
  offset = jax.lax.bitcast_convert_type(u, jnp.int32) - SQRT_HALF_BITS
  exponent = offset >> 23  # arithmetic shift: floor
  x = jax.lax.bitcast_convert_type(offset - (exponent << 23) + SQRT_HALF_BITS, jnp.float32) - 1.0
  return exponent.astype(jnp.float32) * np.float32(math.log(2)) + x * polynomial(LOG1P_TERMS, x)


def unit_from_bits(bits: jax.Array, kind: str) -> jax.Array:
  """z in float32 from 32 bits per entry: +-1 (the top bit) or N(0, 1) by Box-Muller.

  Gaussian: radius sqrt(-2 log u) from the top 16 bits (u in (0, 1), so |z| <= 4.86) times the sine
  of a uniform angle on a half period (the same arcsine law as the cosine of a whole one) from the
  low 16. One hash per entry, as the sign draw; a polynomial log, a square root and a polynomial sine:
  a third of what jax.lax.erf_inv (inverse CDF, two polynomials of nine terms) costs on CPU. A second
  hash for the angle (24 bits each, the generator before this one) cost 0.1 forwards more of a
  MeZO step on MiniLM for the same 32 bits of randomness per entry (experiments/noise_cost.py).
  """
  if kind == "rademacher":
    return 1.0 - 2.0 * (bits >> 31).astype(jnp.float32)
  radius = jnp.sqrt(-2.0 * log_positive(open_unit_interval(bits)))
  return radius * sin_half_period(symmetric_uniform(bits))


@flax.struct.dataclass
class Noise:
  """scale * z for one parameter leaf (or a slice of one), regenerated from its keys.

  keys: (2,) uint32 for the whole leaf, or (rows, 2) one per slice along axis 0; scale: () or (rows,).
  """

  keys: jax.Array
  scale: jax.Array
  kind: str = flax.struct.field(pytree_node=False, default="gaussian")

  def unit(self, shape: tuple) -> jax.Array:
    """z itself (float32), for a leaf or slice of `shape`."""
    return unit_from_bits(entry_bits(self.keys, shape), self.kind)

  def value(self, shape: tuple) -> jax.Array:
    """scale * z in float32 (element-wise: it fuses into whatever consumes it)."""
    scale = self.scale.astype(jnp.float32)
    return scale.reshape(scale.shape + (1,) * (len(shape) - scale.ndim)) * self.unit(shape)

  def take(self, rows: jax.Array) -> "Noise":
    """The noise of rows `rows` of the leaf (an embedding lookup)."""
    return Noise(jnp.take(self.keys, rows, axis=0), jnp.take(self.scale, rows, axis=0), self.kind)


def subkeys(key: jax.Array, index: jax.Array) -> jax.Array:
  """Keys (index.shape + (2,), uint32) of children `index` of `key` (2,) uint32: the leaves of a step's
  key, the rows of a leaf's. A hash like entry_bits, element-wise: jax.random.fold_in is a threefry
  loop on CPU, one per leaf and row set, which multiplied compile time."""
  index = jnp.asarray(index, jnp.uint32)
  first = fmix32(fmix32(index ^ key[0]) + key[1])
  second = fmix32(fmix32(index ^ key[1]) + (key[0] ^ jnp.uint32(0x9E3779B9)))
  return jnp.stack([first, second], axis=-1)


def leaf_noise(key: jax.Array, shape: tuple, kind: str) -> Noise:
  """Unit-scale noise of a leaf of `shape` from its key ((2,) uint32): one key per row for 2+ dims.

  The row keys are stored (an optimization barrier): XLA would otherwise fuse their four hashes into
  every draw and recompute them for each entry of the row."""
  if len(shape) < 2:
    return Noise(key, jnp.ones(()), kind)
  rows = jax.lax.optimization_barrier(subkeys(key, jnp.arange(shape[0], dtype=jnp.uint32)))
  return Noise(rows, jnp.ones((shape[0],)), kind)


def perturbed(module: nn.Module, name: str, value: jax.Array) -> jax.Array:
  """The parameter `name` as the module should use it: plus its noise when one is given.

  The sum is formed in float32 (and then cast once to the compute dtype by the caller), so a
  perturbation smaller than a low-precision weight's spacing is not rounded away in the add.
  """
  if not module.has_variable("noise", name):
    return value
  return value.astype(jnp.float32) + module.get_variable("noise", name).value(value.shape)
