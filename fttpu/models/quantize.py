"""Frozen projection kernels stored quantised (`model.quantize`), dequantised where a layer reads them.

  int8  per output unit, absmax, symmetric: w ~ q * scale with q in [-127, 127] and scale = max |w| / 127
        over the kernel's input axes. Leaves `kernel_int8` (int8, the kernel's shape) and `kernel_scale`
        (float32, the kernel's output axes).
  nf4   QLoRA's 4-bit NormalFloat: blocks of 64 consecutive entries, each divided by its absmax and rounded
        to the nearest of the 16 NF4 values (bitsandbytes' codebook and rounding), two codes a byte, the
        first in the high nibble. Blocks run along the kernel's input axis, as bitsandbytes' blocks of the
        PyTorch (out, in) weight do; attention_out's input is (heads, head_dim), so its blocks run along its
        output axis. Leaves `kernel_nf4` (uint8, the block axis halved) and `kernel_absmax` (float32, the
        block axis over 64). No double quantisation: the absmax costs half a bit per entry.

Only the layers' projection kernels (query, key, value, attention_out, mlp_in, mlp_gate, mlp_out) are
quantised; embeddings, norms, biases and heads stay in model.param_dtype. Each leaf keeps its kernel's
logical axis names (a shortened axis keeps its name), so the sharding rules place it as the kernel. The
quantisers run in numpy on the host while a checkpoint is read, one layer's kernel at a time
(fttpu/models/hf.py); `dequantize` runs in the model on one layer's leaves inside the scan.
"""

import jax.numpy as jnp
import numpy as np

from fttpu.errors import ConfigError

MODES = ("none", "int8", "nf4")
INT8_MAX = 127
NF4_BLOCK = 64
# QLoRA's NormalFloat4 values (bitsandbytes' table), ascending; index 7 is exactly 0.
NF4_CODEBOOK = np.array(
  [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236328,
    1.0,
  ],
  np.float32,
)
# A normalised value above the midpoint between two neighbouring codes takes the upper one (bitsandbytes'
# dQuantizeNF4 compares with these constants).
NF4_MIDPOINTS = (NF4_CODEBOOK[1:] + NF4_CODEBOOK[:-1]) / 2
LEAVES = {"int8": ("kernel_int8", "kernel_scale"), "nf4": ("kernel_nf4", "kernel_absmax")}
VALUE_LEAVES = {names[0]: mode for mode, names in LEAVES.items()}  # the leaf that has a kernel's axes


def block_axis(ndim: int, in_dims: int) -> int:
  """The axis of an (in..., out...) kernel along which NF4's blocks run: the input axis, or the output
  axis when the input is two axes (attention_out's heads and head_dim)."""
  return 0 if in_dims == 1 else ndim - 1


def layout(mode: str, kernel_shape: tuple, kernel_axes: tuple, in_dims: int) -> dict:
  """{leaf name: (shape, dtype, logical axes)} of a kernel of `kernel_shape` stored as `mode`."""
  if mode == "int8":
    return {
      "kernel_int8": (tuple(kernel_shape), jnp.int8, tuple(kernel_axes)),
      "kernel_scale": (tuple(kernel_shape[in_dims:]), jnp.float32, tuple(kernel_axes[in_dims:])),
    }
  axis = block_axis(len(kernel_shape), in_dims)
  resized = lambda divisor: tuple(n // divisor if a == axis else n for a, n in enumerate(kernel_shape))
  return {
    "kernel_nf4": (resized(2), jnp.uint8, tuple(kernel_axes)),
    "kernel_absmax": (resized(NF4_BLOCK), jnp.float32, tuple(kernel_axes)),
  }


def check_divisible(mode: str, sizes: dict) -> None:
  """nf4's blocks need every block axis (named in `sizes`) to be a multiple of 64."""
  odd = {name: n for name, n in sizes.items() if n % NF4_BLOCK}
  if mode == "nf4" and odd:
    raise ConfigError(
      f"config.model.quantize='nf4' is invalid for this model; valid: 'int8' or 'none' (nf4's blocks of "
      f"{NF4_BLOCK} need {' and '.join(sizes)} to be multiples of {NF4_BLOCK}: this model has {odd})"
    )


def int8_scale(kernel: np.ndarray, in_dims: int) -> np.ndarray:
  """max |w| / 127 per output unit of a kernel (in..., out...), float32."""
  return (np.abs(np.asarray(kernel, np.float32)).max(axis=tuple(range(in_dims))) / INT8_MAX).astype(np.float32)


def int8_values(kernel: np.ndarray, scale: np.ndarray) -> np.ndarray:
  """The kernel rounded to int8 multiples of its per-output-unit `scale` (a zero scale gives zeros)."""
  values = np.rint(np.asarray(kernel, np.float32) / np.where(scale > 0, scale, 1.0))
  return np.clip(values, -INT8_MAX, INT8_MAX).astype(np.int8)


def int8_quantize(kernel: np.ndarray, in_dims: int) -> dict:
  """One kernel (in..., out...) as int8 values and a float32 scale per output unit."""
  scale = int8_scale(kernel, in_dims)
  return {"kernel_int8": int8_values(kernel, scale), "kernel_scale": scale}


def nf4_codes(normalised: np.ndarray) -> np.ndarray:
  """The index of the NF4 value nearest each entry of `normalised` (in [-1, 1]), as uint8."""
  return np.searchsorted(NF4_MIDPOINTS, normalised, side="left").astype(np.uint8)


def nf4_quantize(kernel: np.ndarray, in_dims: int) -> dict:
  """One kernel (in..., out...) as packed NF4 codes and a float32 absmax per block of 64 (`block_axis`)."""
  axis = block_axis(np.ndim(kernel), in_dims)
  w = np.moveaxis(np.asarray(kernel, np.float32), axis, -1)
  blocks = w.reshape(w.shape[:-1] + (w.shape[-1] // NF4_BLOCK, NF4_BLOCK))
  absmax = np.abs(blocks).max(axis=-1)
  inverse = np.where(absmax > 0, 1.0 / np.where(absmax > 0, absmax, 1.0), 0.0).astype(np.float32)
  codes = nf4_codes(blocks * inverse[..., None]).reshape(w.shape)  # x * (1 / absmax), as bitsandbytes
  packed = (codes[..., 0::2] << 4) | codes[..., 1::2]
  return {"kernel_nf4": np.moveaxis(packed, -1, axis), "kernel_absmax": np.moveaxis(absmax, -1, axis)}


def quantize(mode: str, kernel: np.ndarray, in_dims: int) -> dict:
  """{leaf name: array} of one layer's kernel stored as `mode` (the leaves of `layout`)."""
  return int8_quantize(kernel, in_dims) if mode == "int8" else nf4_quantize(kernel, in_dims)


def nf4_dequantize(packed, absmax, in_dims: int, dtype):
  """One layer's kernel from its packed NF4 codes and block absmax: code value x absmax, in float32."""
  axis = block_axis(packed.ndim, in_dims)
  packed, absmax = jnp.moveaxis(packed, axis, -1), jnp.moveaxis(absmax, axis, -1)
  codes = jnp.stack([packed >> 4, packed & 15], axis=-1).reshape(packed.shape[:-1] + (2 * packed.shape[-1],))
  values = jnp.asarray(NF4_CODEBOOK)[codes.astype(jnp.int32)]
  w = values.reshape(absmax.shape + (NF4_BLOCK,)) * absmax[..., None].astype(jnp.float32)
  return jnp.moveaxis(w.reshape(values.shape), -1, axis).astype(dtype)


def dequantize(stored: dict, in_dims: int, dtype):
  """One layer's kernel (in..., out...) in `dtype` from its stored leaves, formed in float32."""
  if "kernel_int8" in stored:
    return (stored["kernel_int8"].astype(jnp.float32) * stored["kernel_scale"].astype(jnp.float32)).astype(dtype)
  return nf4_dequantize(stored["kernel_nf4"], stored["kernel_absmax"], in_dims, dtype)


def stored_mode(module_leaves: dict) -> str:
  """'none', 'int8' or 'nf4': how a projection's leaves {name: value} hold its kernel."""
  return next((VALUE_LEAVES[name] for name in module_leaves if name in VALUE_LEAVES), "none")


def kernel_shape(mode: str, values_shape: tuple, in_dims: int) -> tuple:
  """The float kernel's shape (a layer's) from its value leaf's (kernel_int8 or kernel_nf4)."""
  if mode != "nf4":
    return tuple(values_shape)
  axis = block_axis(len(values_shape), in_dims)
  return tuple(2 * n if a == axis else n for a, n in enumerate(values_shape))


def read_block(mode: str, name: str, kernel_shape: tuple, in_dims: int, index: tuple, read_kernel, cache: dict):
  """The block `index` (slices with concrete bounds over one layer's leaf `name`) of that leaf, quantised
  from the kernel entries it depends on, read by `read_kernel(slices over the kernel)`. `cache` (one per
  layer and kernel) keeps what another block reuses: int8's scales (small), nf4's other leaf until asked."""
  if mode == "int8":
    return _int8_block(name, in_dims, index, read_kernel, cache)
  return _nf4_block(name, len(kernel_shape), in_dims, index, read_kernel, cache)


def _spans(slices: tuple) -> tuple:
  return tuple((s.start, s.stop) for s in slices)


def _int8_block(name: str, in_dims: int, index: tuple, read_kernel, cache: dict):
  """A scale spans the whole input: the first block of some output units reads them whole and keeps
  their scale; the other blocks of those units read only themselves."""
  out_index = index[in_dims:] if name == "kernel_int8" else index
  key = _spans(out_index)
  if key not in cache:
    whole = read_kernel((slice(None),) * in_dims + tuple(out_index))
    cache[key] = int8_scale(whole, in_dims)
    if name == "kernel_int8":
      return int8_values(whole, cache[key])[tuple(index[:in_dims])]
  if name == "kernel_scale":
    return cache[key]
  return int8_values(read_kernel(tuple(index)), cache[key])


def _nf4_block(name: str, ndim: int, in_dims: int, index: tuple, read_kernel, cache: dict):
  """The block's entries along the block axis, widened to whole blocks of 64, are read and quantised;
  the other leaf's block of the same entries waits in `cache`."""
  axis = block_axis(ndim, in_dims)
  per_entry = 2 if name == "kernel_nf4" else NF4_BLOCK  # kernel entries per entry of the leaf
  wanted = index[axis]
  low = wanted.start * per_entry // NF4_BLOCK * NF4_BLOCK
  high = -(-wanted.stop * per_entry // NF4_BLOCK) * NF4_BLOCK
  source = tuple(index[:axis]) + (slice(low, high),) + tuple(index[axis + 1 :])
  leaves = cache.pop(_spans(source), None)
  if leaves is None or name not in leaves:
    leaves = nf4_quantize(read_kernel(source), in_dims)
  leaf = leaves.pop(name)
  if leaves:
    cache[_spans(source)] = leaves
  offset = low // per_entry
  return leaf[(slice(None),) * axis + (slice(wanted.start - offset, wanted.stop - offset),)]
