"""What a zeroth-order draw of z costs per entry on this backend, by transform, fused into an add.

  python -m experiments.noise_cost [--entries=18874368] [--rounds=15]

Each transform turns fttpu's position hash (fttpu/models/perturbation.py: entry_bits) into z and adds
it to a float32 array, the shape of work the perturbed read and the update do. Rounds alternate
between the transforms, so the machine's drift falls on each alike; the table gives the fastest
round's nanoseconds per entry and the multiple of the sign draw's:

  sign          : +-1 from the top bit (zo.noise=rademacher)
  hash only     : the uniform the gaussian draws start from (the cost floor of any transform)
  box-muller    : zo.noise=gaussian (a log, a square root and a polynomial sine)
  inverse CDF   : sqrt(2) erf_inv(u), the gaussian draw before Box-Muller (for comparison)

This is the measurement behind perturbation.unit_from_bits' choice; run it on a new backend before
trusting that choice there.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from fttpu import cli
from fttpu.models import perturbation

flags.DEFINE_integer("entries", 6144 * 3072, "Entries per draw.")
flags.DEFINE_integer("rounds", 15, "Timed rounds per transform.")
FLAGS = flags.FLAGS


def transforms() -> dict:
  """name -> function of 32 bits per entry giving z in float32."""
  return {
    "sign": lambda bits: perturbation.unit_from_bits(bits, "rademacher"),
    "hash only": perturbation.symmetric_uniform,
    "box-muller": lambda bits: perturbation.unit_from_bits(bits, "gaussian"),
    "inverse CDF": lambda bits: np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(perturbation.symmetric_uniform(bits)),
  }


def fastest_rounds(entries: int, rounds: int) -> dict:
  """name -> the fastest round's seconds for one draw of `entries` added to an array."""
  keys = jnp.array([1, 2], jnp.uint32)
  steps = {
    name: jax.jit(lambda x, f=f: x + f(perturbation.entry_bits(keys, x.shape))) for name, f in transforms().items()
  }
  x = jnp.ones((entries,), jnp.float32)
  for step in steps.values():
    step(x).block_until_ready()
  times = {name: [] for name in steps}
  for _ in range(rounds):
    for name, step in steps.items():
      started = time.perf_counter()
      step(x).block_until_ready()
      times[name].append(time.perf_counter() - started)
  return {name: min(t) for name, t in times.items()}


def main(argv):
  del argv
  best = fastest_rounds(FLAGS.entries, FLAGS.rounds)
  print(f"{jax.devices()[0].platform}, {FLAGS.entries} entries, fastest of {FLAGS.rounds} rounds\n")
  print("| draw | ns per entry | x sign |\n|---|---:|---:|")
  for name, seconds in best.items():
    print(f"| {name} | {seconds / FLAGS.entries * 1e9:.2f} | {seconds / best['sign']:.2f} |")


if __name__ == "__main__":
  cli.run(main)
