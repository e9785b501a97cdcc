"""Classification with the pretrained model's own outputs: no new parameters.

Three styles (`model.classifier`):

- similarity: each class has a label description ("It was great."); the encoder embeds the
  sentence and every description (mean pooling over real tokens) in one pass, their tokens packed
  together; logits are scaled cosines (sentence-transformers checkpoints such as MiniLM, which have
  no LM head).
- mlm: prompt-based masked-LM classification as in LM-BFF and MeZO. The template puts a mask
  token in the input; logits are the MLM logits at the mask over each class's verbalizer word.
- causal: each class's label word is scored by its mean log-likelihood after the prompt under
  a causal LM, as MeZO's OPT experiments score candidates (batch arrays are (batch, classes, length)).

With a trained linear head (tree["head"], the `head` method) the logits are features @ kernel +
bias instead, where the features are what the style's zero-shot logits are linear in: the
normalized pooled sentence, the MLM head's transformed state at the mask, or the causal LM's
last state before the label word. `zero_shot_head` gives the head that reproduces the zero-shot
logits (exactly for similarity and mlm, and for causal when every label word is one token).
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fttpu.models.families import FAMILIES

STYLES = ("similarity", "mlm", "causal")


class Classifier(NamedTuple):
  logits: Callable  # (tree, batch, rng=None) -> (batch, classes) float32; rng=None: no dropout
  features: Callable  # (model params, batch) -> (batch, features): what a linear head reads
  zero_shot_head: Callable  # (model params, batch) -> (kernel, bias) that gives the zero-shot logits


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """Average of the hidden states of real (mask = 1) tokens, as sentence-transformers pools."""
  mask = mask[..., None].astype(jnp.float32)
  return (hidden.astype(jnp.float32) * mask).sum(-2) / jnp.maximum(mask.sum(-2), 1.0)


def apply_model(module, params, noise, ids, mask, rng, **kwargs):
  """`module` on ids and mask: with dropout when `rng` is given, with a zeroth-order `noise` collection when given."""
  rngs = {} if rng is None else {"dropout": rng}
  variables = {"params": params} if noise is None else {"params": params, "noise": noise}
  return module.apply(variables, ids, mask, deterministic=rng is None, rngs=rngs, **kwargs)


def make_embed_fn(module) -> Callable:
  """embed(model params, ids, mask, rng=None, noise=None) -> unit-norm mean-pooled features (n, hidden),
  or a tuple of them for tuples of ids and masks (encoded in one pass, see transformer.stack_layers).

  `noise` is a zeroth-order perturbation of the params (a `noise` collection, see
  fttpu/models/perturbation.py), added where each parameter is read.
  """

  def embed(params, ids, mask, rng=None, noise=None):
    hidden = apply_model(module, params, noise, ids, mask, rng)
    if isinstance(ids, tuple):  # streams (transformer.stack_layers): one pass, a tuple of features
      return tuple(unit_mean_pool(h, m) for h, m in zip(hidden, mask))
    return unit_mean_pool(hidden, mask)

  return embed


def unit_mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """mean_pool scaled to unit length."""
  pooled = mean_pool(hidden, mask)
  return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


def mask_positions(batch: dict) -> jax.Array:
  """The position of the mask token in each row (the pipeline guarantees exactly one)."""
  return jnp.argmax(batch["input_ids"] == batch["mask_token_id"], axis=-1)


def target_log_likelihoods(logits: jax.Array, ids: jax.Array, target_mask: jax.Array) -> jax.Array:
  """Mean over target tokens t of log p(ids[t] | ids[<t]); logits (n, length, vocab) predict the next token."""
  log_probs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  token = jnp.take_along_axis(log_probs, ids[:, 1:, None], axis=-1)[..., 0]
  weights = target_mask[:, 1:].astype(jnp.float32)
  return (token * weights).sum(-1) / jnp.maximum(weights.sum(-1), 1.0)


def _first_target(batch: dict) -> jax.Array:
  """(batch, classes) position of each candidate's first label-word token."""
  return jnp.argmax(batch["target_mask"] > 0, axis=-1)


def make_classifier(module, style: str, scale: float = 20.0) -> Classifier:
  """The classifier of `style` over the Flax model `module` (see the module docstring)."""
  if style not in STYLES:
    raise ValueError(f"unknown classifier style {style!r}; valid: {list(STYLES)}")
  output_embedding = FAMILIES.get(module.config.family).output_embedding  # the rows that score words
  if style == "similarity":
    return _similarity(module, scale)
  return (_masked if style == "mlm" else _causal)(module, output_embedding)


def _head_logits(tree, features):
  return features @ tree["head"]["kernel"] + tree["head"]["bias"]


def _similarity(module, scale: float) -> Classifier:
  embed = make_embed_fn(module)

  def logits(tree, batch, rng=None):
    noise = tree.get("noise")
    if "head" in tree:
      return _head_logits(tree, embed(tree["model"], batch["input_ids"], batch["attention_mask"], rng, noise))
    sentences, labels = embed(
      tree["model"],
      (batch["input_ids"], batch["label_input_ids"]),
      (batch["attention_mask"], batch["label_attention_mask"]),
      rng,
      noise,
    )
    return scale * sentences @ labels.T

  def zero_shot_head(params, batch):
    labels = embed(params, batch["label_input_ids"], batch["label_attention_mask"])
    return scale * labels.T, jnp.zeros((labels.shape[0],))

  features = lambda params, batch: embed(params, batch["input_ids"], batch["attention_mask"])
  return Classifier(logits, features, zero_shot_head)


def _masked(module, output_embedding: str) -> Classifier:
  def run(params, noise, batch, rng, **kwargs):
    ids, mask = batch["input_ids"], batch["attention_mask"]
    return apply_model(module, params, noise, ids, mask, rng, positions=mask_positions(batch), **kwargs)

  def logits(tree, batch, rng=None):
    if "head" in tree:
      return _head_logits(
        tree, run(tree["model"], tree.get("noise"), batch, rng, output="features").astype(jnp.float32)
      )
    return run(tree["model"], tree.get("noise"), batch, rng, output="logits", vocab_ids=batch["verbalizer_ids"])

  def zero_shot_head(params, batch):
    words = batch["verbalizer_ids"]
    table = params[output_embedding]["embedding"]
    return table[words].T.astype(jnp.float32), params["lm_bias"][words].astype(jnp.float32)

  features = lambda params, batch: run(params, None, batch, None, output="features").astype(jnp.float32)
  return Classifier(logits, features, zero_shot_head)


def _causal(module, output_embedding: str) -> Classifier:
  def features_at(params, noise, batch, rng=None):
    """The last state before the label word (of the first candidate: the prompt is the same for all)."""
    ids, mask, position = batch["input_ids"][:, 0], batch["attention_mask"][:, 0], _first_target(batch)[:, 0] - 1
    return apply_model(module, params, noise, ids, mask, rng, output="features", positions=position).astype(jnp.float32)

  def logits(tree, batch, rng=None):
    n, classes, length = batch["input_ids"].shape
    if "head" in tree:
      return _head_logits(tree, features_at(tree["model"], tree.get("noise"), batch, rng))
    ids, mask, targets = (batch[k].reshape(n * classes, length) for k in ("input_ids", "attention_mask", "target_mask"))
    out = apply_model(module, tree["model"], tree.get("noise"), ids, mask, rng, output="logits")
    return target_log_likelihoods(out, ids, targets).reshape(n, classes)

  def zero_shot_head(params, batch):
    first = _first_target(batch)[0]
    words = batch["input_ids"][0, jnp.arange(first.shape[0]), first]
    table = params[output_embedding if output_embedding in params else "word"]["embedding"]  # "word": tied
    return table[words].T.astype(jnp.float32), jnp.zeros((first.shape[0],))

  features = lambda params, batch: features_at(params, None, batch)
  return Classifier(logits, features, zero_shot_head)


def weighted_sums(logits: jax.Array, batch: dict) -> dict:
  """Sums over the batch, each example weighted (padding rows weigh 0): loss, correct, count.

  Row tasks' multiple choice (ReCoRD) carries choice_mask, 0 at padding candidates, which then neither win
  nor take probability, and gold_mask: a prediction is right when it is any gold."""
  weights = batch["weights"]
  if "choice_mask" in batch:
    logits = jnp.where(batch["choice_mask"] > 0, logits, -1e9)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
  predicted = logits.argmax(-1)
  if "gold_mask" in batch:
    correct = (jnp.take_along_axis(batch["gold_mask"], predicted[:, None], axis=-1)[:, 0] > 0).astype(jnp.float32)
  else:
    correct = (predicted == batch["labels"]).astype(jnp.float32)
  return {"loss_sum": (losses * weights).sum(), "correct": (correct * weights).sum(), "count": weights.sum()}


def make_loss_fn(logits_fn: Callable) -> Callable:
  """loss(tree, batch, rng) -> (weighted mean cross-entropy, {"accuracy": ...})."""

  def loss_fn(tree, batch, rng=None):
    sums = weighted_sums(logits_fn(tree, batch, rng), batch)
    count = jnp.maximum(sums["count"], 1.0)
    return sums["loss_sum"] / count, {"accuracy": sums["correct"] / count}

  return loss_fn
