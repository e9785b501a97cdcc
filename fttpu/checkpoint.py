"""Checkpoints of the TrainState through orbax's CheckpointManager (DIR/checkpoints/<step>)."""
import os

import jax
import orbax.checkpoint as ocp


def make_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def save(manager: ocp.CheckpointManager, state) -> None:
  manager.save(int(jax.device_get(state.step)), args=ocp.args.StandardSave(state))


def restore(manager: ocp.CheckpointManager, step: int, target):
  """Checkpoint `step` restored onto `target`'s structure, dtypes and shardings."""
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))
