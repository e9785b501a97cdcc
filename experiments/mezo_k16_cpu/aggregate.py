"""The MeZO k=16 CPU-edition table from the finished cells (see experiments/sweeps.py).

python -m experiments.mezo_k16_cpu.aggregate --workdir=workdirs/mezo_k16_cpu --out=experiments/mezo_k16_cpu/results
"""

from experiments import sweeps
from experiments.mezo_k16_cpu import grid

if __name__ == "__main__":
  sweeps.aggregate_cli(grid)
