"""What a zeroth-order draw of z costs per entry on this backend, by transform, fused into an add.

  python -m experiments.noise_cost [--entries=18874368] [--rounds=15]

Each transform turns fttpu's position hash (fttpu/models/perturbation.py: entry_bits) into z and adds
it to a float32 array, the shape of work the perturbed read and the update do. Rounds alternate
between the transforms, so the machine's drift falls on each alike; the table gives the fastest
round's nanoseconds per entry and the multiple of the sign draw's:

  sign          : +-1 from the top bit (zo.noise=rademacher)
  hash only     : the uniform the gaussian draws start from (the cost floor of any transform)
  box-muller    : zo.noise=gaussian (a polynomial log, a square root and a polynomial sine)
  box-muller, jnp.log : the same with XLA's own log (the generator before fttpu's polynomial one)
  inverse CDF   : sqrt(2) erf_inv(u), the gaussian draw before Box-Muller (for comparison)

A second table times what a half-precision update adds after the draw: a float16 array updated in place
(donated) with its float32 sum rounded to nearest, and stochastically (fttpu.methods.masks.stochastic_round,
which every update of float16 or bfloat16 weights runs).

This is the measurement behind perturbation.unit_from_bits' choice; run it on a new backend before
trusting that choice there.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from fttpu import cli
from fttpu.methods import masks
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
    "box-muller, jnp.log": lambda bits: (
      jnp.sqrt(-2.0 * jnp.log(perturbation.open_unit_interval(bits)))
      * perturbation.sin_half_period(perturbation.symmetric_uniform(bits))
    ),
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


def fastest_updates(entries: int, rounds: int) -> dict:
  """rounding -> the fastest round's seconds to add 1e-6 to a float16 array of `entries` in place."""
  to_nearest = lambda x, key: x.astype(jnp.float16)
  updates = {
    name: jax.jit(lambda p, key, f=f: f(p.astype(jnp.float32) + 1e-6, key), donate_argnums=0)
    for name, f in (("nearest", to_nearest), ("stochastic", lambda x, key: masks.stochastic_round(x, jnp.float16, key)))
  }
  p, key = jnp.full((entries,), 0.01, jnp.float16), jax.random.key(0)
  times = {name: [] for name in updates}
  for round_ in range(rounds + 1):  # the first compiles
    for name, update in updates.items():
      started = time.perf_counter()
      p = update(p, key)
      p.block_until_ready()
      if round_:
        times[name].append(time.perf_counter() - started)
  return {name: min(t) for name, t in times.items()}


def main(argv):
  del argv
  best = fastest_rounds(FLAGS.entries, FLAGS.rounds)
  print(f"{jax.devices()[0].platform}, {FLAGS.entries} entries, fastest of {FLAGS.rounds} rounds\n")
  print("| draw | ns per entry | x sign |\n|---|---:|---:|")
  for name, seconds in best.items():
    print(f"| {name} | {seconds / FLAGS.entries * 1e9:.2f} | {seconds / best['sign']:.2f} |")
  updates = fastest_updates(FLAGS.entries, FLAGS.rounds)
  print("\n| float16 update in place, rounded | ns per entry |\n|---|---:|")
  for name, seconds in updates.items():
    print(f"| {name} | {seconds / FLAGS.entries * 1e9:.2f} |")


if __name__ == "__main__":
  cli.run(main)
