"""The one setup of a training run: validation of every config section, then model, classifier, method,
state and the jitted steps. train.py, bench.py, plan.py and the tests build their runs here.

  validate(config)                           every section by its owner, before anything loads
  setup(config, model, batch_at, train_set)  -> Setup: classifier, loss, method, prepared tree
  place(setup, tree, mesh, rules)            -> (TrainState on the mesh, its shardings)
  compile_train_step(setup, shardings, ...)  the jitted, donated train step
  replay_trajectory(...)                     a zeroth-order run rebuilt from its trajectory
"""

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fttpu import checkpoint, classifier, generation_objectives, methods, models, optim, sharding, step as step_lib
from fttpu.data import generation, pipeline
from fttpu.errors import check
from fttpu.methods import zo
from fttpu.state import TrainState

# The dev metrics a run evaluates (train.best_metric names one), by whether its task is a generation task.
DEV_METRICS = {False: ("accuracy", "loss"), True: ("f1", "em")}
NONFINITE = ("stop", "skip")  # train.nonfinite: what a NaN/Inf loss or gradient does
DIVERGENCE = ("stop", "continue")  # train.divergence: what a diverged run does (fttpu.guards.divergence)


def check_train(config) -> None:
  """config.train: the loop's own settings."""
  t = config.train
  check(t.steps >= 0, "train.steps", t.steps, "an integer >= 0")
  check(t.batch_size >= 1, "train.batch_size", t.batch_size, "an integer >= 1")
  check(t.eval_batch_size >= 1, "train.eval_batch_size", t.eval_batch_size, "an integer >= 1")
  for key in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
    check(t[key] >= 1, f"train.{key}", t[key], "an integer >= 1")
  metrics_of_task = DEV_METRICS[generation.is_generation_task(config.data.task)]
  check(
    t.best_metric in ("", *metrics_of_task),
    "train.best_metric",
    t.best_metric,
    f"one of {sorted(metrics_of_task)} or '' (none) for the task {config.data.task!r} (dev metrics: "
    "classification's accuracy and loss, generation's f1 and em)",
  )
  check(t.nonfinite in NONFINITE, "train.nonfinite", t.nonfinite, str(list(NONFINITE)))
  check(t.divergence in DIVERGENCE, "train.divergence", t.divergence, str(list(DIVERGENCE)))
  check(
    t.divergence_ratio == 0 or t.divergence_ratio > 1,
    "train.divergence_ratio",
    t.divergence_ratio,
    "a number > 1 (a multiple of the first step's loss), or 0 (off)",
  )
  check(t.stuck_steps >= 0, "train.stuck_steps", t.stuck_steps, "an integer >= 0 (0: off)")
  check(
    t.grad_accum_steps >= 1 and t.batch_size % t.grad_accum_steps == 0,
    "train.grad_accum_steps",
    t.grad_accum_steps,
    f"an integer >= 1 that divides train.batch_size={t.batch_size} (each step's batch is split into that many)",
  )
  check(
    t.remat in models.transformer.REMAT_POLICIES, "train.remat", t.remat, str(list(models.transformer.REMAT_POLICIES))
  )


def validate(config) -> None:
  """Fails with the key, the value and the valid range for anything fttpu cannot run; each section is
  checked by the module that owns it, before any data is read or anything is compiled."""
  methods.validate(config)  # first: the method's name, then every method section
  models.validate(config)
  pipeline.validate(config)
  generation.validate(config)
  check_train(config)
  optim.validate(config)
  sharding.validate(config)


class Setup(NamedTuple):
  """A run's method on its model: what every caller of the train step needs."""

  method: methods.Method
  tree: Any  # the prepared parameters (host or sharded arrays)
  loss_fn: Callable  # (tree, batch, rng) -> (loss, aux): what the train step estimates
  logits_fn: Callable  # (tree, batch, rng) -> logits; None for generation tasks (they decode)
  optimizer: Any  # config.optimizer's transform (before the mask)
  micro_batches: int = 1  # train.grad_accum_steps: slices of each batch the estimate runs over


def setup(
  config,
  model,
  batch_at: Callable,
  train_set: dict,
  *,
  total_steps: int | None = None,
  rng=None,
  prepare: Callable | None = None,
  train_golds: tuple | None = None,
) -> Setup:
  """config.method on `model`, prepared from its weights. `batch_at(step)` and `train_set` are training
  batches with their prompts (what sparse selection and linear probes read). `prepare` wraps the method's
  prepare (fttpu.plan sizes it under jax.eval_shape). `train_golds`: each training row's gold answers
  (GenerationData.train_prompts.answers), which zo.objective=f1 scores the decoded answers against."""
  model = models.with_remat(model, config.train.remat)
  classify, loss_fn, step_loss_fn = losses(config, model, train_golds)
  optimizer = optim.make_optimizer(config.optimizer, config.train.steps if total_steps is None else total_steps)
  method = methods.get_method(config, optimizer, model)
  context = methods.Context(
    loss_fn=loss_fn, classifier=classify, train_batch=batch_at, train_set=train_set, optimizer=optimizer
  )
  rng = jax.random.key(config.seed) if rng is None else rng
  run_prepare = lambda params: method.prepare(params, rng, context)
  tree = (prepare or (lambda f, params: f(params)))(run_prepare, model.params)
  logits_fn = classify.logits if classify else None
  return Setup(method, tree, step_loss_fn, logits_fn, optimizer, config.train.grad_accum_steps)


def losses(config, model, train_golds: tuple | None = None) -> tuple:
  """(classifier, loss, the train step's loss) of the run's task. Classification: the prompt classifier and
  its cross-entropy, both. Generation (SQuAD, DROP): no classifier, the LM loss on the answer tokens, and for
  the step under zo.objective=f1 the same loss reporting aux["f1"], the F1 of the greedy answers (decoded
  in the step, scored against `train_golds` on the host), whose negative the zeroth-order estimate takes."""
  if not generation.is_generation_task(config.data.task):
    classify = classifier.make_classifier(model.module, config.model.classifier, config.model.logit_scale)
    loss_fn = classifier.make_loss_fn(classify.logits)
    return classify, loss_fn, loss_fn
  loss_fn = generation_objectives.make_answer_loss_fn(model.module)
  if not (methods.base.is_zeroth_order(config.method) and config.zo.objective == "f1"):
    return None, loss_fn, loss_fn
  if train_golds is None:
    raise ValueError("zo.objective=f1 scores the training rows' answers: setup needs their train_golds")
  answer_f1 = generation_objectives.make_answer_f1(
    model.module,
    generation_objectives.answer_f1_scorer(model.tokenizer, train_golds),
    generation.stop_ids(model.tokenizer),
    config.data.max_new_tokens,
    model.config.pad_token_id,
  )
  return None, loss_fn, generation_objectives.with_answer_f1(loss_fn, answer_f1)


def data_batches(config, data: pipeline.FewShotData | generation.GenerationData) -> tuple[Callable, dict]:
  """(batch_at(step), the whole training set), each with the task's prompts (generation tasks: teacher
  forcing on the answers, with each row's prompt to decode and its row index, generation.train_rows)."""
  if isinstance(data, generation.GenerationData):
    batch_at = lambda step: generation.train_batch(data, step, config.train.batch_size, config.seed)
    return batch_at, generation.train_rows(data, np.arange(len(data.train)))
  batch_at = lambda step: {
    **pipeline.train_batch(data.train, step, config.train.batch_size, config.seed),
    **data.prompts,
  }
  return batch_at, {**pipeline.whole(data.train), **data.prompts}


def place(run: Setup, seed: int, mesh, rules: dict, model_axes: dict):
  """(TrainState, its shardings) of the prepared tree on `mesh`. The tree is donated: drop `run.tree`
  afterwards (`run._replace(tree=None)`) so that the host copy of the weights can be freed."""
  return sharding.create_state(run.tree, run.method.tx, seed, mesh, rules, model_axes, methods.added_leaf_axes)


def compile_train_step(run: Setup, state_sharding, batch_sharding, mesh, skip_nonfinite: bool = False):
  """The train step jitted over the mesh, state donated."""
  step = functools.partial(
    step_lib.train_step,
    method=run.method,
    loss_fn=run.loss_fn,
    skip_nonfinite=skip_nonfinite,
    micro_batches=run.micro_batches,
  )

  def step_on_mesh(state, batch):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # the model's split_rows_for_logits reads it
      return step(state, batch)

  return jax.jit(
    step_on_mesh,
    in_shardings=(state_sharding, batch_sharding),
    out_shardings=(state_sharding, sharding.replicated(mesh)),
    donate_argnums=0,
  )


def replay_trajectory(
  tree: dict, labels, tx, rng, projected: np.ndarray, kind: str, optimizer_name: str = "sgd"
) -> dict:
  """A zeroth-order run's parameters after len(projected) steps, rebuilt from its trajectory (the initial
  tree, the rng key data, the projected gradients per step) without any loss: the update of each step
  with z regenerated from the step key (fttpu.replay checks the result against the run's checkpoint)."""

  @functools.partial(jax.jit, donate_argnums=0)
  def replay_step(state, projected_grad):
    step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    grads = zo.gradient(state.params, labels, step_rng, zo.coefficients(projected_grad, optimizer_name), kind)
    # a step the run skipped for a non-finite value (train.nonfinite=skip) changed nothing
    return step_lib.apply_gradients(state, grads, labels, tx, finite=jnp.all(jnp.isfinite(projected_grad)))

  state = TrainState(step=jnp.zeros((), jnp.int32), params=tree, opt_state=tx.init(tree), rng=jnp.asarray(rng))
  for projected_grad in projected:
    state = replay_step(state, jnp.asarray(projected_grad))
  return state.params
