"""What the generation tasks (SQuAD, DROP) train on: MeZO's LM loss on the answer, and its F1 objective.

  answer loss  (every method) teacher forcing on the prompt + " answer\\n" (fttpu.data.generation): the mean
               negative log-likelihood over every target token of the batch, the prompt's tokens left out.
               MeZO's only_train_option without train_as_classification: its forward_wrap_with_option_len
               takes CrossEntropyLoss (mean over the unmasked tokens of the whole batch) on the last
               option_len tokens of each row. Reports the teacher-forced token accuracy beside it.
  answer F1    (zo.objective=f1, MeZO's non_diff) the perturbed model decodes the batch's prompts greedily
               (fttpu.models.decoding, inside the step) and a host callback (jax.pure_callback) turns each
               row's new tokens into text and scores its token F1 against the row's golds
               (fttpu.data.qa_metrics, SQuAD's normalisation): the mean over the batch's rows. The zeroth-
               order estimate takes -F1 of each probe as its value (fttpu.methods.zo).

The callback runs once per decode on the whole batch: under a mesh XLA gathers the tokens to one
device and hands the scores back to every device (jax.pure_callback's single-device semantics).
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fttpu import classifier
from fttpu.data import generation, qa_metrics
from fttpu.models import decoding


def answer_token_sums(logits: jax.Array, batch: dict) -> dict:
  """Sums over the batch's target tokens (target_mask, each row weighted by `weights`) of their negative
  log-likelihood and of the tokens the model's argmax gets right; logits (n, length, vocab) predict the
  next token."""
  ids, logits = batch["input_ids"], logits[:, :-1].astype(jnp.float32)
  target = ids[:, 1:]
  weights = batch["target_mask"][:, 1:].astype(jnp.float32) * batch["weights"][:, None]
  chosen = jnp.take_along_axis(logits, target[..., None], axis=-1)[..., 0]
  nll = jax.nn.logsumexp(logits, axis=-1) - chosen
  right = (jnp.argmax(logits, axis=-1) == target).astype(jnp.float32)
  return {"nll_sum": (nll * weights).sum(), "correct": (right * weights).sum(), "tokens": weights.sum()}


def make_answer_loss_fn(module) -> Callable:
  """loss(tree, batch, rng) -> (mean NLL per target token of the batch, {"accuracy": teacher-forced token
  accuracy}) over a generation task's teacher-forced batch (input_ids, attention_mask, target_mask (n, length))."""

  def loss_fn(tree, batch, rng=None):
    logits = classifier.apply_model(
      module, tree["model"], tree.get("noise"), batch["input_ids"], batch["attention_mask"], rng, output="logits"
    )
    sums = answer_token_sums(logits, batch)
    tokens = jnp.maximum(sums["tokens"], 1.0)
    return sums["nll_sum"] / tokens, {"accuracy": sums["correct"] / tokens}

  return loss_fn


def answer_f1_scorer(tokenizer, golds) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
  """score(new tokens (n, max_new_tokens), row indices (n,)) -> (n,) float32 on the host: each row's
  answer (generation.answer_text: up to the first stop, special tokens dropped, stripped) scored by
  token F1 against golds[row index] (qa_metrics.token_f1, MeZO's f1)."""

  def score(tokens, rows):
    return np.asarray(
      [
        qa_metrics.token_f1(generation.answer_text(tokenizer, row_tokens), golds[int(row)])
        for row_tokens, row in zip(np.asarray(tokens), np.asarray(rows))
      ],
      np.float32,
    )

  return score


def make_answer_f1(module, score: Callable, stop_ids: tuple, max_new_tokens: int, pad_id: int) -> Callable:
  """f1(tree, batch) -> (n,) float32: each row's F1 of the greedy answer that tree (with its zeroth-order
  `noise`, if any) decodes after the row's left-padded prompt (prompt_input_ids, prompt_attention_mask),
  scored on the host by `score` (answer_f1_scorer) with the rows' row_index. Traceable: runs in the
  jitted step."""

  def f1(tree, batch):
    variables = {"params": tree["model"], **({"noise": tree["noise"]} if "noise" in tree else {})}
    tokens = decoding.greedy_decode(
      module,
      variables,
      batch["prompt_input_ids"],
      batch["prompt_attention_mask"],
      stop_ids=stop_ids,
      max_new_tokens=max_new_tokens,
      pad_id=pad_id,
    )
    shape = jax.ShapeDtypeStruct(tokens.shape[:1], jnp.float32)
    return jax.pure_callback(score, shape, tokens, batch["row_index"])

  return f1


def with_answer_f1(loss_fn: Callable, answer_f1: Callable) -> Callable:
  """loss_fn with aux["f1"]: the mean (by `weights`) over the batch's rows of answer_f1."""

  def loss_and_f1(tree, batch, rng=None):
    loss, aux = loss_fn(tree, batch, rng)
    weights = batch["weights"]
    f1 = (answer_f1(tree, batch) * weights).sum() / jnp.maximum(weights.sum(), 1.0)
    return loss, {**aux, "f1": f1}

  return loss_and_f1
