"""The OPT-13B SuperGLUE table from the finished cells (see experiments/sweeps.py)."""

from experiments import sweeps
from experiments.mezo_opt13b import grid

if __name__ == "__main__":
  sweeps.aggregate_cli(grid)
