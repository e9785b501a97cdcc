"""The training loop: validate -> model and data -> method -> shard -> restore -> loop -> eval.

`run(config, workdir)` is the whole program; main.py only parses flags. The setup is fttpu.trainer's;
this module adds what a run owns: its workdir, checkpoints, metrics and the loop over steps.
"""

import contextlib
import dataclasses
import functools
import json
import logging
import resource
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from fttpu import (
  checkpoint,
  files,
  generate,
  guards,
  host_memory,
  metrics,
  models,
  sharding,
  step as step_lib,
  trainer,
  workdir as workdir_lib,
)
from fttpu.data import generation, pipeline
from fttpu.errors import CheckpointError
from fttpu.methods import base as method_base, masks


def evaluate_answers(model, data: generation.GenerationData, params, prompts, config, mesh) -> dict:
  """F1 and exact match of the answers `params` decode greedily after `prompts` (a generation task's split)."""
  predictions, _ = generate.evaluate_generation(
    model.module,
    params,
    model.tokenizer,
    data.task,
    prompts,
    data.max_new_tokens,
    batch_size=config.train.eval_batch_size,
    mesh=mesh,
    rules=dict(config.sharding_rules),
  )
  return generation.answer_metrics(predictions, prompts)


def split_evaluator(config, model, data, mesh, logits_fn) -> Callable:
  """evaluate(merged tree, split) -> the split's dev/test metrics: accuracy and loss (classification), or
  f1 and em of the greedy answers (generation tasks)."""
  if isinstance(data, generation.GenerationData):
    return lambda tree, split: evaluate_answers(model, data, tree["model"], split, config, mesh)
  eval_step = jax.jit(functools.partial(step_lib.eval_step, logits_fn=logits_fn))
  multiple = pipeline.padding_multiple(config.data)
  return lambda tree, split: evaluate(
    eval_step, tree, split, data.prompts, config.train.eval_batch_size, mesh, multiple
  )


def load_data(config, tokenizer) -> pipeline.FewShotData | generation.GenerationData:
  """The task's sampled, tokenized splits: classification (pipeline) or generation (SQuAD, DROP)."""
  if generation.is_generation_task(config.data.task):
    return generation.load_generation(config.data, tokenizer, config.seed, config.data.max_new_tokens)
  return pipeline.load_few_shot(config.data, tokenizer, config.seed, config.model.classifier)


def evaluate(eval_fn, params, data: pipeline.Encoded, prompts: dict, batch_size: int, mesh, multiple: int = 0) -> dict:
  """Accuracy and mean cross-entropy over every example of `data` (batches trimmed to a multiple of
  `multiple` tokens, pipeline.eval_batches)."""
  totals = {"correct": 0.0, "count": 0.0, "loss_sum": 0.0}
  for batch in pipeline.eval_batches(data, batch_size, multiple):
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
  trainer.validate(config)
  workdir = files.resolve(workdir)  # a bucket URI stays one
  with workdir_lib.exclusive(workdir), guards.Preemption() as preemption, contextlib.ExitStack() as closing:
    # `closing` closes the checkpoint manager (waiting for its saves) and the metric writer however the
    # run ends, so a failure keeps every checkpoint it had started.
    loop = start(config, workdir, closing)
    return loop.train(preemption) or loop.finish()


def check_resumable(config, workdir: str, manager) -> None:
  """Checkpoints in `workdir` resume only the config they were saved with (config.json is a copy)."""
  saved = checkpoint.saved_config(manager)
  if saved is None:
    return
  step, saved_config = saved
  name = f"checkpoint {step}"
  workdir_lib.check_config(workdir, name, saved_config, json.loads(config.to_json()))
  workdir_lib.note_config_json(workdir, name)


def split_arrays(split) -> list:
  """The arrays that make up a sampled split: an Encoded's, or a generation.Prompts' ids, mask and golds."""
  if isinstance(split, generation.Prompts):
    return [split.input_ids, split.attention_mask, np.frombuffer(json.dumps(split.answers).encode(), np.uint8)]
  return [x for x in dataclasses.astuple(split) if x is not None]


def data_fingerprints(data: pipeline.FewShotData | generation.GenerationData) -> dict:
  """{split: fingerprint} of the sampled, tokenized splits (generation's train: with its prompts and golds)."""
  arrays = {name: split_arrays(getattr(data, name)) for name in ("train", "dev", "test")}
  if isinstance(data, generation.GenerationData):
    arrays["train"] += split_arrays(data.train_prompts)
  return {name: workdir_lib.fingerprint(*split) for name, split in arrays.items()}


def stop_diverged(manager, step: int, saved_step: int | None, what: str) -> str:
  """The message of a run stopped at `step` for divergence. A checkpoint of this very step holds the
  weights whose loss diverged: it moves to DIR/damaged/, so the newest one left is the last state
  whose loss was within the bound."""
  checkpoint.finish(manager)
  if saved_step == step and step in manager.all_steps():
    checkpoint.quarantine(manager, step)
  kept = manager.latest_step()
  where = (
    f"the last good state is checkpoint {kept} in {manager.directory}" if kept is not None else "no checkpoint kept"
  )
  return f"step {step + 1}: {what}; stopped ({where}; set train.divergence=continue to train on)"


def start(config, workdir: str, closing: contextlib.ExitStack) -> "Loop":
  """Mesh, checkpoints, model, data, method and state of the run in `workdir`, resumed if it has checkpoints."""
  mesh = sharding.make_mesh(config.mesh)
  logging.info("mesh %s over %d %s devices", dict(mesh.shape), mesh.size, jax.default_backend())
  sharding.check_batch_sizes(mesh, config.train.batch_size, config.train.eval_batch_size)
  manager = checkpoint.make_manager(workdir, config.train.keep_checkpoints, config.train.best_metric)
  closing.callback(manager.close)
  closing.callback(checkpoint.finish, manager)  # first: started saves complete, with their manifests
  check_resumable(config, workdir, manager)
  if jax.process_index() == 0:
    files.write_atomic(files.join(workdir, "config.json"), config.to_json(indent=2))
  rules = dict(config.sharding_rules)
  model = models.load_for(config.model, shardings=lambda module: model_shardings(module, rules, mesh))
  models.check_length(model.config, config.data.max_length)
  data = load_data(config, model.tokenizer)
  logging.info(
    "task %s: %d train, %d dev, %d test examples; checkpoint %s",
    data.task.name,
    len(data.train),
    len(data.dev),
    len(data.test),
    model.checkpoint_dir,
  )
  batch_at, train_set = trainer.data_batches(config, data)
  started = time.perf_counter()
  golds = data.train_prompts.answers if isinstance(data, generation.GenerationData) else None
  run = trainer.setup(config, model, batch_at, train_set, train_golds=golds)
  trainable = masks.count_trainable(run.tree, run.method.labels(run.tree))
  logging.info(
    "method %s: %d of %d parameters train (prepared in %.1fs)",
    run.method.name,
    trainable,
    sum(p.size for p in jax.tree_util.tree_leaves(run.tree)),
    time.perf_counter() - started,
  )
  # a method that records a value per step saves it beside its initial trainable tree (the ZO trajectory)
  initial = sharding.to_host(run.method.artifact(run.tree)) if run.method.record else None
  state, state_sharding = trainer.place(run, config.seed, mesh, rules, models.logical_axes(model.module))
  run = run._replace(tree=None)  # donated to the state: no second copy of the weights for the whole run
  logging.info(
    "parameters: %.1f MB in all, at most %.1f MB on one device",
    sum(p.nbytes for p in jax.tree_util.tree_leaves(state.params)) / 2**20,
    max(sharding.device_bytes(state.params).values()) / 2**20,
  )
  warn_of_bfloat16_on_cpu(state.params)
  evaluator = split_evaluator(config, model, data, mesh, run.logits_fn)
  loop = Loop(config, workdir, mesh, manager, run, data, batch_at, state, state_sharding, initial, evaluator)
  loop.summary["model/trainable"] = int(trainable)
  loop.summary["model/optimizer_entries"] = masks.optimizer_state_entries(state.opt_state)
  loop.resume()
  loop.writer = metrics.MetricWriter(workdir, enabled=jax.process_index() == 0, resume_step=loop.saved_step)
  closing.callback(loop.writer.close)
  return loop


def warn_of_bfloat16_on_cpu(params) -> None:
  """XLA's CPU backend converts a scanned stack of bfloat16 weights to float32 whole (it has no bfloat16
  dynamic-slice): say so, since it triples the weights' memory there (float16 is sliced as it is)."""
  if jax.default_backend() == "cpu" and any(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(params)):
    logging.warning(
      "bfloat16 weights on XLA's CPU backend: each scanned stack is held in float32 too (3x its bytes); "
      "model.param_dtype=float16 avoids it here (experiments/xla_cpu_bf16_scan.py)"
    )


@dataclasses.dataclass
class Loop:
  """A run's mutable state between steps: the TrainState, the record saved in each checkpoint, the last
  saved step. `train` runs the steps, `finish` saves the artifact and evaluates on the test split."""

  config: Any
  workdir: str
  mesh: Any
  manager: Any
  run: trainer.Setup
  data: pipeline.FewShotData | generation.GenerationData
  batch_at: Any
  state: Any
  state_sharding: Any
  initial_artifact: Any
  evaluator: Callable  # (merged tree, split) -> the split's metrics (split_evaluator)
  saved_step: int | None = None
  fingerprints: dict | None = None  # of the sampled splits, saved in each checkpoint
  writer: Any = None
  summary: dict = dataclasses.field(default_factory=dict)  # figures of the run for the test line
  # saved beside the state in each checkpoint; "projected_grad": the method's per-step record (method.record)
  record: dict = dataclasses.field(
    default_factory=lambda: {"projected_grad": [], "skipped_batches": 0, "divergence": {}}
  )

  @property
  def method(self) -> method_base.Method:
    return self.run.method

  @property
  def step(self) -> int:
    return int(jax.device_get(self.state.step))

  @property
  def recorded(self) -> list:
    """The method's per-step values so far (zeroth-order: the projected gradients); kept under the
    key "projected_grad" in checkpoints, as earlier runs saved them."""
    return self.record["projected_grad"]

  def resume(self) -> None:
    """The newest whole checkpoint, if any, after checking it was taken on the same sampled data."""
    fingerprints = data_fingerprints(self.data)
    restored = checkpoint.restore_latest(self.manager, self.state)
    if restored is not None:
      self.saved_step, self.state, saved = restored
      workdir_lib.check_data(
        self.workdir, f"checkpoint {self.saved_step}", saved.get("data_fingerprint", fingerprints), fingerprints
      )
      self.record.update({k: saved[k] for k in self.record if k in saved})
      logging.info("resumed from %s at step %d", checkpoint.step_path(self.manager, self.saved_step), self.step)
    if self.method.record and len(self.recorded) != self.step:
      raise CheckpointError(
        f"checkpoint {self.saved_step} in {self.manager.directory} holds {len(self.recorded)} "
        f"recorded steps ({self.method.record.metric}) for step {self.step}; it cannot resume "
        f"this {self.method.name} run"
      )
    self.fingerprints = fingerprints

  def save(self, dev: dict | None = None) -> None:
    step, best = self.step, self.config.train.best_metric
    # copies: orbax serializes the record in the background while the loop appends to it
    record = {
      **self.record,
      "projected_grad": list(self.recorded),
      "divergence": dict(self.record["divergence"]),
      "data_position": step,
      "seed": self.config.seed,
      "data_fingerprint": self.fingerprints,
    }
    checkpoint.save(
      self.manager,
      self.state,
      record,
      json.loads(self.config.to_json()),
      metrics={best: dev[best]} if dev and best else None,
    )
    if self.method.record and jax.process_index() == 0 and self.recorded:
      self.method.record.save(
        self.workdir, self.initial_artifact, jax.device_get(self.state.rng), np.asarray(self.recorded), self.method.name
      )
    self.saved_step = step

  def save_unless_saved(self) -> None:
    if self.saved_step != self.step:
      self.save()
    checkpoint.finish(self.manager)

  def evaluate(self, split) -> dict:
    """The split's metrics ({"accuracy", "loss"}, or a generation task's {"f1", "em"})."""
    return self.evaluator(self.method.merge(self.state.params), split)

  def compile(self, total_steps: int):
    """The jitted train step, compiled now (its time is a metric of the run)."""
    example = sharding.put_batch(self.mesh, self.batch_at(0))
    step = trainer.compile_train_step(
      self.run,
      self.state_sharding,
      sharding.batch_shardings(self.mesh, self.batch_at(0)),
      self.mesh,
      self.config.train.nonfinite == "skip",
    )
    if self.step >= total_steps:
      return step
    started = time.perf_counter()
    step = step.lower(self.state, example).compile()
    host_memory.release_free_memory()  # what compiling freed, before the steps' blocks are allocated
    self.summary["perf/compile_s"] = time.perf_counter() - started
    logging.info("train step compiled in %.1fs", self.summary["perf/compile_s"])
    return step

  def train(self, preemption: guards.Preemption) -> dict | None:
    """The steps from the current one to train.steps; a dict if the run was preempted, else None."""
    config, method = self.config, self.method
    total_steps = config.train.steps if method.trains else 0
    train_step = self.compile(total_steps)
    if method.refresh:  # dynamic masks: dense gradients every `refresh_every` steps, outside the step
      dense_grad = method_base.dense_grad_fn(self.run.loss_fn)
      batches = lambda i: sharding.put_batch(self.mesh, self.batch_at(i))
    progress = metrics.Progress(total_steps, self.step)
    step_times = []
    for step in range(self.step, total_steps):
      if preemption.requested(self.manager, step):
        return self.preempted(step, preemption.signalled or "SIGTERM")
      if method.refresh and step and step % method.refresh_every == 0:
        self.state = sharding.put(method.refresh(self.state, dense_grad, batches, total_steps), self.state_sharding)
      started = time.perf_counter()
      self.state, step_metrics = train_step(self.state, sharding.put_batch(self.mesh, self.batch_at(step)))
      step_metrics = jax.device_get(step_metrics)  # waits for the step: the timing covers the compute
      step_times.append(time.perf_counter() - started)
      done = step + 1
      self.check_finite(step, step_metrics)
      if method.record:
        self.recorded.append(step_metrics.pop(method.record.metric).tolist())
        step_metrics[method.record.metric + "_abs"] = np.abs(self.recorded[-1]).mean()
      step_metrics["train/skipped_batches"] = self.record["skipped_batches"]
      if done % config.train.log_every == 0 or done == total_steps:
        self.writer.write(done, step_metrics)
        progress.log(done, step_metrics)
      self.check_divergence(step, float(step_metrics["train/loss"]))
      dev = None
      if done % config.train.eval_every == 0 or done == total_steps:
        dev = self.evaluate(self.data.dev)
        self.writer.write(done, {f"eval/{name}": value for name, value in dev.items()}, split="dev")
        logging.info("step %d dev %s", done, described(dev))
      if done % config.train.checkpoint_every == 0 or done == total_steps:
        self.save(dev)
    if step_times:
      self.summary["perf/step_s"] = float(np.median(step_times[1:] or step_times))
    return None

  def preempted(self, step: int, reason: str) -> dict:
    self.save_unless_saved()
    logging.warning(
      "%s: saved checkpoint %d in %s; run again with the same --workdir to resume",
      "interrupted (Ctrl-C)" if reason == "Ctrl-C" else "preempted (SIGTERM)",
      step,
      self.manager.directory,
    )
    return {"step": step, "preempted": reason, "checkpoint": checkpoint.step_path(self.manager, step)}

  def check_finite(self, step: int, step_metrics: dict) -> None:
    """A non-finite step stops the run with the state before it saved, or is skipped (train.nonfinite)."""
    if not step_metrics.pop("train/nonfinite"):
      return
    what = guards.describe_nonfinite(step_metrics)
    if self.config.train.nonfinite != "skip":  # the state is still the one before this step: keep it, then stop
      self.save_unless_saved()
      raise FloatingPointError(
        f"step {step + 1}: {what}; stopped with the last good state saved as checkpoint {step} "
        f"in {self.manager.directory} (set train.nonfinite=skip to skip such batches)"
      )
    self.record["skipped_batches"] += 1
    logging.warning("step %d: %s; batch skipped (%d so far)", step + 1, what, self.record["skipped_batches"])

  def check_divergence(self, step: int, loss: float) -> None:
    t, record = self.config.train, self.method.record
    watched = self.recorded[-1] if record and record.stuck_if_zero else None
    diverged = guards.divergence(self.record["divergence"], loss, watched, t.divergence_ratio, t.stuck_steps)
    if diverged and t.divergence == "stop":
      raise guards.Diverged(stop_diverged(self.manager, step, self.saved_step, diverged))

  def finish(self) -> dict:
    """The artifact (what the method adds to the pretrained checkpoint) and the test split's metrics."""
    checkpoint.finish(self.manager)
    artifact = sharding.to_host(self.method.artifact(self.state.params))  # every process: gathers across hosts
    if jax.process_index() == 0:
      saved = checkpoint.save_artifact(files.join(self.workdir, "artifact.safetensors"), artifact, self.method.name)
      if saved:
        logging.info(
          "saved %s (%.2f MB): what %s adds to the pretrained checkpoint", saved[0], saved[1], self.method.name
        )
    test = self.evaluate(self.data.test)
    self.summary["perf/peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = self.writer.write(
      self.step,
      {**{f"eval/{name}": value for name, value in test.items()}, **self.summary},
      split="test",
      examples=len(self.data.test),
      final=True,
    )
    logging.info("final test %s on %d examples", described(test), len(self.data.test))
    return result


def described(split_metrics: dict) -> str:
  """'accuracy 0.7500 loss 0.5123' (or 'f1 ... em ...')."""
  return " ".join(f"{name} {value:.4f}" for name, value in split_metrics.items())
