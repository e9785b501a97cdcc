"""Greedy decoding with a key/value cache (fttpu/models/decoding.py, fttpu/generate.py).

Tiny random OPT and Llama models are built by transformers (as tests/test_families.py builds them),
saved and loaded by fttpu. On LEFT-padded prompts (fttpu's side, and what transformers' generate
expects of a decoder) fttpu's greedy tokens must equal `generate(do_sample=False)`'s token for token,
and the cache must give the logits of a full forward over the same tokens.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # test-only reference
from flax import traverse_util

from fttpu import generate, models
from fttpu.data import generation, qa_metrics
from fttpu.data.qa_tasks import SQUAD
from fttpu.data.rows import Row
from fttpu.errors import ConfigError
from fttpu.models import decoding, perturbation, tiny
from fttpu.models.decoder import real_token_positions
from tests.conftest import with_fake_devices
from tests.test_families import SIZES, hf_model, randomize, write_tokenizer

pytestmark = pytest.mark.quick_compile  # tiny models, a few tokens: compiling is the cost (tests/conftest.py)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT_LENGTHS = (9, 5, 2)  # real tokens per row of the left-padded batch (the first row fills it)
MAX_NEW = 6


def spread_weights(model, std: float):
  """The tiny model with N(0, std^2) added to every matrix. At transformers' init (std 0.02) attention is
  nearly uniform, so a wrong position changes no greedy token (and OPT repeats one token forever): a
  weak parity test."""
  generator = torch.Generator().manual_seed(2)
  with torch.no_grad():
    for p in model.parameters():
      if p.ndim == 2:
        p.add_(std * torch.randn(p.shape, generator=generator))
  return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """{family: (transformers model, checkpoint dir)} for OPT and Llama."""
  out = {}
  for family in ("opt", "llama"):
    model = spread_weights(randomize(hf_model(family)), 0.2).eval()
    path = tmp_path_factory.mktemp(family)
    model.save_pretrained(path)
    write_tokenizer(path, SIZES["vocab_size"])
    out[family] = (model, str(path))
  return out


@pytest.fixture(scope="module", params=["opt", "llama"])
def pair(request, checkpoints):
  """(transformers model, the fttpu LoadedModel of the same weights)."""
  model, path = checkpoints[request.param]
  return model, models.load(request.param, path, lm_head=True)


@pytest.fixture(scope="module")
def llama(checkpoints):
  return models.load("llama", checkpoints["llama"][1], lm_head=True)


def left_padded(pad: int, lengths=PROMPT_LENGTHS, seed: int = 0):
  """Random prompts of `lengths` real tokens, padded on the left to the longest."""
  width = max(lengths)
  ids = np.random.default_rng(seed).integers(3, SIZES["vocab_size"], (len(lengths), width)).astype(np.int32)
  mask = np.ones_like(ids)
  for row, length in enumerate(lengths):
    ids[row, : width - length], mask[row, : width - length] = pad, 0
  return ids, mask


def decode(loaded, ids, mask, stop_ids=(), max_new=MAX_NEW, variables=None):
  """fttpu's greedy tokens (n, max_new) for one batch, jitted as fttpu.generate jits it."""
  jitted = generate.decoder(loaded.module, tuple(stop_ids), max_new, loaded.config.pad_token_id, None)
  return np.asarray(jitted(variables or {"params": loaded.params}, ids, mask))


def stop_one_row_early(free: np.ndarray) -> int:
  """A token that row 0 emits at step 1 or later and some other row never emits: as the stop token,
  row 0 stops before max_new_tokens and that other row runs to it."""
  for token in free[0, 1:-1]:
    if any(token not in free[row] for row in range(1, len(free))):
      return int(token)
  raise AssertionError(f"no token of row 0 is missing from another row: {free.tolist()}")


def until_stop(tokens, stop: int) -> list:
  """A row's tokens up to and including its first `stop`."""
  tokens = list(tokens)
  return tokens[: tokens.index(stop) + 1] if stop in tokens else tokens


def transformers_greedy(model, ids, mask, eos: int, pad: int) -> np.ndarray:
  with torch.no_grad():
    out = model.generate(
      torch.tensor(ids, dtype=torch.long),
      attention_mask=torch.tensor(mask),
      do_sample=False,
      max_new_tokens=MAX_NEW,
      eos_token_id=eos,
      pad_token_id=pad,
    )
  return out[:, ids.shape[1] :].numpy()


def test_greedy_tokens_equal_transformers_generate_on_left_padded_prompts(pair):
  """3 left-padded prompts of 9, 5 and 2 real tokens, 6 new tokens, a stop token chosen so that row 0
  stops early and another row runs to the end: every token up to each row's stop is transformers'."""
  reference, loaded = pair
  pad = loaded.config.pad_token_id
  ids, mask = left_padded(pad)
  stop = stop_one_row_early(decode(loaded, ids, mask))
  ours, theirs = decode(loaded, ids, mask, (stop,)), transformers_greedy(reference, ids, mask, stop, pad)
  lengths = []
  for row in range(len(ids)):
    expected = until_stop(theirs[row], stop)
    assert until_stop(ours[row], stop) == expected, (row, ours.tolist(), theirs.tolist())
    assert (ours[row, len(expected) :] == pad).all()  # a stopped row is padding from then on
    lengths.append(len(expected))
  assert min(lengths) < MAX_NEW and max(lengths) == MAX_NEW and theirs.shape[1] == MAX_NEW, lengths


def test_cached_steps_give_the_logits_of_a_full_forward(pair):
  """Prefill over the left-padded prompts, then 3 tokens one at a time through the cache: each logit is
  the full forward's over the same sequence (positions counting real tokens) to 1e-5."""
  _, loaded = pair
  module, variables, config = loaded.module, {"params": loaded.params}, loaded.config
  ids, mask = left_padded(config.pad_token_id)
  new = np.random.default_rng(1).integers(3, SIZES["vocab_size"], (len(ids), 3)).astype(np.int32)
  full_ids, full_mask = np.concatenate([ids, new], 1), np.concatenate([mask, np.ones_like(new)], 1)
  width, real = ids.shape[1], mask.sum(-1)
  cache = decoding.empty_cache(config, len(ids), full_ids.shape[1])
  cached_logits = jax.jit(decoding.cached_logits, static_argnums=0)
  prefill, cache = cached_logits(module, variables, cache, ids, full_mask, real_token_positions(mask), 0, None)
  steps = []
  for step in range(new.shape[1]):
    logits, cache = cached_logits(
      module, variables, cache, new[:, step : step + 1], full_mask, (real + step)[:, None], width + step, np.zeros(3)
    )
    steps.append(np.asarray(logits))
  cached = np.concatenate([np.asarray(prefill), np.stack(steps, 1)], 1)
  full = module.apply(variables, full_ids, full_mask, output="logits", token_positions=real_token_positions(full_mask))
  real_columns = full_mask.astype(bool)
  error = np.abs(cached[real_columns] - np.asarray(full)[real_columns]).max()
  print(f"{config.family}: max |cached - full forward logit| {error:.2e}")
  assert error < 1e-5


def test_rows_stop_at_their_stop_tokens_and_at_max_new_tokens(llama):
  """A row ends with its first stop token and is padding after it; the rest run to max_new_tokens, and
  a shorter max_new_tokens is the same decode cut short."""
  ids, mask = left_padded(0)
  free = decode(llama, ids, mask)
  stop = stop_one_row_early(free)
  stopped = decode(llama, ids, mask, (stop, 10**6))
  for row in range(len(ids)):
    kept = until_stop(free[row], stop)
    assert stopped[row].tolist() == kept + [0] * (MAX_NEW - len(kept))
  np.testing.assert_array_equal(decode(llama, ids, mask, max_new=3), free[:, :3])
  first_tokens = tuple(int(t) for t in free[:, 0])  # every row stops at once
  assert decode(llama, ids, mask, first_tokens).tolist() == [[t] + [0] * (MAX_NEW - 1) for t in first_tokens]


def noise_collection(params: dict, scale: float) -> dict:
  """A zeroth-order `noise` collection over every leaf: scale * z, z from each leaf's own key."""
  flat = traverse_util.flatten_dict(params)
  noise = {}
  for index, (path, leaf) in enumerate(flat.items()):
    unit = perturbation.leaf_noise(jnp.array([7, index], jnp.uint32), leaf.shape, "gaussian")
    noise[path] = unit.replace(scale=unit.scale * scale)
  return traverse_util.unflatten_dict(noise)


def test_decoding_under_a_noise_collection_decodes_the_perturbed_model(llama):
  """Zero noise decodes as the plain model; noise of scale 0.05 decodes as the weights with that noise
  added (and differs from the plain decode, so the noise is read)."""
  ids, mask = left_padded(0)
  plain = decode(llama, ids, mask)
  zero = decode(llama, ids, mask, variables={"params": llama.params, "noise": noise_collection(llama.params, 0.0)})
  np.testing.assert_array_equal(zero, plain)
  noise = noise_collection(llama.params, 0.05)
  perturbed = decode(llama, ids, mask, variables={"params": llama.params, "noise": noise})
  add = lambda p, n: p.astype(jnp.float32) + n.value(p.shape)
  added = jax.jit(lambda params, noise: jax.tree_util.tree_map(add, params, noise))(llama.params, noise)
  np.testing.assert_array_equal(perturbed, decode(llama, ids, mask, variables={"params": added}))
  assert (perturbed != plain).any()


def prompts_of(ids, mask) -> generation.Prompts:
  return generation.Prompts(ids, mask, tuple(("x",) for _ in ids))


def test_batches_with_filler_rows_and_trimmed_padding_decode_as_one_batch(llama):
  """5 prompts in batches of 2 (the last filled up with a masked row), each batch's leading padding
  trimmed to its bucket: the same tokens as all 5 rows decoded at once at their full width."""
  ids, mask = left_padded(0, lengths=(3, 2, 20, 1, 4), seed=3)
  batched = generate.greedy(llama.module, llama.params, prompts_of(ids, mask), (), MAX_NEW, batch_size=2)
  assert batched.shape == (5, MAX_NEW)
  np.testing.assert_array_equal(batched, decode(llama, ids, mask))
  assert [generate.prompt_bucket(n, 20) for n in (1, 16, 17, 20)] == [16, 16, 20, 20]


def test_a_bucket_compiles_once_and_the_jitted_decoders_are_kept(llama):
  """Two evaluations of other prompts of the same bucket reuse one compiled decode."""
  stop_ids, max_new = (5,), 4  # settings no other test uses: a decoder of its own
  first, second = (prompts_of(*left_padded(0, seed=seed)) for seed in (4, 5))
  generate.greedy(llama.module, llama.params, first, stop_ids, max_new, batch_size=4)
  generate.greedy(llama.module, llama.params, second, stop_ids, max_new, batch_size=4)
  jitted = generate.decoder(llama.module, stop_ids, max_new, llama.config.pad_token_id, None)
  assert jitted._cache_size() == 1
  generate.greedy(llama.module, llama.params, first, stop_ids, max_new, batch_size=2)  # another bucket
  assert jitted._cache_size() == 2


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_encoder_families_are_refused(family):
  """Before anything is read or traced: the parameters are not even looked at."""
  hf_config = {**SIZES, "intermediate_size": 64, "max_position_embeddings": 64, "model_type": family}
  encoder = models.FAMILIES.get(family).module(models.make_config(family, hf_config, lm_head=True))
  ids, mask = left_padded(0)
  with pytest.raises(ConfigError, match=f"generation needs a decoder family .*'{family}' is an encoder"):
    generate.greedy(encoder, {}, prompts_of(ids, mask), (2,), 4)
  with pytest.raises(ConfigError, match=f"'{family}' is an encoder"):
    decoding.greedy_decode(encoder, {"params": {}}, ids, mask, stop_ids=(), max_new_tokens=4, pad_id=0)


def test_past_the_models_positions_or_no_new_token_is_refused(llama):
  ids, mask = left_padded(0, lengths=(60, 3))
  with pytest.raises(ConfigError, match=r"max_length=66 is invalid; valid: 8..64 tokens"):
    generate.greedy(llama.module, llama.params, prompts_of(ids, mask), (), 6)
  with pytest.raises(ConfigError, match="max_new_tokens=0 is invalid; valid: 1 or more"):
    generate.greedy(llama.module, llama.params, prompts_of(ids[:, -8:], mask[:, -8:]), (), 0)


SQUAD_ROW = {
  "title": "Super_Bowl_50",
  "context": "Super Bowl 50 was won by the Denver Broncos.",
  "question": "Which team won Super Bowl 50?",
  "answers": ["Denver Broncos"],
}


def test_evaluate_generation_scores_each_rows_answer_up_to_its_stop(tmp_path):
  """On a tiny OPT with a byte-level tokenizer: the predictions are the decoded text up to the newline
  or EOS, and the F1 is the task's, each row against its own golds."""
  texts = [f"Title: {SQUAD_ROW['title']}\nContext: {SQUAD_ROW['context']}\nAnswer: Denver Broncos\n"] * 20
  loaded = models.load("opt", tiny.build("opt", str(tmp_path), texts, vocab_size=300), lm_head=True)
  rows = [Row({**SQUAD_ROW, "question": question}, str(i)) for i, question in enumerate(["Who won?", "Which team?"])]
  prompts = generation.encode_prompts(loaded.tokenizer, SQUAD, rows, max_length=48, max_new_tokens=8)
  stops = generation.stop_ids(loaded.tokenizer)
  tokens = generate.greedy(loaded.module, loaded.params, prompts, stops, 8, batch_size=2)
  predictions, f1 = generate.evaluate_generation(loaded.module, loaded.params, loaded.tokenizer, SQUAD, prompts, 8)
  assert predictions == [generation.answer_text(loaded.tokenizer, row) for row in tokens]
  assert f1 == generation.score(SQUAD, predictions, prompts)
  own_golds = generation.Prompts(prompts.input_ids, prompts.attention_mask, ((predictions[0] or "x",), ("zzz",)))
  _, scored = generate.evaluate_generation(loaded.module, loaded.params, loaded.tokenizer, SQUAD, own_golds, 8)
  assert scored == pytest.approx(0.5 if qa_metrics.normalize_answer(predictions[0]) else 0.0)


SHARDED_DECODE = """
import json, sys, jax, numpy as np
from fttpu import generate, models, sharding
from fttpu.data import generation
paths, ids, mask = json.loads(sys.argv[1])
prompts = generation.Prompts(np.asarray(ids, np.int32), np.asarray(mask, np.int32), tuple(("x",) for _ in ids))
mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
out = {}
for family, path in paths.items():
  loaded = models.load(family, path, lm_head=True)
  stop = int(generate.greedy(loaded.module, loaded.params, prompts, (), 6, batch_size=4)[0, 2])
  one = generate.greedy(loaded.module, loaded.params, prompts, (stop,), 6, batch_size=4)
  rules = sharding.default_rules(family)
  specs = sharding.param_specs({"model": loaded.params}, models.logical_axes(loaded.module), rules, mesh)
  params = sharding.put(loaded.params, sharding.named(mesh, specs["model"]))
  eight = generate.greedy(loaded.module, params, prompts, (stop,), 6, batch_size=4, mesh=mesh)
  out[family] = {"one": one.tolist(), "eight": eight.tolist(), "devices": len(jax.devices()),
                 "query_kernel": list(params["layers"]["query"]["kernel"].sharding.spec),
                 "cache": list(generate.cache_sharding_for(loaded.config, mesh, rules, 4).spec)}
print(json.dumps(out))
"""


def test_decoding_on_8_devices_gives_one_devices_tokens(checkpoints):
  """Rows over data x fsdp (2 x 2), heads over tensor (2): the parameters sharded by the rules, 6 prompts
  in two batches of 4 (the second with 2 filler rows): the same tokens as on one device. (The prompts'
  padding id is whatever: the mask hides it.)"""
  ids, mask = left_padded(1, lengths=(9, 5, 2, 7, 1, 3), seed=6)
  paths = {family: path for family, (_, path) in checkpoints.items()}
  env = with_fake_devices(8)
  argument = json.dumps([paths, ids.tolist(), mask.tolist()])
  result = subprocess.run(
    [sys.executable, "-c", SHARDED_DECODE, argument],
    check=False,
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-4000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  for family, run in out.items():
    assert run["devices"] == 8 and run["eight"] == run["one"], (family, run)
    assert run["query_kernel"] == [None, "fsdp", "tensor", None], run  # (layers, embed, heads, kv)
    assert run["cache"] == [None, ["data", "fsdp"], None, "tensor", None], run  # (layers, rows, slots, heads, kv)
  assert set(out) == {"opt", "llama"}
