"""The RoBERTa-large k=16 table from the finished cells (see experiments/sweeps.py)."""

from experiments import sweeps
from experiments.mezo_k16_roberta_large import grid

if __name__ == "__main__":
  sweeps.aggregate_cli(grid)
