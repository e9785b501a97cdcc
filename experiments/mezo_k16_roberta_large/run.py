"""Runs the RoBERTa-large k=16 grid (resumable). On a pod, every worker runs this same command.

  python -m experiments.mezo_k16_roberta_large.run --base=family=roberta,checkpoint=DIR,k=16 --data_dir=DATA
"""
from experiments import sweeps
from experiments.mezo_k16_roberta_large import grid

if __name__ == "__main__":
  sweeps.run_cli(grid)
