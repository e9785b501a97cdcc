"""The method interface: a bundle of pure functions that the one train step uses.

A method's parameters are one tree, built by `prepare` from the pretrained model params:

  {"model": model params, plus any adapter leaves the model reads (lora_*, dora_*, prefix_*),
   "head":  {"kernel", "bias"}                    (optional: a linear head on pooled features),
   "delta": {<model path>: {"index", "value"}}}   (optional: sparse deltas, see deltas.py)

`labels` marks each leaf "train" or "freeze" (the optax parameter mask), `view` is what the
model applies in a train step (sparse deltas scattered in, adapters kept apart) and `merge`
folds everything foldable into plain model weights for evaluation and export (LoRA's own merge
folds its adapters).

Methods register here (`register`, `register_section`, `register_added_leaves`) when their module
is imported; fttpu/methods/__init__.py is the table of those modules.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util

from fttpu.data import pipeline
from fttpu.methods import deltas, masks
from fttpu.registry import Registry


class Context(NamedTuple):
  """What `prepare` may use besides the weights (the maker has the model): the loss and the data."""

  loss_fn: Callable  # (tree, batch, rng) -> (loss, aux), tree = {"model": ..., "head"?: ...}
  classifier: Any  # fttpu.classifier.Classifier: features and zero-shot head for linear probes
  train_batch: Callable  # step -> a training batch (prompts included): sparse selection's calibration
  train_set: dict  # every training example in one batch (prompts included)
  optimizer: optax.GradientTransformation  # the configured optimizer, unmasked (LT-SFT's dense phase)


class StepRecord(NamedTuple):
  """A per-step value a method keeps for the whole run (zeroth-order: the projected gradients, from
  which the run replays). The training loop appends `metric` of every step, saves the list in each
  checkpoint (a resume checks it has one entry per step) and hands it to `save` at each checkpoint."""

  metric: str  # the step metric recorded, e.g. "train/projected_grad"
  save: Callable  # (workdir, initial artifact, rng key data, values (steps, ...), method name) -> None
  stuck_if_zero: bool  # an all-zero value means the estimate is stuck (train.stuck_steps)


class Method(NamedTuple):
  name: str
  prepare: Callable  # (model params, rng, Context) -> tree with any added leaves
  labels: Callable  # tree -> tree of "train"/"freeze": the optax parameter mask
  tx: Optional[optax.GradientTransformation]  # set from `labels` by `with_optimizer`, never by a maker
  estimate: Callable  # (loss_fn, tree, labels, batch, rng, micro_batches=1) -> (loss, aux: metrics, grads)
  trains: bool  # False for evaluation-only methods
  view: Callable = None  # tree -> what the loss applies in a train step
  merge: Callable = None  # tree -> {"model": plain weights, "head"?} for evaluation and export
  artifact: Callable = None  # tree -> the small tree a run saves (everything beyond the base model)
  refresh: Optional[Callable] = None  # (state, grad_fn, batches) -> state, every `refresh_every` steps
  refresh_every: int = 0
  record: Optional[StepRecord] = None


def make_method(
  name,
  prepare,
  labels,
  *,
  estimate=None,
  trains=True,
  merge=None,
  artifact=None,
  refresh=None,
  refresh_every=0,
  record=None,
) -> Method:
  return Method(
    name,
    prepare,
    labels,
    None,
    estimate or autodiff,
    trains,
    view=scatter_deltas,
    merge=merge or scatter_deltas,  # LoRA's also folds its adapters (fttpu.methods.lora.merge)
    artifact=artifact or extra_leaves,
    refresh=refresh,
    refresh_every=refresh_every,
    record=record,
  )


def with_optimizer(method: Method, optimizer: optax.GradientTransformation) -> Method:
  """The method with its transform: `optimizer` on the leaves its labels train, nothing on the rest."""
  return method._replace(tx=masks.partition(method.labels, optimizer))


# ------------------------------------------------------------------ registration


class Registered(NamedTuple):
  """A method as the registry holds it: its maker and the defaults configs/fewshot.py takes from it."""

  make: Callable  # (config, model) -> Method (tx unset)
  learning_rate: Any  # the default with its optimizer: a number, or a function of zo.base
  zo_learning_rate: Optional[float] = None  # the default as zo.base (ZO-SGD); None: not a zeroth-order base
  zeroth_order: bool = False  # trains by a zeroth-order estimate (ZO-SGD defaults, a trajectory)
  frozen_base: bool = False  # leaves the pretrained weights as they are (may run on a quantised base)


class Section(NamedTuple):
  """A config section a method module owns: its defaults and its checks (of the whole config)."""

  defaults: Callable[[], ml_collections.ConfigDict]
  validate: Callable[[ml_collections.ConfigDict], None]


METHODS: Registry[Registered] = Registry("method")
SECTIONS: Registry[Section] = Registry("config section")


def register(
  name: str,
  *,
  learning_rate,
  zo_learning_rate: Optional[float] = None,
  zeroth_order: bool = False,
  frozen_base: bool = False,
):
  """Decorator of a maker (config, model) -> Method: config.method=`name` builds it. `frozen_base`: the
  method never changes the pretrained weights, so they may be stored quantised (model.quantize)."""
  return lambda make: (
    METHODS.register(name, Registered(make, learning_rate, zo_learning_rate, zeroth_order, frozen_base)).make
  )


def register_section(name: str, defaults: Callable, validate: Callable) -> None:
  """config.`name` comes from `defaults()` and is checked by `validate(config)` at start-up."""
  SECTIONS.register(name, Section(defaults, validate))


DEFAULT_LEARNING_RATE = 2e-5  # of a name that is not registered (validation then names the valid ones)


def default_learning_rate(name: str, zo_base: str) -> float:
  """The learning rate config.method=`name` starts from (zo_base: the trainable set of method=zo)."""
  if name not in METHODS:
    return DEFAULT_LEARNING_RATE
  rate = METHODS.get(name).learning_rate
  rate = rate(zo_base) if callable(rate) else rate
  return DEFAULT_LEARNING_RATE if rate is None else rate  # (an invalid zo.base fails validation then)


def is_zeroth_order(name: str) -> bool:
  return name in METHODS and METHODS.get(name).zeroth_order


def frozen_base_methods() -> list[str]:
  """The methods registered as leaving the pretrained weights as they are."""
  return [name for name, entry in METHODS.items() if entry.frozen_base]


def zo_bases() -> list[str]:
  """The methods zo.base may name: those registered with a zeroth-order learning rate."""
  return [name for name, entry in METHODS.items() if entry.zo_learning_rate is not None]


def wrap(params, rng=None, context=None) -> dict:
  """The tree of a method that adds nothing."""
  del rng, context
  return {"model": params}


def mean_over_micro_batches(fn: Callable, batch: dict, count: int):
  """sum_m share_m fn(micro-batch m, m) over `count` micro-batches (accumulated in float32, one micro-batch
  in flight), share_m = micro-batch m's example weight over the batch's: of a weighted mean per example
  (the loss, accuracy, their gradients) the whole batch's value. count 1: fn(batch, 0) itself."""
  if count == 1:
    return fn(batch, 0)
  examples, prompts = pipeline.micro_batches(batch, count)
  weights = examples["weights"].sum(axis=1)
  shares = weights / jnp.maximum(weights.sum(), 1.0)
  first = jax.tree_util.tree_map(lambda x: x[0], examples)
  shapes = jax.eval_shape(lambda: fn({**first, **prompts}, 0))

  def add(total, inputs):
    micro, share, index = inputs
    out = fn({**micro, **prompts}, index)
    return jax.tree_util.tree_map(lambda t, x: t + share * x.astype(jnp.float32), total, out), None

  zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)
  total, _ = jax.lax.scan(add, zeros, (examples, shares, jnp.arange(count)))
  return jax.tree_util.tree_map(lambda t, s: t.astype(s.dtype), total, shapes)


def autodiff(loss_fn, tree, labels, batch, rng, micro_batches: int = 1):
  """Exact gradients of the trainable leaves by reverse-mode autodiff (dropout on: rng is given).

  Frozen leaves are constants of the differentiated function, so no gradient is computed for
  them (their entry in `grads` is zeros, which the optimizer never reads). With micro_batches > 1
  (train.grad_accum_steps) the gradients are accumulated over that many slices of the batch, so
  only one slice's activations are alive: the same update, except that dropout draws per slice.
  """
  trainable, rebuild = masks.split(tree, labels)
  grad_fn = jax.value_and_grad(lambda t, b, r: loss_fn(rebuild(t), b, r), has_aux=True)

  def of_micro_batch(micro, index):
    return grad_fn(trainable, micro, rng if rng is None or micro_batches == 1 else jax.random.fold_in(rng, index))

  (loss, aux), grads = mean_over_micro_batches(of_micro_batch, batch, micro_batches)
  return loss, {**aux, "grad_norm": optax.global_norm(grads)}, masks.fill(tree, labels, grads)


def dense_grad_fn(loss_fn):
  """grad(model params, batch) of the loss with dropout off, jitted: every weight's gradient
  (sparse selection and SpIEL's regrowth rank entries that do not train yet)."""
  return jax.jit(jax.grad(lambda model, batch: loss_fn({"model": model}, batch, None)[0]))


def scatter_deltas(tree) -> dict:
  """The tree with each sparse delta added into its model weight (and "delta" removed)."""
  if "delta" not in tree:
    return tree
  weights = traverse_util.flatten_dict(tree["model"])
  for path, delta in deltas.flat_deltas(tree).items():
    w = weights[path]
    weights[path] = jnp.asarray(w).reshape(-1).at[delta["index"]].add(delta["value"].astype(w.dtype)).reshape(w.shape)
  return {**{k: v for k, v in tree.items() if k != "delta"}, "model": traverse_util.unflatten_dict(weights)}


# Leaves a method adds beside the model's weights, by name prefix -> their logical axes, a function of
# (path, shape, {model path: the model's logical axes}) (methods register theirs: lora.py, simple.py).
ADDED_LEAVES: dict[str, Callable] = {}


def register_added_leaves(prefix: str, logical_axes: Callable) -> None:
  ADDED_LEAVES[prefix] = logical_axes


def is_added_leaf(name: str) -> bool:
  return name.startswith(tuple(ADDED_LEAVES))


def added_leaf_axes(path: tuple, shape: tuple, model_axes: dict):
  """The logical axis names of an added leaf at `path` (fttpu.sharding places it by them), or None."""
  for prefix, logical_axes in ADDED_LEAVES.items():
    if path[-1].startswith(prefix):
      return logical_axes(path, shape, model_axes)
  return None


def extra_leaves(tree) -> dict:
  """Everything in the tree that the pretrained checkpoint does not hold (adapters, head, deltas)."""
  out = {k: v for k, v in tree.items() if k != "model"}
  extras = {p: v for p, v in traverse_util.flatten_dict(tree["model"]).items() if is_added_leaf(p[-1])}
  if extras:
    out["model"] = traverse_util.unflatten_dict(extras)
  return out
