"""Greedy decoding of generation prompts (SQuAD, DROP) in batches on the host, and their evaluation.

fttpu/models/decoding.py decodes one left-padded batch inside any jitted function. Here the host cuts a
generation.Prompts into batches of `batch_size` rows (the last one filled up with masked rows), drops
each batch's leading columns of padding down to a power-of-two prompt length (positions count real
tokens, so this changes no logit), and runs one jitted decode per (batch, prompt length,
max_new_tokens) bucket: `decoder` keeps the jitted functions, which compile once per bucket.
Under a mesh the rows split over the batch axes (data, fsdp) and the cache's heads over what the
sharding rules give `heads`; the parameters come placed by those rules.
"""

import functools

import jax
import numpy as np
from jax.sharding import NamedSharding

from fttpu import models, sharding
from fttpu.data import generation
from fttpu.models import decoding

MIN_PROMPT_BUCKET = 16
CACHE_AXES = ("layers", "batch", None, "heads", "kv")  # the logical axes of the cache's arrays


@functools.lru_cache(maxsize=64)
def decoder(module, stop_ids: tuple, max_new_tokens: int, pad_id: int, cache_sharding):
  """decode(variables, input_ids, attention_mask) -> new tokens: decoding.greedy_decode jitted for these
  settings (one function each, so jax.jit's cache compiles each bucket's shapes once). Every argument is
  positional and required: functools.lru_cache keys on how they are passed."""
  decode = functools.partial(
    decoding.greedy_decode,
    module,
    stop_ids=stop_ids,
    max_new_tokens=max_new_tokens,
    pad_id=pad_id,
    cache_sharding=cache_sharding,
  )
  return jax.jit(decode)


def cache_sharding_for(config, mesh, rules: dict, batch_size: int) -> NamedSharding:
  """Where a batch's cache lives: rows over the mesh's batch axes, kv heads as the rules place `heads`."""
  rules = {**rules, "batch": ",".join(a for a in sharding.BATCH_AXES if a in mesh.axis_names)}
  shape = (config.num_layers, batch_size, 1, config.num_kv_heads, config.head_dim)
  return NamedSharding(mesh, sharding.mesh_spec(shape, CACHE_AXES, rules, mesh, "decoding cache"))


def prompt_bucket(longest: int, length: int) -> int:
  """The columns a batch keeps: its longest prompt rounded up to a power of two (at least
  MIN_PROMPT_BUCKET), at most the prompts' full `length`."""
  return min(length, max(MIN_PROMPT_BUCKET, 1 << max(longest - 1, 0).bit_length()))


def bucketed_batches(input_ids: np.ndarray, attention_mask: np.ndarray, batch_size: int, pad_id: int):
  """(ids, mask, rows) per batch of `batch_size` rows: the last filled up with masked rows of `pad_id`,
  leading padding columns dropped down to prompt_bucket; `rows` is how many rows are real."""
  for start in range(0, len(input_ids), batch_size):
    ids, mask = input_ids[start : start + batch_size], attention_mask[start : start + batch_size]
    rows = len(ids)
    filler = batch_size - rows
    ids = np.concatenate([ids, np.full((filler, ids.shape[1]), pad_id, ids.dtype)])
    mask = np.concatenate([mask, np.zeros((filler, mask.shape[1]), mask.dtype)])
    keep = prompt_bucket(int(mask.sum(-1).max()), ids.shape[1])
    yield ids[:, -keep:], mask[:, -keep:], rows


def greedy(
  module,
  params: dict,
  prompts: generation.Prompts,
  stop_ids: tuple,
  max_new_tokens: int = generation.MAX_NEW_TOKENS,
  *,
  noise=None,
  batch_size: int = 8,
  mesh=None,
  rules: dict | None = None,
) -> np.ndarray:
  """The greedy continuations (n, max_new_tokens) int32 of the left-padded `prompts` under `params` (plus
  `noise`, a zeroth-order perturbation, when given): each row's tokens up to and including its first stop
  token, then the model's pad id. With `mesh`, rows split over its batch axes (`batch_size` must divide
  over them) and the cache follows `rules` (default: the family's). The prompts' width plus max_new_tokens
  must fit the model's positions."""
  decoding.check_decoder(module)
  config = module.config
  models.check_length(config, prompts.input_ids.shape[1] + max_new_tokens)  # past the table OPT's positions clamp
  cache_sharding = None
  if mesh is not None:
    sharding.check_batch_sizes(mesh, batch_size)
    rules = sharding.default_rules(config.family) if rules is None else rules
    cache_sharding = cache_sharding_for(config, mesh, rules, batch_size)
  decode = decoder(module, tuple(int(i) for i in stop_ids), max_new_tokens, config.pad_token_id, cache_sharding)
  variables = {"params": params} if noise is None else {"params": params, "noise": noise}
  out = []
  for ids, mask, rows in bucketed_batches(prompts.input_ids, prompts.attention_mask, batch_size, config.pad_token_id):
    batch = {"input_ids": ids, "attention_mask": mask}
    if mesh is not None:
      batch = sharding.put_batch(mesh, batch)
    tokens = decode(variables, batch["input_ids"], batch["attention_mask"])
    out.append(sharding.to_host(tokens)[:rows])
  return np.concatenate(out) if out else np.zeros((0, max_new_tokens), np.int32)


def evaluate_generation(
  module,
  params: dict,
  tokenizer,
  task,
  prompts: generation.Prompts,
  max_new_tokens: int = generation.MAX_NEW_TOKENS,
  **greedy_options,
) -> tuple[list[str], float]:
  """(the decoded answers, the task's metric over them: SQuAD's and DROP's F1) of greedy decoding
  stopped at generation.stop_ids (newline, EOS), as MeZO evaluates them. `greedy_options`: `greedy`'s
  noise, batch_size, mesh and rules."""
  tokens = greedy(module, params, prompts, generation.stop_ids(tokenizer), max_new_tokens, **greedy_options)
  predictions = [generation.answer_text(tokenizer, row) for row in tokens]
  return predictions, generation.score(task, predictions, prompts)
