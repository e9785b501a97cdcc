"""Zeroth-order fine-tuning: MeZO's SPSA estimate over any method's trainable set.

"Fine-Tuning Language Models with Just Forward Passes" (Malladi et al., 2023). Per step and
sample i, with z_i drawn from a seed over the trainable leaves (dropout off):

    g_i = (L(theta + eps z_i) - L(theta - eps z_i)) / (2 eps)      the projected gradient
    grad = sum_i g_i z_i / n                                         handed to the optimizer

`method=mezo` trains every parameter; `method=zo` wraps the method `zo.base` names (lora,
prefix, sparse, head, ...) and keeps its labels, so frozen leaves stay frozen. The optimizer
is config.optimizer: sgd is ZO-SGD, momentum, adamw (ZO-Adam) and sign (element-wise signSGD,
Liu et al. 2019's ZO-signSGD) run on `grad`. `zo_sgd_sign` is ZO-Bench's ZO-SGD-Sign (Zhang et al.,
2024): SGD on sum_i sign(g_i) z_i / n, the projected gradient's sign in place of its value.
ZO-SGD and the sign rules keep no optimizer state; momentum keeps one buffer the size of the
trainable set, Adam two (and n-SPSA, n > 1, one accumulator).

Memory: z is never stored. The two losses read the noise where each weight is used (the model's
`noise` collection, see fttpu/models/perturbation.py; an embedding table draws it for the rows it
looks up only) and `grad` is regenerated from the same keys inside the optimizer's element-wise
update, which runs in place on the donated params. So z is drawn once per loss and once for the
update, and the parameters are written once per step; the published code draws it four times
and rewrites the parameters four times (+eps, -2 eps, +eps, update). Data-parallel replicas draw
the same z from the shared step key, so only scalar losses cross devices.

A run is also its trajectory: the initial trainable tree plus g per step. `replay` rebuilds
the final parameters from it.
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import safetensors.numpy
from flax import traverse_util

from fttpu import checkpoint, files, optim
from fttpu.errors import ConfigError, check
from fttpu.data import generation
from fttpu.methods import base, masks
from fttpu.models import perturbation

# zo.objective: what each probe's value is: the loss, or minus a metric its aux reports (non-differentiable:
# the batch accuracy of classification, or generation tasks' mean F1 of the greedy answers, MeZO's non_diff)
OBJECTIVES = ("loss", "accuracy", "f1")
CLASSIFICATION_OBJECTIVES = ("loss", "accuracy")
GENERATION_OBJECTIVES = ("loss", "f1")  # of the generation tasks (SQuAD, DROP)
SIGN_OF_PROJECTION = "zo_sgd_sign"  # the config.optimizer.name that steps along sign(g_i) z_i


def coefficients(projected: jax.Array, optimizer_name: str) -> jax.Array:
  """What multiplies z_i in the update: the projected gradients, or their signs under ZO-SGD-Sign."""
  return jnp.sign(projected) if optimizer_name == SIGN_OF_PROJECTION else projected


def probe_key(rng: jax.Array, sample) -> jax.Array:
  """The noise key of sample `sample` of a step (a key of perturbation.IMPL)."""
  impl = perturbation.IMPL
  size = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0, impl=impl))).shape
  return jax.random.wrap_key_data(jax.random.bits(jax.random.fold_in(rng, sample), size, jnp.uint32), impl=impl)


def draw_noise(tree, labels, key: jax.Array, kind: str) -> list:
  """[(path, unit-scale Noise)] for the trainable leaves in tree order; leaf i's key is subkey i of `key`."""
  words = jax.random.key_data(key)
  return [
    (tuple(masks.path_name(path).split("/")), perturbation.leaf_noise(perturbation.subkeys(words, i), leaf.shape, kind))
    for i, ((path, leaf), label) in enumerate(
      zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree_util.tree_leaves(labels))
    )
    if label == masks.TRAIN
  ]


def perturb(tree: dict, noise: list, scale) -> dict:
  """The tree at theta + scale * z. Model leaves get a `noise` collection that the model adds
  as it reads them; the other leaves (head, sparse delta values: small) get z added here, in
  float32 like the model's reads (a half-precision leaf would round a small perturbation away)."""
  flat = traverse_util.flatten_dict(tree)
  model_noise = {}
  for path, leaf_noise in noise:
    scaled = leaf_noise.replace(scale=leaf_noise.scale * scale)
    if path[0] == "model":
      model_noise[path[1:]] = scaled
    else:
      flat[path] = flat[path].astype(jnp.float32) + scaled.value(flat[path].shape)
  out = traverse_util.unflatten_dict(flat)
  if model_noise:
    out["noise"] = traverse_util.unflatten_dict(model_noise)
  return out


def gradient(tree, labels, rng: jax.Array, projected: jax.Array, kind: str):
  """sum_i projected[i] z_i / n on the trainable leaves (zeros elsewhere), z_i regenerated, in float32.

  Element-wise in z, so the optimizer's update fuses with the draw and nothing of the
  parameters' size is stored.
  """
  samples = projected.shape[0]
  trainable, _ = masks.split(tree, labels)

  def sample_grad(i):
    draw = draw_noise(tree, labels, probe_key(rng, i), kind)
    return [
      noise.replace(scale=noise.scale * projected[i] / samples).value(leaf.shape)
      for (_, noise), leaf in zip(draw, trainable)
    ]

  if samples == 1:
    values = sample_grad(0)
  else:  # n-SPSA: one accumulator of the trainable leaves' size
    values = jax.lax.fori_loop(
      0,
      samples,
      lambda i, total: [t + g for t, g in zip(total, sample_grad(i))],
      [jnp.zeros(leaf.shape, jnp.float32) for leaf in trainable],
    )
  return masks.fill(tree, labels, values)


def objective_value(objective: str, loss: jax.Array, aux: dict) -> jax.Array:
  """A probe's value under `objective`: the loss, or minus aux[objective] (accuracy, f1: higher is better)."""
  return loss if objective == "loss" else -aux[objective]


def spsa(eps: float, samples: int, kind: str, objective: str, optimizer_name: str = "sgd"):
  """The estimate of a zeroth-order method: (loss, aux, grad) as autodiff returns them; aux's
  projected_grad is the value (the trajectory), what the update uses follows `coefficients`."""

  def estimate(loss_fn, tree, labels, batch, rng, micro_batches: int = 1):
    def evaluate(probe):
      """The loss at theta + eps z (even probes) or theta - eps z (odd) of sample probe // 2: over the
      micro-batches (train.grad_accum_steps) with the same z, their mean is the whole batch's loss."""
      noise = draw_noise(tree, labels, probe_key(rng, probe // 2), kind)
      scale = jnp.where(probe % 2 == 0, eps, -eps)
      perturbed = perturb(tree, noise, scale)
      of_micro_batch = lambda micro, _: loss_fn(perturbed, micro, None)  # rng None: dropout off
      loss, aux = base.mean_over_micro_batches(of_micro_batch, batch, micro_batches)
      return loss, aux, objective_value(objective, loss, aux)

    # One loop over the 2n evaluations: the model is compiled once and each pass is unbatched.
    losses, aux, values = jax.lax.map(evaluate, jnp.arange(2 * samples))
    projected = (values[0::2] - values[1::2]) / (2 * eps)
    grads = gradient(tree, labels, rng, coefficients(projected, optimizer_name), kind)
    means = {name: value.mean() for name, value in aux.items()}  # over the probes: accuracy (and f1)
    return losses.mean(), {**means, "projected_grad": projected}, grads

  return estimate


def section() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    {
      "base": "lora",  # method=zo's trainable set: one of the methods registered with a zo learning rate
      "eps": 1e-3,  # perturbation scale (MeZO's default)
      "samples": 1,  # n-SPSA: estimates averaged per step
      "noise": "gaussian",  # gaussian | rademacher
      # loss | accuracy (classification; minus the batch accuracy) | f1 (generation tasks: minus the mean F1
      # of the greedy answers, MeZO's non-differentiable objective); accuracy and f1 are non-differentiable
      "objective": "loss",
    }
  )


def check_section(config) -> None:
  z = config.zo
  check(z.base in base.zo_bases(), "zo.base", z.base, str(sorted(base.zo_bases())))
  check(z.eps > 0, "zo.eps", z.eps, "a number > 0")
  check(z.samples >= 1, "zo.samples", z.samples, "an integer >= 1 (n-SPSA)")
  check(z.noise in perturbation.KINDS, "zo.noise", z.noise, str(list(perturbation.KINDS)))
  check(z.objective in OBJECTIVES, "zo.objective", z.objective, str(list(OBJECTIVES)))
  check_objective_fits_task(z.objective, config.data.task)
  zeroth_order = base.is_zeroth_order(config.method)
  o = config.optimizer
  check(
    o.name != SIGN_OF_PROJECTION or zeroth_order,
    "optimizer.name",
    o.name,
    f"{[n for n in optim.OPTIMIZERS if n != SIGN_OF_PROJECTION]} for method={config.method!r} "
    f"({SIGN_OF_PROJECTION} steps along the sign of a zeroth-order projected gradient: method mezo or zo)",
  )


def check_objective_fits_task(objective: str, task: str) -> None:
  """f1 scores generated answers (generation tasks only); accuracy counts classes (classification only)."""
  if generation.is_generation_task(task):
    valid, why = GENERATION_OBJECTIVES, f"the generation task {task!r} has no classes; f1 scores its greedy answers"
  else:
    valid = CLASSIFICATION_OBJECTIVES
    why = f"f1 scores decoded answers, of the generation tasks {list(generation.GENERATION_TASKS)} only"
  check(objective in valid, "zo.objective", objective, f"{list(valid)} ({why})")


base.register_section("zo", section, check_section)


@base.register("mezo", learning_rate=1e-5, zeroth_order=True)
def make_mezo(config, model):
  """MeZO over every parameter."""
  return make(config, model, base.METHODS.get("full").make)


def _base_learning_rate(zo_base: str):
  """method=zo's default: the zeroth-order learning rate zo.base registered (None if it has none)."""
  return base.METHODS.get(zo_base).zo_learning_rate if zo_base in base.METHODS else None


@base.register("zo", learning_rate=_base_learning_rate, zeroth_order=True)
def make_zo(config, model):
  """MeZO's estimate over the trainable set of the method zo.base names."""
  return make(config, model, base.METHODS.get(config.zo.base).make)


def make(config, model, base_maker):
  """`method=mezo` (base full) or `method=zo` over config.zo.base, with the SPSA estimate."""
  base_method = base_maker(config, model)
  if not base_method.trains:
    raise ConfigError(
      f"zo.base={config.zo.base!r} with these settings trains nothing "
      "(head.solver=lbfgs is fitted in closed form); use head.solver=adam"
    )
  z = config.zo
  name = "mezo" if config.method == "mezo" else f"zo_{base_method.name}"
  compute_dtype = jnp.dtype(getattr(model.config, "compute_dtype", jnp.float32))

  def prepare(params, rng, context):
    tree = base_method.prepare(params, rng, context)
    check_resolution(tree, base_method.labels(tree), z.eps, compute_dtype)
    return tree

  return base_method._replace(
    name=name,
    prepare=prepare,
    estimate=spsa(z.eps, z.samples, z.noise, z.objective, config.optimizer.name),
    record=base.StepRecord("train/projected_grad", save_trajectory, z.objective == "loss"),
  )


SAMPLED_ENTRIES = 1 << 20  # per leaf, for the start-up resolution check


def rounded_away_fraction(tree, labels, eps: float, dtype) -> float:
  """Fraction of trainable entries w where w + eps and w - eps round to w itself in `dtype`
  (the perturbation is formed in float32, then cast once to the compute dtype)."""
  hidden, total = 0, 0
  for leaf, label in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(labels)):
    if label != masks.TRAIN:
      continue
    w = np.asarray(leaf).reshape(-1)  # a view of the weights (converting the whole leaf held 2x its bytes)
    w = w[:: max(1, w.size // SAMPLED_ENTRIES)].astype(np.float32)  # an even sample: start-up stays cheap
    cast = lambda x: np.asarray(jnp.asarray(x).astype(dtype).astype(jnp.float32))
    hidden += int(np.sum((cast(w + eps) == cast(w)) & (cast(w - eps) == cast(w))))
    total += w.size
  return hidden / max(total, 1)


def check_resolution(tree, labels, eps: float, dtype, limit: float = 0.5) -> None:
  """Fails when zo.eps is below the compute dtype's resolution for most trainable weights, where
  the perturbation (and so the projected gradient) would silently round away."""
  if jnp.dtype(dtype).itemsize >= 4 or any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(tree)):
    return  # float32, or sizing the tree without weights (fttpu.plan)
  fraction = rounded_away_fraction(tree, labels, eps, dtype)
  if fraction > limit:
    raise ConfigError(
      f"zo.eps={eps} rounds away in {jnp.dtype(dtype).name} for {fraction:.0%} of the trainable "
      f"weights (w +- eps == w): raise zo.eps or use model.compute_dtype=float32"
    )


# ------------------------------------------------------------------ trajectory


TRAJECTORY = "trajectory.safetensors"  # in the run's workdir


def save_trajectory(workdir: str, initial_artifact: dict, rng, projected: np.ndarray, method: str) -> None:
  """The run as its initial trainable tree plus the projected gradients per step (steps, samples)."""
  path = files.join(workdir, TRAJECTORY)
  flat = {"initial/" + "/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(initial_artifact).items()}
  files.write_atomic(
    path,
    safetensors.numpy.save(
      {**flat, "rng": np.asarray(rng), "projected_grad": np.asarray(projected, np.float32)},
      metadata={"method": method, "noise_generator": perturbation.GENERATOR},
    ),
  )


def load_trajectory(path: str, pretrained: dict, noise: str) -> tuple[dict, np.ndarray, np.ndarray]:
  """(initial tree on the pretrained weights, rng key data, projected gradients (steps, samples)).

  Refuses a gaussian trajectory whose z another generator drew (fttpu before the Box-Muller draw
  saved none and drew by inverse CDF): its replay would follow other directions."""
  raw = files.read_bytes(path)
  saved = safetensors.numpy.load(raw)
  generator = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")]).get("__metadata__", {}).get("noise_generator")
  if noise == "gaussian" and generator != perturbation.GENERATOR:
    raise ConfigError(
      f"{path}: its gaussian z was drawn by {generator or 'the inverse-CDF generator of an earlier fttpu'}, "
      f"this fttpu draws it by {perturbation.GENERATOR}; replay it with the fttpu that trained it"
    )
  initial = {k[len("initial/") :]: v for k, v in saved.items() if k.startswith("initial/")}
  return checkpoint.onto_pretrained(initial, pretrained), saved["rng"], saved["projected_grad"]
