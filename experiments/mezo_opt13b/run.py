"""Runs the OPT-13B SuperGLUE grid (resumable). On a pod, every worker runs this same command.

  python -m experiments.mezo_opt13b.run --base=family=opt,checkpoint=DIR --data_dir=DATA
"""
from experiments import sweeps
from experiments.mezo_opt13b import grid

if __name__ == "__main__":
  sweeps.run_cli(grid)
