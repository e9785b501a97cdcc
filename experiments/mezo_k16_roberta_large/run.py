"""Runs the RoBERTa-large k=16 grid (resumable) in this process; on a pod, --launcher=tpu_pod prints a
`launch/tpu_pod.sh run` line per unfinished cell instead (each cell on every worker at once).

  python -m experiments.mezo_k16_roberta_large.run --base=family=roberta,checkpoint=DIR,k=16 --data_dir=DATA
"""

from experiments import sweeps
from experiments.mezo_k16_roberta_large import grid

if __name__ == "__main__":
  sweeps.run_cli(grid)
