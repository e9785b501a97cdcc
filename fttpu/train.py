"""The training loop: setup -> model and data -> method -> shard -> restore -> loop -> eval.

`run(config, workdir)` is the whole program; main.py only parses flags.
"""
import contextlib
import dataclasses
import functools
import json
import logging
import time

import jax
import numpy as np

from fttpu import (checkpoint, classifier, cli, config as config_lib, files, guards, methods, metrics, models, optim,
                   sharding, step as step_lib, workdir as workdir_lib)
from fttpu.data import pipeline
from fttpu.models.hf import CheckpointError
from fttpu.methods import base as method_base, masks, zo


USER_ERRORS = cli.USER_ERRORS  # what the CLIs show as one line, no traceback


def evaluate(eval_fn, params, data: pipeline.Encoded, prompts: dict, batch_size: int, mesh) -> dict:
  """Accuracy and mean cross-entropy over every example of `data`."""
  totals = {"correct": 0.0, "count": 0.0, "loss_sum": 0.0}
  for batch in pipeline.eval_batches(data, batch_size):
    sums = eval_fn(params, sharding.put_batch(mesh, {**batch, **prompts}))
    totals = {k: totals[k] + float(v) for k, v in jax.device_get(sums).items()}
  return {"accuracy": totals["correct"] / totals["count"], "loss": totals["loss_sum"] / totals["count"]}


def model_shardings(module, rules: dict, mesh) -> dict:
  """Where the pretrained parameters go: each process then reads only its devices' blocks of the checkpoint."""
  specs = sharding.param_specs({"model": models.param_shapes(module)}, models.logical_axes(module), rules, mesh)
  return sharding.named(mesh, specs["model"])


def run(config, workdir: str) -> dict:
  """Trains and evaluates as `config` says; writes config.json, metrics.jsonl, TensorBoard, checkpoints.
  On SIGTERM or a first Ctrl-C it checkpoints at the next step boundary and returns
  {"preempted": "SIGTERM" or "Ctrl-C", ...}. One run at a time holds `workdir`."""
  config_lib.validate(config)
  workdir = files.resolve(workdir)  # a bucket URI stays one
  with workdir_lib.exclusive(workdir), guards.Preemption() as preemption, contextlib.ExitStack() as closing:
    return _run(config, workdir, preemption, closing)


def check_resumable(config, workdir: str, manager) -> None:
  """Checkpoints in `workdir` resume only the config they were saved with (config.json is a copy)."""
  saved = checkpoint.saved_config(manager)
  if saved is None:
    return
  step, saved_config = saved
  name = f"checkpoint {step}"
  workdir_lib.check_config(workdir, name, saved_config, json.loads(config.to_json()))
  workdir_lib.note_config_json(workdir, name)


def data_fingerprints(data: pipeline.FewShotData) -> dict:
  """{split: fingerprint} of the sampled, tokenized splits."""
  return {name: workdir_lib.fingerprint(*(x for x in dataclasses.astuple(getattr(data, name)) if x is not None))
          for name in ("train", "dev", "test")}


def stop_diverged(manager, step: int, saved_step: int | None, what: str) -> str:
  """The message of a run stopped at `step` for divergence. A checkpoint of this very step holds the
  weights whose loss diverged: it moves to DIR/damaged/, so the newest one left is the last state
  whose loss was within the bound."""
  checkpoint.finish(manager)
  if saved_step == step and step in manager.all_steps():
    checkpoint.quarantine(manager, step)
  kept = manager.latest_step()
  where = f"the last good state is checkpoint {kept} in {manager.directory}" if kept is not None else "no checkpoint kept"
  return f"step {step + 1}: {what}; stopped ({where}; set train.divergence=continue to train on)"


def _run(config, workdir: str, preemption: guards.Preemption, closing: contextlib.ExitStack) -> dict:
  """The run; `closing` closes the checkpoint manager (waiting for its saves) and the metric writer
  however the run ends, so a failure keeps every checkpoint it had started."""
  # ---------------------------------------------------------------- setup
  mesh = sharding.make_mesh(config.mesh)
  logging.info("mesh %s over %d %s devices", dict(mesh.shape), mesh.size, jax.default_backend())
  sharding.check_batch_sizes(mesh, config.train.batch_size, config.train.eval_batch_size)
  manager = checkpoint.make_manager(workdir, config.train.keep_checkpoints, config.train.best_metric)
  closing.callback(manager.close)
  closing.callback(checkpoint.finish, manager)  # first: started saves complete, with their manifests
  check_resumable(config, workdir, manager)
  is_lead = jax.process_index() == 0
  if is_lead:
    files.write_atomic(files.join(workdir, "config.json"), config.to_json(indent=2))

  # ---------------------------------------------------------------- model and data
  rules = dict(config.sharding_rules)
  model = models.load_for(config.model, shardings=lambda module: model_shardings(module, rules, mesh))
  models.check_length(model.config, config.data.max_length)
  model_axes = models.logical_axes(model.module)
  data = pipeline.load_few_shot(config.data, model.tokenizer, config.seed, config.model.classifier)
  logging.info("task %s: %d train, %d dev, %d test examples; checkpoint %s", data.task.name, len(data.train),
               len(data.dev), len(data.test), model.checkpoint_dir)
  classify = classifier.make_classifier(model.module, config.model.classifier, config.model.logit_scale)
  logits_fn = classify.logits
  loss_fn = classifier.make_loss_fn(logits_fn)

  # ---------------------------------------------------------------- method
  optimizer = optim.make_optimizer(config.optimizer, config.train.steps)
  method = methods.get_method(config, optimizer, model)
  total_steps = config.train.steps if method.trains else 0
  batch_at = lambda step: {**pipeline.train_batch(data.train, step, config.train.batch_size, config.seed),
                           **data.prompts}
  context = methods.Context(loss_fn=loss_fn, classifier=classify, train_batch=batch_at,
                            train_set={**pipeline.whole(data.train), **data.prompts}, module=model.module,
                            full_optimizer=optimizer)
  started = time.perf_counter()
  params = method.prepare(model.params, jax.random.key(config.seed), context)
  labels = method.labels(params)
  zeroth_order = config.method in zo.METHOD_NAMES  # the run is also its trajectory (zo.save_trajectory)
  initial_artifact = sharding.to_host(method.artifact(params)) if zeroth_order else None
  logging.info("method %s: %d of %d parameters train (prepared in %.1fs)", method.name,
               masks.count_trainable(params, labels), sum(p.size for p in jax.tree_util.tree_leaves(params)),
               time.perf_counter() - started)

  # ---------------------------------------------------------------- shard
  state, state_sharding = sharding.create_state(params, method.tx, config.seed, mesh, rules, model_axes)
  del params
  per_device = sharding.device_bytes(state.params)
  logging.info("parameters: %.1f MB in all, at most %.1f MB on one device", sum(
      p.nbytes for p in jax.tree_util.tree_leaves(state.params)) / 2**20, max(per_device.values()) / 2**20)
  prompts = data.prompts
  example_batch = batch_at(0)
  skip_nonfinite = config.train.nonfinite == "skip"
  train_step = jax.jit(functools.partial(step_lib.train_step, method=method, loss_fn=loss_fn,
                                         skip_nonfinite=skip_nonfinite),
                       in_shardings=(state_sharding, sharding.batch_shardings(mesh, example_batch)),
                       out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=0)
  eval_step = jax.jit(functools.partial(step_lib.eval_step, logits_fn=logits_fn))
  evaluate_on = lambda params, split: evaluate(eval_step, method.merge(params), split, prompts,
                                               config.train.eval_batch_size, mesh)

  # ---------------------------------------------------------------- restore
  trajectory_path = files.join(workdir, "trajectory.safetensors")
  # saved beside the state in each checkpoint
  progress_record = {"projected_grad": [], "skipped_batches": 0, "divergence": {}}
  fingerprints = data_fingerprints(data)
  restored = checkpoint.restore_latest(manager, state)
  resume_step = None
  if restored is not None:
    resume_step, state, saved_record = restored
    workdir_lib.check_data(workdir, f"checkpoint {resume_step}", saved_record.get("data_fingerprint", fingerprints),
                           fingerprints)
    progress_record.update({k: saved_record[k] for k in progress_record if k in saved_record})
    logging.info("resumed from %s at step %d", checkpoint.step_path(manager, resume_step), int(state.step))
  writer = metrics.MetricWriter(workdir, enabled=is_lead, resume_step=resume_step)
  closing.callback(writer.close)
  projected = progress_record["projected_grad"]  # zeroth-order: the projected gradients of every step so far
  if zeroth_order and len(projected) != int(jax.device_get(state.step)):
    raise CheckpointError(f"checkpoint {resume_step} in {manager.directory} holds {len(projected)} projected gradients "
                          f"for step {int(jax.device_get(state.step))}; it cannot resume this zeroth-order run")

  def save_checkpoint(dev: dict | None = None):
    step = int(jax.device_get(state.step))
    # copies: orbax serializes the record in the background while the loop appends to `projected`
    record = {**progress_record, "projected_grad": list(projected), "divergence": dict(progress_record["divergence"]),
              "data_position": step, "seed": config.seed, "data_fingerprint": fingerprints}
    checkpoint.save(manager, state, record, json.loads(config.to_json()),
                    metrics={config.train.best_metric: dev[config.train.best_metric]} if dev and config.train.best_metric else None)
    if zeroth_order and is_lead and projected:
      zo.save_trajectory(trajectory_path, initial_artifact, jax.device_get(state.rng), np.asarray(projected), method.name)
    return step

  if method.refresh:  # dynamic masks: dense gradients every `refresh_every` steps, outside the step
    dense_grad = method_base.dense_grad_fn(loss_fn)
    refresh = lambda state, step: sharding.put(
        method.refresh(state, dense_grad, lambda i: sharding.put_batch(mesh, batch_at(i)), total_steps), state_sharding)

  # ---------------------------------------------------------------- loop
  first_step = int(jax.device_get(state.step))
  saved_step = resume_step
  timings = {}
  if first_step < total_steps:
    started = time.perf_counter()
    train_step = train_step.lower(state, sharding.put_batch(mesh, example_batch)).compile()
    timings["perf/compile_s"] = time.perf_counter() - started
    logging.info("train step compiled in %.1fs", timings["perf/compile_s"])
  progress = metrics.Progress(total_steps, first_step)
  step_times = []
  for step in range(first_step, total_steps):
    if preemption.requested(manager, step):
      if saved_step != step:
        saved_step = save_checkpoint()
      checkpoint.finish(manager)
      reason = preemption.signalled or "SIGTERM"
      logging.warning("%s: saved checkpoint %d in %s; run again with the same --workdir to resume",
                      "interrupted (Ctrl-C)" if reason == "Ctrl-C" else "preempted (SIGTERM)", step, manager.directory)
      return {"step": step, "preempted": reason, "checkpoint": checkpoint.step_path(manager, step)}
    if method.refresh and step and step % method.refresh_every == 0:
      state = refresh(state, step)
    batch = batch_at(step)
    started = time.perf_counter()
    state, step_metrics = train_step(state, sharding.put_batch(mesh, batch))
    step_metrics = jax.device_get(step_metrics)  # waits for the step: the timing covers the compute
    step_times.append(time.perf_counter() - started)
    done = step + 1
    if step_metrics.pop("train/nonfinite"):
      what = guards.describe_nonfinite(step_metrics)
      if not skip_nonfinite:  # the state is still the one before this step: keep it, then stop
        if saved_step != step:
          saved_step = save_checkpoint()
        checkpoint.finish(manager)
        raise FloatingPointError(f"step {done}: {what}; stopped with the last good state saved as checkpoint {step} "
                                 f"in {manager.directory} (set train.nonfinite=skip to skip such batches)")
      progress_record["skipped_batches"] += 1
      logging.warning("step %d: %s; batch skipped (%d so far)", done, what, progress_record["skipped_batches"])
    if zeroth_order:
      projected.append(step_metrics.pop("train/projected_grad").tolist())
      step_metrics["train/projected_grad_abs"] = np.abs(projected[-1]).mean()
    step_metrics["train/skipped_batches"] = progress_record["skipped_batches"]
    if done % config.train.log_every == 0 or done == total_steps:
      writer.write(done, step_metrics)
      progress.log(done, step_metrics)
    diverged = guards.divergence(progress_record["divergence"], float(step_metrics["train/loss"]),
                                 projected[-1] if zeroth_order and config.zo.objective == "loss" else None,
                                 config.train.divergence_ratio, config.train.stuck_steps)
    if diverged and config.train.divergence == "stop":
      raise guards.Diverged(stop_diverged(manager, step, saved_step, diverged))
    dev = None
    if done % config.train.eval_every == 0 or done == total_steps:
      dev = evaluate_on(state.params, data.dev)
      writer.write(done, {"eval/accuracy": dev["accuracy"], "eval/loss": dev["loss"]}, split="dev")
      logging.info("step %d dev accuracy %.4f", done, dev["accuracy"])
    if done % config.train.checkpoint_every == 0 or done == total_steps:
      saved_step = save_checkpoint(dev)
  checkpoint.finish(manager)
  artifact = sharding.to_host(method.artifact(state.params))  # every process: gathers across hosts
  if is_lead:
    saved = checkpoint.save_artifact(files.join(workdir, "artifact.safetensors"), artifact, method.name)
    if saved:
      logging.info("saved %s (%.2f MB): what %s adds to the pretrained checkpoint", saved[0], saved[1], method.name)
  if step_times:
    timings["perf/step_s"] = float(np.median(step_times[1:] or step_times))

  # ---------------------------------------------------------------- eval
  test = evaluate_on(state.params, data.test)
  record = writer.write(int(jax.device_get(state.step)),
                        {"eval/accuracy": test["accuracy"], "eval/loss": test["loss"], **timings},
                        split="test", examples=len(data.test), final=True)
  logging.info("final test accuracy %.4f on %d examples", test["accuracy"], len(data.test))
  return record
