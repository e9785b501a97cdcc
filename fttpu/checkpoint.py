"""Checkpoints through orbax's CheckpointManager (DIR/checkpoints/<step>), and method artifacts.

A checkpoint holds three items:
  state   the TrainState: params, optimizer state, step, RNG (arrays, restored onto any mesh)
  run     where the run stands besides the state (JSON): the data position (batches are a pure
          function of the step), batches skipped for non-finite values, and for zeroth-order runs
          the projected gradient of every step so far (the trajectory)
  config  the run's config (JSON)
Saves are asynchronous. The manager keeps the newest `keep` checkpoints plus the best by a dev metric.

Once a save has finished, a manifest of its files and their sizes is written into it. `restore_latest`
checks the newest checkpoint against its manifest, then restores it; a checkpoint with a missing or
truncated file, or one orbax cannot read, is moved to DIR/damaged/ (nothing is deleted) and the
previous one is tried.
"""

import json
import logging
import os
import time

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from fttpu import files

MANIFEST = "fttpu_manifest.json"
# dev metric -> higher is better: classification's accuracy and loss, generation's F1 and exact match
BEST_METRICS = {"accuracy": True, "loss": False, "f1": True, "em": True}


def make_manager(workdir: str, keep: int, best_metric: str = "") -> ocp.CheckpointManager:
  """Keeps the newest `keep` checkpoints, plus (when best_metric names a dev metric) the best one."""
  directory = files.resolve(files.join(workdir, "checkpoints"))
  policies = [checkpoint_managers.LatestN(n=keep)]
  if best_metric:
    higher = BEST_METRICS[best_metric]
    policies.append(
      checkpoint_managers.BestN(
        get_metric_fn=lambda m: m[best_metric] if higher else -m[best_metric],
        n=1,
        keep_checkpoints_without_metrics=False,
      )
    )
  options = ocp.CheckpointManagerOptions(
    create=True, preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies)
  )
  return ocp.CheckpointManager(directory, options=options)


def save(
  manager: ocp.CheckpointManager,
  state,
  run: dict | None = None,
  config: dict | None = None,
  metrics: dict | None = None,
) -> None:
  """Starts an asynchronous save of `state` (and the run's position and config) at its step."""
  finish(manager)  # the previous save is complete: give it its manifest before starting the next
  items = {
    "state": ocp.args.StandardSave(state),
    "run": ocp.args.JsonSave(run or {}),
    "config": ocp.args.JsonSave(config or {}),
  }
  manager.save(int(jax.device_get(state.step)), args=ocp.args.Composite(**items), metrics=metrics, force=True)


def finish(manager: ocp.CheckpointManager) -> None:
  """Waits for pending saves and writes the manifest of every finished checkpoint that lacks one."""
  manager.wait_until_finished()
  if jax.process_index() != 0:
    return
  for step in manager.all_steps():
    path = step_path(manager, step)
    if files.isdir(path) and not files.exists(files.join(path, MANIFEST)):
      _write_json(files.join(path, MANIFEST), _file_sizes(path))


def restore(manager: ocp.CheckpointManager, step: int, target) -> tuple:
  """(state, run) of checkpoint `step`, the state restored onto `target`'s structure, dtypes and shardings."""
  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
  restored = manager.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), run=ocp.args.JsonRestore())
  )
  return restored["state"], dict(restored["run"] or {})


def saved_config(manager: ocp.CheckpointManager) -> tuple[int, dict] | None:
  """(step, config) of the newest checkpoint whose saved config reads, or None without checkpoints."""
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return step, dict(manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])
    except Exception as e:  # a damaged checkpoint: restore_latest moves it aside later
      logging.warning(
        "checkpoint %s: its saved config does not read (%s)",
        step_path(manager, step),
        f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e) else type(e).__name__,
      )
  return None


def restore_untyped(manager: ocp.CheckpointManager, step: int) -> dict:
  """Checkpoint `step`'s state as saved (a dict: step, params, opt_state, rng) on this process's first
  device, whatever mesh wrote it: for reading a run back (export) without rebuilding its method's tree."""
  saved = ocp.StandardCheckpointer().metadata(files.join(step_path(manager, step), "state")).item_metadata.tree
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), saved)
  return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]


def restore_latest(manager: ocp.CheckpointManager, target) -> tuple | None:
  """(step, state, run) of the newest checkpoint that is whole, or None when there is none.
  Damaged ones are moved aside to DIR/damaged/ with a warning naming them and what is wrong."""
  for step in sorted(manager.all_steps(), reverse=True):
    path = step_path(manager, step)
    problem = damage(path)
    if problem is None:
      try:
        return (step, *restore(manager, step, target))
      except Exception as e:  # orbax/tensorstore raise many kinds for unreadable files
        problem = f"orbax cannot read it ({type(e).__name__}: {str(e).splitlines()[0][:300]})"
    logging.warning("checkpoint %s is damaged: %s; falling back to the previous checkpoint", path, problem)
    quarantine(manager, step)
  if files.isdir(damaged_dir(manager)) and files.listdir(damaged_dir(manager)):
    logging.warning(
      "no whole checkpoint is left in %s (damaged ones are in %s): starting from step 0",
      manager.directory,
      damaged_dir(manager),
    )
  return None


def damage(path: str) -> str | None:
  """What is wrong with a finished checkpoint directory according to its manifest, or None.
  A checkpoint without a manifest (its process stopped right after the save) is left to orbax."""
  manifest_path = files.join(path, MANIFEST)
  if not files.exists(manifest_path):
    return None
  try:
    expected = json.loads(files.read_text(manifest_path))
  except (OSError, ValueError) as e:
    return f"its manifest {manifest_path} is unreadable ({e})"
  actual = _file_sizes(path)
  missing = sorted(set(expected) - set(actual))
  if missing:
    return f"{len(missing)} file(s) missing, e.g. {missing[0]}"
  changed = sorted(name for name in expected if actual[name] != expected[name])
  if changed:
    name = changed[0]
    return f"{len(changed)} file(s) of the wrong size, e.g. {name} has {actual[name]} bytes, expected {expected[name]}"
  return None


def quarantine(manager: ocp.CheckpointManager, step: int) -> None:
  """Moves checkpoint `step` to DIR/damaged/<step>-<time> (process 0), and forgets it."""
  if jax.process_index() == 0:
    files.makedirs(damaged_dir(manager))
    target = files.join(damaged_dir(manager), f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    files.move(step_path(manager, step), target)
  manager.reload()


def step_path(manager: ocp.CheckpointManager, step: int) -> str:
  return files.join(str(manager.directory), str(step))


def damaged_dir(manager: ocp.CheckpointManager) -> str:
  return files.join(os.path.dirname(str(manager.directory)), "damaged")


def _file_sizes(path: str) -> dict:
  return {name: size for name, size in files.file_sizes(path).items() if os.path.basename(name) != MANIFEST}


def _write_json(path: str, value) -> None:
  files.write_atomic(path, json.dumps(value, indent=1, sort_keys=True))


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
  files.write_atomic(path, safetensors.numpy.save(flat, metadata={"method": method}))
  return path, files.size(path) / 2**20


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
