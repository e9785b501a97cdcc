"""Runs the MeZO k=16 CPU-edition grid (resumable: finished cells are skipped).

python -m experiments.mezo_k16_cpu.run --data_dir=../shared/data --workdir=workdirs/mezo_k16_cpu [--jobs=2]
"""

from experiments import sweeps
from experiments.mezo_k16_cpu import grid

if __name__ == "__main__":
  sweeps.run_cli(grid)
