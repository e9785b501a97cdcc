"""Greedy decoding with a key/value cache for the decoder families (OPT, Llama): pure and traceable.

Prompts are LEFT-padded (batch, P): every row's next token goes to column P, so all rows write the
cache at the same slot. The cache is a `cache` collection, per layer `key` and `value` of shape
(batch, P + max_new_tokens, kv heads, head_dim), stacked on the scanned layer axis (layers first).
A prefill pass writes the prompt's keys and values at slots 0..P-1, then each step writes one token
at slot P + t. Attention sees the slots up to the query's own that hold a real token: left padding and
slots not yet written stay hidden. Positions count real tokens (the attention mask's cumulative sum
minus one), for Llama's rotary positions as for OPT's learned ones, as Hugging Face's generate counts
them on a left-padded batch.

`greedy_decode` takes the variables a forward takes ({"params": ...}, plus a zeroth-order `noise`
collection to decode the perturbed model), has no host synchronisation, and can run inside any jitted
function; fttpu/generate.py batches prompts on the host and jits it once per shape bucket.
"""

import dataclasses

import jax
import jax.numpy as jnp

from fttpu.errors import ConfigError
from fttpu.models.decoder import real_token_positions


def check_decoder(module) -> None:
  """Fails, naming the family, unless `module` is a causal decoder with its LM head (OPT, Llama)."""
  config = module.config
  if not (config.causal and config.lm_head):
    raise ConfigError(
      f"generation needs a decoder family with its language-model head (opt, llama); "
      f"model.family={config.family!r} is an encoder"
    )


def without_remat(module):
  """`module` without rematerialisation (it only serves a backward pass, and decoding has none)."""
  config = module.config
  return module if config.remat == "none" else module.clone(config=dataclasses.replace(config, remat="none"))


def empty_cache(config, batch: int, length: int) -> dict:
  """The `cache` collection of `batch` rows of `length` slots: zeros, in the compute dtype."""
  zeros = jnp.zeros((config.num_layers, batch, length, config.num_kv_heads, config.head_dim), config.compute_dtype)
  return {"layers": {"key": zeros, "value": zeros}}


def constrain(cache: dict, sharding) -> dict:
  """The cache placed by `sharding` (a jax Sharding of its 5-d arrays), or as it is when None."""
  if sharding is None:
    return cache
  return jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, sharding), cache)


def cached_logits(module, variables: dict, cache: dict, input_ids, key_mask, token_positions, cache_index, positions):
  """Next-token logits of `input_ids` (batch, length) written into `cache` from slot `cache_index`:
  (batch, vocab) at `positions` (one column per row), or (batch, length, vocab) when None; and the
  updated cache. key_mask (batch, cache length): 1 at the slots that hold (or will hold) real tokens."""
  logits, updated = module.apply(
    {**variables, "cache": cache},
    input_ids,
    key_mask,
    output="logits",
    positions=positions,
    token_positions=token_positions,
    cache_index=cache_index,
    mutable=["cache"],
  )
  return logits, updated["cache"]


def is_stop(tokens: jax.Array, stop_ids: tuple) -> jax.Array:
  """Whether each token is one of `stop_ids`."""
  if not stop_ids:
    return jnp.zeros(tokens.shape, bool)
  return jnp.isin(tokens, jnp.asarray(stop_ids, tokens.dtype))


def greedy_decode(
  module,
  variables: dict,
  input_ids,
  attention_mask,
  *,
  stop_ids: tuple,
  max_new_tokens: int,
  pad_id: int,
  cache_sharding=None,
) -> jax.Array:
  """The greedy continuation (batch, max_new_tokens) int32 of left-padded prompts (batch, P).

  Each row takes the argmax of the LM head's logits at its last token, up to max_new_tokens tokens; a
  row stops after the first of `stop_ids` it emits (kept in the output) and is `pad_id` from then on.
  The loop ends early once every row has stopped. `variables`: {"params": ...} and optionally "noise"
  (a zeroth-order perturbation, fttpu/models/perturbation.py). `cache_sharding`: where the cache lives
  under a mesh (rows over the batch axes, heads over `tensor`); None leaves it to the compiler.
  """
  check_decoder(module)
  if max_new_tokens < 1:
    raise ConfigError(f"max_new_tokens={max_new_tokens} is invalid; valid: 1 or more")
  module = without_remat(module)
  batch, length = input_ids.shape
  attention_mask = attention_mask.astype(jnp.int32)
  key_mask = jnp.concatenate([attention_mask, jnp.ones((batch, max_new_tokens), jnp.int32)], axis=1)
  real = attention_mask.sum(-1)  # the position of the first new token
  cache = constrain(empty_cache(module.config, batch, length + max_new_tokens), cache_sharding)
  last = jnp.full((batch,), length - 1)
  logits, cache = cached_logits(
    module, variables, cache, input_ids, key_mask, real_token_positions(attention_mask), 0, last
  )
  first = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  tokens = jnp.full((batch, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)

  def running(state):
    step, _, done, _ = state
    return (step < max_new_tokens) & ~jnp.all(done)

  def next_token(state):
    step, tokens, done, cache = state
    previous = jax.lax.dynamic_slice_in_dim(tokens, step - 1, 1, axis=1)
    logits, cache = cached_logits(
      module, variables, cache, previous, key_mask, (real + step - 1)[:, None], length + step - 1, jnp.zeros_like(real)
    )
    token = jnp.where(done, pad_id, jnp.argmax(logits, axis=-1).astype(jnp.int32))
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, token[:, None], step, axis=1)
    return step + 1, tokens, done | is_stop(token, stop_ids), constrain(cache, cache_sharding)

  state = (jnp.int32(1), tokens, is_stop(first, stop_ids), cache)
  return jax.lax.while_loop(running, next_token, state)[1]
