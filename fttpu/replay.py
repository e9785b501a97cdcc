"""Rebuild a zeroth-order run's parameters from its trajectory and check them against its checkpoint.

  python -m fttpu.replay --workdir=DIR

DIR is a workdir of `method=mezo` or `method=zo` (config.json, trajectory.safetensors,
checkpoints/). The trajectory holds the initial trainable tree and the projected gradient of
every step; replaying it applies the same updates without evaluating a single loss. It prints
{"steps", "max_abs_diff" (replayed vs checkpoint), "max_abs_update" (checkpoint vs start), "identical"}.

What is exact: with rademacher noise the replay equals the checkpoint bit for bit. Gaussian z goes
through a log, a square root and a polynomial, which XLA compiles into the train step's fusions and
the replay's differently, so the two may differ by float32 rounding.
"""

import json

import jax
import ml_collections
import numpy as np
from absl import app, flags

from fttpu import files

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The CLI's flags, defined when it runs (so importing replay_workdir beside another CLI does not clash)."""
  flags.DEFINE_string("workdir", None, "Workdir of a zeroth-order run.")
  flags.mark_flag_as_required("workdir")


def replay_workdir(workdir: str) -> dict:
  """{"steps", "max_abs_diff", "identical"}: the replayed parameters against the last checkpoint."""
  from fttpu import checkpoint, methods, models, optim, trainer, workdir as workdir_lib
  from fttpu.errors import CheckpointError, ConfigError
  from fttpu.methods import zo
  from fttpu.state import TrainState

  saved, problem = workdir_lib.read_config_json(workdir)
  if saved is None:
    raise CheckpointError(f"{workdir} is not a run's workdir: {problem}")
  config = ml_collections.ConfigDict(saved)
  zeroth_order = [name for name, entry in methods.METHODS.items() if entry.zeroth_order]
  if config.method not in zeroth_order:
    raise ConfigError(
      f"{workdir} is a method={config.method} run; only zeroth-order runs (method "
      f"{' or '.join(zeroth_order)}) have a trajectory to replay"
    )
  trajectory = files.join(workdir, zo.TRAJECTORY)
  if not files.isfile(trajectory):
    raise CheckpointError(f"{trajectory} is missing: the run has not saved a checkpoint yet")
  model = models.load_for(config.model)
  method = methods.get_method(config, optim.make_optimizer(config.optimizer, config.train.steps), model)
  if method.refresh:
    raise ConfigError(
      f"{workdir}: cannot replay a {method.name} run: it re-chooses its trainable set every "
      f"{method.refresh_every} steps from the run's state (e.g. LISA's layers under zo.base=layers, "
      "layers.sample > 0), which the trajectory does not record; only runs with a fixed trainable "
      "set replay"
    )
  try:
    tree, rng, projected = zo.load_trajectory(trajectory, model.params, config.zo.noise)
  except ConfigError:
    raise
  except Exception as e:  # safetensors raises its own error kinds for truncated or foreign files
    raise CheckpointError(
      f"{trajectory} is damaged ({type(e).__name__}: {str(e)[:160]}); resume the run to rewrite it"
    ) from None
  labels = method.labels(tree)
  initial = [np.array(x, np.float64) for x in jax.tree_util.tree_leaves(tree)]  # copies: replay donates tree
  replayed = trainer.replay_trajectory(tree, labels, method.tx, rng, projected, config.zo.noise, config.optimizer.name)
  manager = checkpoint.make_manager(workdir, config.train.keep_checkpoints)
  step = manager.latest_step()
  if step != len(projected):
    raise CheckpointError(
      f"{workdir}: the last checkpoint is step {step} but the trajectory has {len(projected)} "
      "steps; resume the run to bring them in line"
    )
  trained = checkpoint.restore(manager, step, TrainState.create(tree, method.tx, config.seed))[0].params
  largest = lambda pairs: max(
    float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)), initial=0.0)) for a, b in pairs
  )
  trained = jax.tree_util.tree_leaves(trained)
  diff = largest(zip(jax.tree_util.tree_leaves(replayed), trained))
  return {
    "steps": len(projected),
    "max_abs_diff": diff,
    "max_abs_update": largest(zip(trained, initial)),
    "identical": diff == 0.0,
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  print(json.dumps(replay_workdir(FLAGS.workdir)))


if __name__ == "__main__":
  from fttpu import cli

  define_flags()
  cli.run(main)
