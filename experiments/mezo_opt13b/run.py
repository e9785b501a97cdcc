"""Runs the OPT-13B SuperGLUE grid (resumable) in this process; on a pod, --launcher=tpu_pod prints a
`launch/tpu_pod.sh run` line per unfinished cell instead (each cell on every worker at once).

  python -m experiments.mezo_opt13b.run --base=family=opt,checkpoint=DIR --data_dir=DATA
"""

from experiments import sweeps
from experiments.mezo_opt13b import grid

if __name__ == "__main__":
  sweeps.run_cli(grid)
