"""Every update rule runs on every family, classified as the paper tables do (tiny random models).

bert and roberta classify with the MLM head at the prompt's mask (LM-BFF), opt and llama by the
label words' log-likelihood (MeZO's OPT protocol). Checkpoints are tiny random models with a
tokenizer trained on SST-2 (fttpu.models.tiny), read through the Hugging Face import.
"""

import jax
import numpy as np
import pytest

from configs import fewshot
from fttpu import classifier, models, step as step_lib, trainer
from fttpu.errors import ConfigError
from fttpu.data import pipeline, tsv
from fttpu.methods import masks
from fttpu.methods.base import dense_grad_fn
from fttpu.models import tiny
from fttpu.state import TrainState
from tests.conftest import data_dir

FAMILIES = ("bert", "roberta", "opt", "llama")
METHODS = ("full", "head", "bitfit", "layers", "lisa", "sparse", "spiel", "lora", "prefix", "mezo", "zo")


@pytest.fixture(scope="session")
def sst2_texts():
  rows, _ = tsv.read_tsv(f"{data_dir()}/sst2/train.tsv", 2)
  texts = [row[0] for row in rows[:3000]]
  return texts + [f"{s} It was {w}." for s in texts[:20] for w in ("great", "terrible")] * 10


@pytest.fixture(scope="session", params=FAMILIES)
def family_setup(request, sst2_texts, tmp_path_factory):
  """(family, config factory, loaded model, few-shot data) for a tiny random checkpoint of the family."""
  family = request.param
  path = tiny.build(family, str(tmp_path_factory.mktemp(f"tiny-{family}")), sst2_texts)

  def config_for(method):
    style = "mlm" if family == "bert" else ""  # bert's default is the sentence-similarity style (MiniLM)
    name = "layers" if method == "lisa" else method
    config = fewshot.get_config(f"family={family},checkpoint={path},method={name},k=4,steps=3,classifier={style}")
    if method == "lisa":  # one layer of the stack at a time, resampled at every refresh
      config.layers.sample, config.layers.every = 1, 2
    config.data.dir = data_dir()
    config.data.max_length = 24
    config.train.batch_size = 4
    config.zo.noise = "rademacher"  # compiles in a third of gaussian's time; tests/test_zo.py covers both
    return config

  config = config_for("full")
  model = models.load_for(config.model)
  data = pipeline.load_few_shot(config.data, model.tokenizer, config.seed, config.model.classifier)
  return family, config_for, model, data


def run_steps(config, model, data, steps=3):
  """(method, tree before the last refresh-free stretch, final state, losses) after `steps` jitted train
  steps of config.method, with the method's refresh (SpIEL's prune/regrow, LISA's fold and resampling)
  before step 2 as train.py calls it."""
  batch_at = lambda i: {**pipeline.train_batch(data.train, i, config.train.batch_size, 0), **data.prompts}
  run = trainer.setup(
    config, model, batch_at, {**pipeline.whole(data.train), **data.prompts}, total_steps=10, rng=jax.random.key(0)
  )
  method, loss_fn = run.method, run.loss_fn
  state = TrainState.create(run.tree, method.tx, 0)
  initial = jax.tree_util.tree_map(np.array, state.params)
  step = jax.jit(lambda s, b: step_lib.train_step(s, b, method=method, loss_fn=loss_fn))
  losses = []
  for i in range(steps):
    if method.refresh and i == 2:
      state = method.refresh(state, dense_grad_fn(loss_fn), batch_at, steps)
      initial = jax.tree_util.tree_map(np.array, state.params)  # refreshes fold and move masks by design
    state, metrics = step(state, batch_at(i))
    losses.append(float(metrics["train/loss"]))
  return method, initial, state, losses


@pytest.mark.parametrize("method_name", METHODS)
def test_every_method_trains_its_leaves_on_every_family(family_setup, method_name):
  family, config_for, model, data = family_setup
  config = config_for(method_name)
  if method_name == "bitfit" and family == "llama":
    with pytest.raises(ConfigError, match="bitfit's bias pattern.*matches no parameter"):
      run_steps(config, model, data)
    return  # Llama has no bias terms: BitFit has nothing to train, and says so
  method, initial, state, losses = run_steps(config, model, data)
  assert np.all(np.isfinite(losses)), losses
  labels = method.labels(state.params)
  moved = frozen_moved = 0
  for before, after, label in zip(
    jax.tree_util.tree_leaves(initial), jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(labels)
  ):
    changed = not np.array_equal(before, np.asarray(after))
    moved += changed and label == masks.TRAIN
    frozen_moved += changed and label == masks.FREEZE
  assert moved >= 1 and frozen_moved == 0


def test_head_starts_at_the_zero_shot_logits(family_setup):
  """The head method's initial linear head reproduces the prompt classifier's logits (mlm exactly; causal
  with one-token label words up to the per-row log-normaliser, which softmax over classes ignores)."""
  family, config_for, model, data = family_setup
  config = config_for("head")
  classify = classifier.make_classifier(model.module, config.model.classifier)
  batch = {**pipeline.whole(data.dev), **data.prompts}
  zero_shot = np.asarray(classify.logits({"model": model.params}, batch))
  kernel, bias = classify.zero_shot_head(model.params, batch)
  with_head = np.asarray(classify.logits({"model": model.params, "head": {"kernel": kernel, "bias": bias}}, batch))
  if config.model.classifier == "causal":
    zero_shot, with_head = (jax.nn.log_softmax(x, -1) for x in (zero_shot, with_head))
  np.testing.assert_allclose(with_head, zero_shot, atol=2e-4)


def test_fine_tune_then_export_gives_transformers_the_same_logits(family_setup, tmp_path):
  """Import -> LoRA steps -> merge (adapters folded) -> export -> transformers -> the same logits."""
  import torch  # test-only reference (make install-test installs it)
  import transformers

  family, config_for, model, data = family_setup
  method, _, state, _ = run_steps(config_for("lora"), model, data, steps=3)
  merged = method.merge(state.params)["model"]
  models.export(model, merged, str(tmp_path))
  auto = transformers.AutoModelForMaskedLM if family in ("bert", "roberta") else transformers.AutoModelForCausalLM
  reference = auto.from_pretrained(tmp_path).eval()
  ids, mask = (x.reshape(-1, x.shape[-1])[:6] for x in (data.dev.input_ids, data.dev.attention_mask))
  with torch.no_grad():
    theirs = reference(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.numpy()
  ours = np.asarray(model.module.apply({"params": state.params["model"]}, ids, mask, output="logits"))
  real = mask.astype(bool)
  assert np.abs(ours[real] - theirs[real]).max() <= 1e-4


@pytest.fixture(scope="module")
def low_precision(family_setup):
  """The family's tiny checkpoint with bfloat16 weights and compute (float16 for OPT, as MeZO loads it)."""
  family, config_for, model, data = family_setup
  dtype = "float16" if family == "opt" else "bfloat16"
  config = config_for("mezo")
  config.model.param_dtype = config.model.compute_dtype = dtype
  return config, models.load_for(config.model)


def test_low_precision_weights_give_float32_logits_close_to_float32(family_setup, low_precision):
  family, config_for, model, data = family_setup
  config, low = low_precision
  assert {x.dtype for x in jax.tree_util.tree_leaves(low.params)} == {np.dtype(config.model.param_dtype)}
  classify = lambda m: classifier.make_classifier(m.module, config.model.classifier).logits
  batch = {**pipeline.whole(data.dev), **data.prompts}
  reference = np.asarray(classify(model)({"model": model.params}, batch))
  logits = classify(low)({"model": low.params}, batch)
  assert logits.dtype == np.float32
  assert np.abs(np.asarray(logits) - reference).max() <= 0.05 * max(1.0, np.abs(reference).max())


def test_zeroth_order_steps_in_low_precision_move_the_weights(family_setup, low_precision):
  """MeZO on bfloat16/float16 weights: the +-eps losses differ (the perturbation is formed in float32
  and rounded once), and updates far below the weights' spacing still move them (stochastic rounding)."""
  family, _, _, data = family_setup
  config, low = low_precision
  method, initial, state, losses = run_steps(config, low, data, steps=3)
  assert np.all(np.isfinite(losses))
  changed = [
    np.mean(np.asarray(a, np.float32) != np.asarray(b, np.float32))
    for a, b in zip(jax.tree_util.tree_leaves(initial), jax.tree_util.tree_leaves(state.params))
  ]
  assert max(changed) > 0.01, changed  # lr 1e-5 x |g| is far below bf16 spacing: nearest rounding moves nothing
  config = config.copy_and_resolve_references()
  config.zo.eps = 1e-6
  with pytest.raises(ConfigError, match=r"zo.eps=1e-06 rounds away"):
    run_steps(config, low, data, steps=1)


def test_stochastic_rounding_is_unbiased_where_nearest_rounding_loses_the_update():
  import jax.numpy as jnp

  weights = jnp.full((200_000,), 1.0, jnp.bfloat16)  # spacing above 1.0 is 2^-7
  update = 1e-4
  nearest = (weights.astype(jnp.float32) + update).astype(jnp.bfloat16)
  assert np.all(np.asarray(nearest) == 1.0)
  rounded = masks.stochastic_round(weights.astype(jnp.float32) + update, jnp.bfloat16, jax.random.key(0))
  values = np.asarray(rounded, np.float32)
  assert set(np.unique(values)) == {1.0, 1.0 + 2**-7}
  p = update / 2**-7
  standard_error = 2**-7 * np.sqrt(p * (1 - p) / values.size)
  assert abs(values.mean() - (1.0 + update)) < 5 * standard_error


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_stochastic_rounding_lands_on_a_neighbour_with_the_probability_that_keeps_the_mean(dtype):
  """Over both signs and every binade the dtype has (float16's subnormals and the range below its smallest
  one included): each result is one of x's two neighbours in the dtype, and the mean of 4000 roundings of
  x sits within 5 standard errors of x. NaN and infinities pass through."""
  import jax.numpy as jnp

  info = jnp.finfo(dtype)
  exponents = np.random.default_rng(0).uniform(info.minexp - info.nmant - 2, 15, 1000)
  signs = np.where(np.arange(1000) % 2, 1.0, -1.0)
  x = (signs * 2.0**exponents).astype(np.float32)
  draws = 4000
  rounded = masks.stochastic_round(jnp.asarray(np.repeat(x[:, None], draws, 1)), dtype, jax.random.key(0))
  rounded = np.asarray(rounded.astype(jnp.float32), np.float64)
  # the neighbours in numpy (ml_dtypes): XLA's CPU backend flushes subnormal operands of its comparisons to zero
  nearest = x.astype(jnp.dtype(dtype))
  other = np.nextafter(nearest, np.where(nearest.astype(np.float32) < x, np.inf, -np.inf).astype(nearest.dtype))
  nearest, other = nearest.astype(np.float64), other.astype(np.float64)
  assert np.all((rounded == nearest[:, None]) | (rounded == other[:, None]))
  gap = np.abs(other - nearest)
  p = np.abs(x - nearest) / np.where(gap > 0, gap, 1)
  standard_error = gap * np.sqrt(np.maximum(p * (1 - p), 1 / draws) / draws)
  assert np.all(np.abs(rounded.mean(1) - x) < 5 * standard_error + 1e-12 * np.abs(x))
  assert 0.05 < np.mean(rounded != nearest[:, None]) < 0.45  # both neighbours are taken
  special = jnp.array([np.nan, np.inf, -np.inf, 0.0], jnp.float32)
  out = np.asarray(masks.stochastic_round(special, dtype, jax.random.key(1)).astype(jnp.float32))
  assert np.isnan(out[0]) and out[1] == np.inf and out[2] == -np.inf and out[3] == 0.0


def test_the_rounding_dither_is_uniform_and_independent_across_entries_and_keys():
  """The hashed bits stochastic rounding adds: their low 16 (added below float32's cut) and top 24 (compared
  below float16's smallest subnormal), read as uniforms over 2^20 entries of a 2-d leaf: 16 equal bins each
  hold 1/16 within 5 standard errors, neighbouring entries (along either axis) and two keys are
  uncorrelated (|r| < 5/sqrt(n)), and the draws fill [0, 1)."""
  bits = np.asarray(masks.rounding_bits(jax.random.key(0), (1024, 1024)))
  other_bits = np.asarray(masks.rounding_bits(jax.random.key(1), (1024, 1024)))
  for as_uniform, levels in ((lambda b: (b & 0xFFFF) / 2**16, 2**16), (lambda b: (b >> 8) / 2**24, 2**24)):
    u, other = as_uniform(bits), as_uniform(other_bits)
    n = u.size
    counts = np.histogram(u, bins=16, range=(0, 1))[0] / n
    assert np.all(np.abs(counts - 1 / 16) < 5 * np.sqrt((1 / 16) * (15 / 16) / n)), counts
    bound = 5 / np.sqrt(n)
    for a, b in ((u[:, 1:], u[:, :-1]), (u[1:], u[:-1]), (u, other)):
      assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < bound
    assert u.min() >= 0 and u.max() < 1 and len(np.unique(u)) > 0.9 * min(n, levels)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_keeps_each_entry_with_one_minus_the_rate_independently_and_keeps_the_mean(rate):
  """The models' dropout (a keyed hash per entry, models.layers.keep_mask): over 2^20 entries the kept
  fraction is 1 - rate within 5 standard errors, for a Python rate and a traced one (LoRA's lora_dropout);
  neighbours along either axis and two keys are uncorrelated (|r| < 5/sqrt(n)); the kept entries are
  scaled by 1 / (1 - rate), so the mean is kept; the module draws from the "dropout" stream, and eval mode
  and rate 0 are the identity."""
  key, shape = jax.random.key(3), (1024, 1024)
  keep = np.asarray(models.layers.keep_mask(key, rate, shape), np.float64)
  traced = np.asarray(jax.jit(lambda r: models.layers.keep_mask(key, r, shape))(np.float32(rate)), np.float64)
  other = np.asarray(models.layers.keep_mask(jax.random.key(4), rate, shape), np.float64)
  n = keep.size
  for mask in (keep, traced):
    assert abs(mask.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n), mask.mean()
  np.testing.assert_array_equal(traced, keep)
  for a, b in ((keep[:, 1:], keep[:, :-1]), (keep[1:], keep[:-1]), (keep, other)):
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 5 / np.sqrt(n)
  x = np.full(shape, 2.0, np.float32)
  dropped = np.asarray(models.layers.dropout(x, rate, key))
  np.testing.assert_allclose(dropped, np.where(keep > 0, 2.0 / (1 - rate), 0.0), rtol=1e-6)
  assert abs(dropped.mean() - 2.0) < 5 * 2.0 / (1 - rate) * np.sqrt(rate * (1 - rate) / n)
  layer = lambda deterministic, r: models.layers.Dropout(r, deterministic)
  assert layer(True, rate).apply({}, x) is x and layer(False, 0.0).apply({}, x) is x
  trained = np.asarray(layer(False, rate).apply({}, x, rngs={"dropout": key}))  # a key made from the stream's
  assert set(np.unique(trained)) == {0.0, np.float32(2.0 / (1 - rate))}
  assert abs((trained > 0).mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)


@pytest.mark.parametrize("family_setup", ["llama"], indirect=True)  # 2 key/value heads for 4 query heads
def test_whole_heads_on_grouped_query_attention_fail_clearly(family_setup):
  _, config_for, model, data = family_setup
  config = config_for("sparse")
  config.sparse.structure = "heads"
  with pytest.raises(ConfigError, match="grouped-query attention has fewer key/value heads"):
    run_steps(config, model, data, steps=1)


@pytest.mark.parametrize("method_name", ["full", "lora"])
def test_every_remat_policy_gives_the_gradients_of_none(family_setup, method_name):
  """train.remat recomputes the scanned layer's activations in the backward pass instead of keeping them:
  each policy's gradients equal those of keeping everything in float32: 1e-6 relative per entry, or 1e-5 of
  the largest entry. The recomputed layer is compiled into the backward's own fusions, so BERT's and
  RoBERTa's gradients differ by float32 rounding (up to 1.1e-6 of the whole gradient's norm; entries near
  cancellation by 4e-7 of a 0.36 maximum on CI's CPU) while OPT's and Llama's come out bit-identical. A
  policy that lost or mixed up a layer's activations is off by far more than that."""
  family, config_for, model, data = family_setup
  batch = {**pipeline.train_batch(data.train, 0, 4, 0), **data.prompts}

  def gradients(policy):
    config = config_for(method_name)
    config.train.remat = policy
    run = trainer.setup(
      config, model, lambda i: batch, {**pipeline.whole(data.train), **data.prompts}, rng=jax.random.key(0)
    )
    loss = lambda tree: run.loss_fn(run.method.view(tree), batch, None)[0]
    labels = run.method.labels(run.tree)
    recomputes = "remat2" in str(jax.make_jaxpr(jax.grad(loss))(run.tree))  # jax.checkpoint's primitive
    assert recomputes == (policy != "none"), policy  # the policy reached the scanned layer
    return masks.split(jax.jit(jax.grad(loss))(run.tree), labels)[0]

  expected = gradients("none")
  for policy in [p for p in models.transformer.REMAT_POLICIES if p != "none"]:
    got = gradients(policy)
    scale = max(float(np.max(np.abs(np.asarray(g)))) for g in expected)
    assert scale > 0
    for g, e in zip(got, expected):
      np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-6, atol=1e-5 * scale, err_msg=policy)
