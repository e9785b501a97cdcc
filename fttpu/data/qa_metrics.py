"""Answer metrics of MeZO's generation tasks (SQuAD, DROP), as MeZO's large_models/metrics.py computes them.

A prediction is scored against every gold answer of its row and keeps the best score. Texts are
compared after SQuAD's normalisation: lowercased, punctuation removed, the articles a/an/the removed,
whitespace collapsed.

  em  1 when the normalised prediction equals a normalised gold, else 0 (MeZO's "em").
  f1  token F1 of the normalised texts' bags of words (MeZO's "f1"). A row whose first gold is
      "CANNOTANSWER" or "no answer" scores the exact match with it instead. A normalised text with no
      tokens (an empty answer, or "the") shares no token with anything, so its F1 is 0 (MeZO's, unlike
      the official SQuAD v2 script, which gives two empty texts 1).

DROP's F1, as MeZO reports it, is this same token F1 over the row's golds (MeZO's DROPDataset has
metric_name "f1"): not the official DROP script's, which aligns multi-span answers and compares
numbers as numbers. A number is a token like any other: "1,000" normalises to "1000" (the comma is
punctuation) and "3.5" to "35", and "four" never matches "4".
"""

import collections
import re
import string

import numpy as np

NO_ANSWER = ("CANNOTANSWER", "no answer")  # MeZO's metrics.py: golds meaning the question has no answer
_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
  """Lowercased, without punctuation and the articles a/an/the, whitespace collapsed (SQuAD's)."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, golds) -> float:
  """1.0 when the normalised prediction equals any normalised gold, else 0.0."""
  return float(any(normalize_answer(gold) == normalize_answer(prediction) for gold in golds))


def _f1(prediction: str, gold: str) -> float:
  """Token F1 of two texts' normalised bags of words; 0 when they share no token."""
  predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
  same = sum((collections.Counter(predicted) & collections.Counter(wanted)).values())
  if same == 0:
    return 0.0
  precision, recall = same / len(predicted), same / len(wanted)
  return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, golds) -> float:
  """The best token F1 of the prediction against the golds (the exact match when the first gold is
  one of NO_ANSWER)."""
  golds = list(golds)
  if not golds:
    raise ValueError("token_f1 needs at least one gold answer")
  if golds[0] in NO_ANSWER:
    return float(normalize_answer(golds[0]) == normalize_answer(prediction))
  return max(_f1(prediction, gold) for gold in golds)


METRICS = {"em": exact_match, "f1": token_f1}


def mean_score(metric: str, predictions, golds) -> float:
  """The mean of `metric` ("em" or "f1") over rows: predictions[i] against the golds golds[i]."""
  if metric not in METRICS:
    raise ValueError(f"unknown answer metric {metric!r}; valid: {sorted(METRICS)}")
  predictions, golds = list(predictions), list(golds)
  if len(predictions) != len(golds) or not predictions:
    raise ValueError(f"{len(predictions)} predictions for {len(golds)} rows of golds; need one per row, at least one")
  return float(np.mean([METRICS[metric](p, g) for p, g in zip(predictions, golds)]))
