"""The optimizer of config.optimizer: schedule + update rule, applied to trainable leaves only."""

import jax
import optax

from fttpu.errors import check

SCHEDULES = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw", "sgd", "momentum", "sign", "zo_sgd_sign")


def validate(config) -> None:
  """config.optimizer (zo_sgd_sign's tie to the zeroth-order methods is checked by their section)."""
  o = config.optimizer
  check(o.name in OPTIMIZERS, "optimizer.name", o.name, str(list(OPTIMIZERS)))
  check(o.schedule in SCHEDULES, "optimizer.schedule", o.schedule, str(list(SCHEDULES)))
  check(o.learning_rate > 0, "optimizer.learning_rate", o.learning_rate, "a number > 0")
  check(o.weight_decay >= 0, "optimizer.weight_decay", o.weight_decay, "a number >= 0")
  check(o.warmup_steps >= 0, "optimizer.warmup_steps", o.warmup_steps, "an integer >= 0")


def learning_rate_schedule(config, total_steps: int) -> optax.Schedule:
  decay_steps = max(total_steps - config.warmup_steps, 1)
  after = {
    "constant": optax.constant_schedule(config.learning_rate),
    "linear": optax.linear_schedule(config.learning_rate, 0.0, decay_steps),
    "cosine": optax.cosine_decay_schedule(config.learning_rate, decay_steps),
  }[config.schedule]
  if not config.warmup_steps:
    return after
  warmup = optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
  return optax.join_schedules([warmup, after], [config.warmup_steps])


def _decay_mask(params):
  """Weight decay on matrices and embeddings, not on biases and norm scales (as HF and BERT)."""
  return jax.tree_util.tree_map_with_path(lambda path, p: not str(path[-1].key) in ("bias", "scale"), params)


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
  """adamw; or, after weight decay, sgd, momentum (heavy ball, coefficient b1) and sign (element-wise sign
  of the decayed gradient: signSGD): on a zeroth-order estimate, ZO-SGD, ZO-SGD-momentum and ZO-signSGD.
  zo_sgd_sign is sgd here; the zeroth-order estimate hands it sign(g_i) z_i (fttpu.methods.zo)."""
  schedule = learning_rate_schedule(config, total_steps)
  if config.name == "adamw":
    return optax.adamw(
      schedule, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay, mask=_decay_mask
    )
  rule = {
    "sgd": lambda: optax.sgd(schedule),
    "zo_sgd_sign": lambda: optax.sgd(schedule),
    "momentum": lambda: optax.sgd(schedule, momentum=config.b1),
    "sign": lambda: optax.sign_sgd(schedule),
  }[config.name]()
  return optax.chain(optax.add_decayed_weights(config.weight_decay, mask=_decay_mask), rule)
