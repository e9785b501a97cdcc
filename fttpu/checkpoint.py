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


def save_artifact(path: str, tree: dict, method: str):
  """Writes the small tree of a method (adapters, head, sparse deltas) as safetensors, keys
  'a/b/c' by tree path, with the method's name in the metadata. Returns (path, MB), or None
  when the method adds nothing to the pretrained weights (full fine-tuning)."""
  from flax import traverse_util
  import numpy as np
  import safetensors.numpy
  flat = {"/".join(k): np.asarray(jax.device_get(v)) for k, v in traverse_util.flatten_dict(tree).items()}
  if not flat:
    return None
  safetensors.numpy.save_file(flat, path, metadata={"method": method})
  return path, os.path.getsize(path) / 2**20


def load_artifact(path: str, model_params: dict) -> dict:
  """The method tree rebuilt from a saved artifact on top of the pretrained `model_params`."""
  import safetensors.numpy
  return onto_pretrained(safetensors.numpy.load_file(path), model_params)


def onto_pretrained(flat_artifact: dict, model_params: dict) -> dict:
  """The method tree of an artifact given as {'a/b/c': array}, on top of the pretrained `model_params`."""
  from flax import traverse_util
  artifact = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat_artifact.items()})
  model = traverse_util.flatten_dict(model_params)
  model.update(traverse_util.flatten_dict(artifact.pop("model", {})))
  return {"model": traverse_util.unflatten_dict(model), **artifact}
