"""Prompt-style classification with no new parameters.

Each class has a label description ("It was great."). The encoder embeds the sentence and
every description (mean pooling over real tokens); logits are scaled cosine similarities.
Fine-tuning moves sentence and description embeddings through the same weights.
With a trained linear head (tree["head"], linear probing) the logits are
normalized sentence features @ kernel + bias instead.
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """Average of the hidden states of real (mask = 1) tokens, as sentence-transformers pools."""
  mask = mask[..., None].astype(hidden.dtype)
  return (hidden * mask).sum(-2) / jnp.maximum(mask.sum(-2), 1.0)


def make_embed_fn(module) -> Callable:
  """embed(model params, ids, mask, rng=None, noise=None) -> unit-norm mean-pooled features (n, hidden).

  `noise` is a zeroth-order perturbation of the params (a `noise` collection, see
  fttpu/models/perturbation.py), added where each parameter is read.
  """

  def embed(params, ids, mask, rng=None, noise=None):
    rngs = {} if rng is None else {"dropout": rng}
    variables = {"params": params} if noise is None else {"params": params, "noise": noise}
    hidden = module.apply(variables, ids, mask, deterministic=rng is None, rngs=rngs)
    pooled = mean_pool(hidden, mask)
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)

  return embed


def make_logits_fn(module, scale: float) -> Callable:
  """logits(tree, batch, rng) -> (batch, classes) for tree = {"model": params, "head"?: ..., "noise"?: ...};
  rng=None means evaluation (no dropout)."""
  embed = make_embed_fn(module)

  def logits(tree, batch, rng: Optional[jax.Array] = None):
    sentence_rng, label_rng = (None, None) if rng is None else jax.random.split(rng)
    noise = tree.get("noise")
    sentences = embed(tree["model"], batch["input_ids"], batch["attention_mask"], sentence_rng, noise)
    if "head" in tree:
      return sentences @ tree["head"]["kernel"] + tree["head"]["bias"]
    labels = embed(tree["model"], batch["label_input_ids"], batch["label_attention_mask"], label_rng, noise)
    return scale * sentences @ labels.T

  return logits


def weighted_sums(logits: jax.Array, batch: dict) -> dict:
  """Sums over the batch, each example weighted (padding rows weigh 0): loss, correct, count."""
  weights = batch["weights"]
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
  correct = (logits.argmax(-1) == batch["labels"]).astype(jnp.float32)
  return {"loss_sum": (losses * weights).sum(), "correct": (correct * weights).sum(), "count": weights.sum()}


def make_loss_fn(logits_fn: Callable) -> Callable:
  """loss(tree, batch, rng) -> (weighted mean cross-entropy, {"accuracy": ...})."""

  def loss_fn(tree, batch, rng=None):
    sums = weighted_sums(logits_fn(tree, batch, rng), batch)
    count = jnp.maximum(sums["count"], 1.0)
    return sums["loss_sum"] / count, {"accuracy": sums["correct"] / count}

  return loss_fn
