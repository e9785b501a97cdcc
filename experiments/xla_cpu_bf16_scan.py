"""Why bfloat16 weights cost three times their bytes on XLA's CPU backend, and float16 ones do not.

  python -m experiments.xla_cpu_bf16_scan [--layers=12 --hidden=768 --ffn=3072]

A model of L layers scans over its stacked weights: each step of the loop dynamic-slices one layer
out of the stack and converts it to float32 for the matmuls. XLA's CPU compiler has no bfloat16
dynamic-slice (its float-normalization-bf16 pass rewrites the slice to operate in float32), so the
convert moves onto the whole stack and loop-invariant code motion hoists it out of the loop: the
compiled program holds a float32 copy of every layer (2x the bfloat16 bytes) for its whole run.
float16 slices are supported, so the same program in float16 holds one layer's float32 copy.
The PyTorch twin (a Python loop over per-layer bfloat16 tensors, converted one at a time) holds
one layer too. This prints the compiled temporaries of the JAX program per storage dtype, and
each one's peak RSS beyond its weights, in a process of its own (PyTorch's when torch is installed).
"""

import importlib.util
import json
import os
import resource
import subprocess
import sys

from absl import app, flags
import jax
import jax.numpy as jnp

flags.DEFINE_integer("layers", 12, "Stacked layers.")
flags.DEFINE_integer("hidden", 768, "Rows of each layer's weight.")
flags.DEFINE_integer("ffn", 3072, "Columns of each layer's weight.")
flags.DEFINE_integer("tokens", 256, "Rows of the activations.")
flags.DEFINE_string("one", None, "Internal: measure one of jax:<dtype> or torch:<dtype> in this process.")
FLAGS = flags.FLAGS
MB = 2**20


def forward(weights: jax.Array, hidden: jax.Array) -> jax.Array:
  """h <- tanh(h W W^T) for each layer W of the stack, computed in float32."""

  def layer(h, w):
    w = w.astype(jnp.float32)
    return jnp.tanh(h @ w @ w.T), None

  return jax.lax.scan(layer, hidden, weights)[0]


def rss_mb() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def peak_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def jax_extra_mb(dtype_name: str) -> tuple[float, float]:
  """(compiled temporaries, peak RSS beyond the weights and input) of the scan, MiB, stack in `dtype_name`."""
  dtype = getattr(jnp, dtype_name)
  weights = jnp.ones((FLAGS.layers, FLAGS.hidden, FLAGS.ffn), dtype)
  hidden = jnp.ones((FLAGS.tokens, FLAGS.hidden), jnp.float32)
  compiled = jax.jit(forward).lower(weights, hidden).compile()
  before = rss_mb()
  compiled(weights, hidden).block_until_ready()
  return compiled.memory_analysis().temp_size_in_bytes / MB, peak_mb() - before


def torch_extra_mb(dtype_name: str) -> float:
  """PyTorch's twin: peak RSS beyond its weights and input (MiB)."""
  import torch

  dtype = getattr(torch, dtype_name)
  weights = [torch.ones(FLAGS.hidden, FLAGS.ffn, dtype=dtype) for _ in range(FLAGS.layers)]
  hidden = torch.ones(FLAGS.tokens, FLAGS.hidden)
  before = rss_mb()
  with torch.no_grad():
    h = hidden
    for w in weights:
      w = w.float()
      h = torch.tanh(h @ w @ w.T)
  return peak_mb() - before


def in_child(which: str) -> list:
  """Run one measurement in a fresh process (peak RSS is per process)."""
  args = [f"--{f}={getattr(FLAGS, f)}" for f in ("layers", "hidden", "ffn", "tokens")]
  out = subprocess.run(
    [sys.executable, "-m", "experiments.xla_cpu_bf16_scan", f"--one={which}", *args],
    capture_output=True,
    text=True,
    check=True,
  )
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  if FLAGS.one:
    framework, dtype_name = FLAGS.one.split(":")
    print(json.dumps(jax_extra_mb(dtype_name) if framework == "jax" else [torch_extra_mb(dtype_name)]))
    return
  stack_mb = FLAGS.layers * FLAGS.hidden * FLAGS.ffn * 4 / MB
  print(f"{FLAGS.layers} layers of {FLAGS.hidden}x{FLAGS.ffn}: a float32 copy of the stack is {stack_mb:.0f} MiB")
  print("| storage | JAX compiled temp MiB | JAX peak RSS extra MiB | PyTorch twin peak RSS extra MiB |")
  print("|---|---:|---:|---:|")
  torch_installed = importlib.util.find_spec("torch") is not None
  for name in ("bfloat16", "float16", "float32"):
    temp, extra = in_child(f"jax:{name}")
    twin = f"{in_child(f'torch:{name}')[0]:.0f}" if torch_installed else "(torch not installed)"
    print(f"| {name} | {temp:.0f} | {extra:.0f} | {twin} |")


if __name__ == "__main__":
  app.run(main)
