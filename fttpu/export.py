"""Export a run: the merged model as a Hugging Face directory, plus the method's small artifact.

  python -m fttpu.export --workdir=DIR --to=OUT [--step=N]

OUT gets model.safetensors, config.json and the tokenizer files of the merged model (adapters
folded, sparse deltas scattered: `transformers` loads it as it loads the source checkpoint), plus
what the method adds on its own: artifact.safetensors (adapters, sparse deltas, head, prefixes) and,
for zeroth-order runs, trajectory.safetensors. The checkpoint is the newest whole one unless --step.

Export never destroys: OUT may not be the workdir, the run's pretrained checkpoint or inside either,
and must be empty or new unless --overwrite, which replaces it as a whole (written beside it, then
swapped in), so no file of an earlier export survives.
"""

import json
import os

from absl import app, flags

from fttpu import files

flags.DEFINE_string("workdir", None, "Workdir of a run (config.json, checkpoints/).")
flags.DEFINE_string("to", None, "Output directory for the Hugging Face model and the method's artifact.")
flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the newest whole checkpoint).")
flags.DEFINE_bool("overwrite", False, "Replace a non-empty OUT as a whole (never the workdir or the base checkpoint).")
flags.mark_flags_as_required(["workdir", "to"])


def _inside(path: str, directory: str) -> bool:
  if files.is_remote(path) or files.is_remote(directory):
    path, directory = files.resolve(path), files.resolve(directory)
    return path == directory or path.startswith(directory + "/")
  path, directory = os.path.realpath(path), os.path.realpath(directory)
  return os.path.commonpath([path, directory]) == directory


def check_destination(out_dir: str, protected: dict, overwrite: bool) -> None:
  """Fails unless OUT may be written: not one of (or inside) the `protected` {what: directory}, and
  empty or new unless `overwrite`."""
  from fttpu.errors import ConfigError

  for what, directory in protected.items():
    if _inside(out_dir, directory):
      raise ConfigError(
        f"--to={out_dir} is {'inside ' if _inside(out_dir, directory) and not _inside(directory, out_dir) else ''}"
        f"{what} {directory}: exporting there would overwrite it; choose another --to"
      )
  if files.exists(out_dir) and not files.isdir(out_dir):
    raise ConfigError(f"--to={out_dir} is a file; choose a directory")
  entries = files.listdir(out_dir) if files.isdir(out_dir) else []
  if entries and not overwrite:
    raise ConfigError(
      f"--to={out_dir} is not empty ({len(entries)} entries, e.g. {entries[0]}); "
      "pass --overwrite to replace it, or choose a new directory"
    )


def check_trajectory(path: str, step: int) -> None:
  """A zeroth-order run's trajectory reads and covers `step` steps, else CheckpointError."""
  from fttpu.errors import CheckpointError
  import safetensors.numpy

  try:
    steps = len(safetensors.numpy.load(files.read_bytes(path))["projected_grad"])
  except Exception as e:  # safetensors raises its own error kinds for truncated or foreign files
    raise CheckpointError(
      f"{path} is damaged ({type(e).__name__}: {str(e)[:160]}); the export would ship a "
      "trajectory that cannot replay: resume the run to rewrite it"
    ) from None
  if steps < step:
    raise CheckpointError(
      f"{path} holds {steps} steps but checkpoint {step} needs {step}: it is damaged or stale; "
      "resume the run to rewrite it"
    )


def export_workdir(workdir: str, out_dir: str, step: int | None = None, overwrite: bool = False) -> dict:
  """Writes OUT as the module docstring says; returns {"step", "files"}."""
  import jax
  import ml_collections
  from flax import traverse_util
  from fttpu import checkpoint, methods, models, optim, workdir as workdir_lib
  from fttpu.methods import zo
  from fttpu.models import hf
  from fttpu.errors import CheckpointError

  workdir, out_dir = files.resolve(workdir), files.resolve(out_dir)
  if not files.isfile(files.join(workdir, "config.json")):
    raise CheckpointError(f"{workdir} is not a run's workdir: it has no config.json")
  saved, problem = workdir_lib.read_config_json(workdir)
  if saved is None:
    raise CheckpointError(
      f"{problem}; run the same training command on this workdir once to rewrite it "
      "(it is checked against the config saved in the checkpoint)"
    )
  config = ml_collections.ConfigDict(saved)
  manager = checkpoint.make_manager(workdir, config.train.keep_checkpoints, config.train.best_metric)
  steps = manager.all_steps()
  if not steps or (step is not None and step not in steps):
    raise CheckpointError(
      f"{manager.directory} has no checkpoint {step if step is not None else ''}".rstrip()
      + f"; its checkpoints: {sorted(steps)}"
    )
  step = max(steps) if step is None else step
  protected = {
    "the run's workdir": workdir,
    "the run's pretrained checkpoint": hf.find_checkpoint_dir(config.model.checkpoint),
    "the local copy of the run's pretrained checkpoint": hf.resolve_checkpoint_dir(config.model.checkpoint),
  }
  check_destination(out_dir, protected, overwrite)
  trajectory = files.join(workdir, zo.TRAJECTORY)
  if files.exists(trajectory):
    check_trajectory(trajectory, step)
  restored = checkpoint.restore_untyped(manager, step)
  tree = jax.tree_util.tree_map(jax.numpy.asarray, restored["params"])
  model = models.load_for(config.model)
  method = methods.get_method(config, optim.make_optimizer(config.optimizer, config.train.steps), model)
  merged = method.merge(tree)["model"]
  base_paths = traverse_util.flatten_dict(model.params).keys()  # prefixes stay in the artifact
  merged = traverse_util.unflatten_dict(
    {p: v for p, v in traverse_util.flatten_dict(merged).items() if p in base_paths}
  )

  def build(directory):
    models.export(model, merged, directory)
    checkpoint.save_artifact(os.path.join(directory, "artifact.safetensors"), method.artifact(tree), method.name)
    if files.exists(trajectory):
      files.copy_tree(trajectory, os.path.join(directory, zo.TRAJECTORY))

  files.replace_directory(build, out_dir)
  manager.close()
  return {"step": step, "files": files.listdir(out_dir)}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  result = export_workdir(flags.FLAGS.workdir, flags.FLAGS.to, flags.FLAGS.step, flags.FLAGS.overwrite)
  print(json.dumps({"to": flags.FLAGS.to, **result}))


if __name__ == "__main__":
  from fttpu import cli

  cli.run(main)
