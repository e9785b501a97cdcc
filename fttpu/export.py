"""Export a run: the merged model as a Hugging Face directory, plus the method's small artifact.

  python -m fttpu.export --workdir=DIR --to=OUT [--step=N]

OUT gets model.safetensors, config.json and the tokenizer files of the merged model (adapters
folded, sparse deltas scattered: `transformers` loads it as it loads the source checkpoint), plus
what the method adds on its own: artifact.safetensors (adapters, sparse deltas, head, prefixes) and,
for zeroth-order runs, trajectory.safetensors. The checkpoint is the newest whole one unless --step.
"""
import json
import os
import shutil
import sys

from absl import app, flags

flags.DEFINE_string("workdir", None, "Workdir of a run (config.json, checkpoints/).")
flags.DEFINE_string("to", None, "Output directory for the Hugging Face model and the method's artifact.")
flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the newest whole checkpoint).")
flags.mark_flags_as_required(["workdir", "to"])


def export_workdir(workdir: str, out_dir: str, step: int | None = None) -> dict:
  """Writes OUT as the module docstring says; returns {"step", "files"}."""
  import jax
  import ml_collections
  from flax import traverse_util
  from fttpu import checkpoint, methods, models, optim
  from fttpu.models.hf import CheckpointError
  config_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(config_path):
    raise CheckpointError(f"{workdir} is not a run's workdir: it has no config.json")
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  manager = checkpoint.make_manager(workdir, config.train.keep_checkpoints, config.train.best_metric)
  steps = manager.all_steps()
  if not steps or (step is not None and step not in steps):
    raise CheckpointError(f"{manager.directory} has no checkpoint {step if step is not None else ''}".rstrip()
                          + f"; its checkpoints: {sorted(steps)}")
  step = max(steps) if step is None else step
  restored = checkpoint.restore_untyped(manager, step)
  tree = jax.tree_util.tree_map(jax.numpy.asarray, restored["params"])
  model = models.load_for(config.model)
  method = methods.get_method(config, optim.make_optimizer(config.optimizer, config.train.steps), model)
  merged = method.merge(tree)["model"]
  base_paths = traverse_util.flatten_dict(model.params).keys()  # prefixes stay in the artifact
  merged = traverse_util.unflatten_dict({p: v for p, v in traverse_util.flatten_dict(merged).items() if p in base_paths})
  os.makedirs(out_dir, exist_ok=True)
  models.export(model, merged, out_dir)
  checkpoint.save_artifact(os.path.join(out_dir, "artifact.safetensors"), method.artifact(tree), method.name)
  trajectory = os.path.join(workdir, "trajectory.safetensors")
  if os.path.exists(trajectory):
    shutil.copy(trajectory, out_dir)
  manager.close()
  return {"step": step, "files": sorted(os.listdir(out_dir))}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from fttpu.train import USER_ERRORS
  try:
    result = export_workdir(flags.FLAGS.workdir, flags.FLAGS.to, flags.FLAGS.step)
  except USER_ERRORS as e:
    sys.exit(f"error: {e}")
  print(json.dumps({"to": flags.FLAGS.to, **result}))


if __name__ == "__main__":
  app.run(main)
