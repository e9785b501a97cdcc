"""Every update rule through the one train step: what trains, what stays, what is saved.

Mechanics run on a tiny random BERT (fast to compile); claims about the real model
(LoRA vs PEFT, merged outputs, artifacts reproducing accuracy) use the MiniLM checkpoint.
"""

import functools

import chex
import jax
import numpy as np
import pytest

from configs import fewshot
from fttpu import errors
from fttpu import classifier, methods, step as step_lib, trainer
from fttpu.methods import base, deltas, lora, masks, sparse
from fttpu.state import TrainState
from tests.conftest import tiny_batch

# Every method that trains, with the settings that select its variants. (The other sparse
# selectors build the same kind of tree as "sparse"; test_sparse_selectors checks their choices.)
VARIANTS = {
  "full": {},
  "bitfit": {},
  "prefix": {},
  "head": {},
  "lora": {},
  "lora_dora_pissa": {"lora.dora": True, "lora.pissa": True, "lora.dropout": 0.1},
  "layers": {"layers.select": "1"},
  "layers_regex": {"layers.select": "layers/mlp_"},
  "lisa": {"layers.sample": 1, "layers.every": 2},
  "sparse": {},
  "sparse_heads": {"sparse.structure": "heads", "sparse.density": 0.25},
  "spiel": {"spiel.density": 0.05, "spiel.every": 2},
}


def make_config(variant: str, **extra):
  name = variant.split("_")[0].replace("lisa", "layers")
  config = fewshot.get_config(f"method={name}")
  for key, value in {**VARIANTS.get(variant, {}), **extra}.items():
    section, field = key.split(".")
    config[section][field] = value
  methods.validate(config)
  return config


def build(model, config, batches=tiny_batch, weight_decay=None, style="similarity"):
  """(method, prepared tree, loss_fn) for `config` on `model` with batches(step), classified by `style`,
  through the trainer's one setup."""
  config = config.copy_and_resolve_references()
  if weight_decay is not None:
    config.optimizer.weight_decay = weight_decay
  config.model.classifier, config.model.logit_scale = style, 20.0
  run = trainer.setup(config, model, batches, batches(0), total_steps=100, rng=jax.random.key(0))
  return run.method, run.tree, run.loss_fn


def train(method, tree, loss_fn, steps, batches=tiny_batch, refresh=True):
  """`steps` train steps from `tree` (with the method's refreshes unless refresh=False)."""
  step = jax.jit(functools.partial(step_lib.train_step, method=method, loss_fn=loss_fn))
  dense_grad = base.dense_grad_fn(loss_fn)
  state = TrainState.create(tree, method.tx, 0)
  for i in range(steps):
    if refresh and method.refresh and i and i % method.refresh_every == 0:
      state = method.refresh(state, dense_grad, batches, steps)
    state, metrics = step(state, batches(i))
    assert np.isfinite(metrics["train/loss"])
  return state


def state_entries(opt_state) -> int:
  return sum(np.size(x) for x in jax.tree_util.tree_leaves(opt_state) if np.ndim(x) > 0)


# Variants whose frozen leaves tests/test_family_methods.py also checks (the same labels) and whose own
# mechanics the tests below check: make test-all.
SLOW_VARIANTS = ("layers_regex", "lisa", "sparse_heads", "spiel")


@pytest.mark.parametrize(
  "variant", [pytest.param(v, marks=pytest.mark.slow) if v in SLOW_VARIANTS else v for v in sorted(VARIANTS)]
)
def test_frozen_leaves_stay_bit_identical_and_state_matches_trainable_count(tiny, variant):
  method, tree, loss_fn = build(tiny, make_config(variant))
  labels = method.labels(tree)
  trainable = masks.count_trainable(tree, labels)
  assert 0 < trainable
  assert state_entries(method.tx.init(tree)) == 2 * trainable  # Adam's two moments per trainable entry only
  state = train(method, tree, loss_fn, 3, refresh=False)  # (refreshes move indices: tested below)
  changed, frozen_changed = 0, []
  for (path, before), after, label in zip(
    jax.tree_util.tree_leaves_with_path(tree),
    jax.tree_util.tree_leaves(state.params),
    jax.tree_util.tree_leaves(labels),
  ):
    same = np.asarray(before).tobytes() == np.asarray(after).tobytes()
    if label == masks.FREEZE and not same:
      frozen_changed.append(masks.path_name(path))
    changed += label == masks.TRAIN and not same
  assert not frozen_changed, f"{variant}: frozen leaves changed: {frozen_changed}"
  assert changed, f"{variant}: no trainable leaf changed"


def test_what_each_method_trains(tiny):
  """The trainable sets are the ones the methods promise."""
  trainable_paths = lambda variant: {
    masks.path_name(p)
    for p, l in jax.tree_util.tree_leaves_with_path((lambda m, t: m.labels(t))(*build(tiny, make_config(variant))[:2]))
    if l == masks.TRAIN
  }
  assert trainable_paths("bitfit") == {p for p in masks.leaf_paths({"model": tiny.params}) if p.endswith("/bias")}
  assert trainable_paths("head") == {"head/kernel", "head/bias"}
  assert trainable_paths("lora") == {f"model/layers/{m}/lora_{x}" for m in ("query", "value") for x in "ab"}
  assert trainable_paths("prefix") == {"model/layers/prefix_key", "model/layers/prefix_value"}
  assert trainable_paths("layers_regex") == {
    f"model/layers/mlp_{m}/{p}"
    for m, p in [
      ("in", "kernel"),
      ("in", "bias"),
      ("out", "kernel"),
      ("out", "bias"),
      ("norm", "scale"),
      ("norm", "bias"),
    ]
  }
  # layers.select=1: every layer weight's slice of layer 1 (of 2), nothing of layer 0.
  _, tree, _ = build(tiny, make_config("layers"))
  for path, delta in deltas.flat_deltas(tree).items():
    per_layer = tiny.params["layers"][path[1]][path[2]][0].size
    np.testing.assert_array_equal(delta["index"], np.arange(per_layer, 2 * per_layer))


def test_sparse_keeps_density_of_the_largest_scores(tiny):
  _, tree, _ = build(tiny, make_config("sparse", **{"sparse.density": 0.1}))
  for path, delta in deltas.flat_deltas(tree).items():
    weight = np.abs(sparse._get(tiny.params, path)).reshape(-1)
    assert len(delta["index"]) == round(0.1 * weight.size)
    assert weight[delta["index"]].min() >= np.delete(weight, delta["index"]).max()  # magnitude: the top 10%


def test_sparse_selectors_choose_by_their_scores(tiny):
  density = 0.05
  # gradient: the top Fisher entries (squared gradients summed over the calibration batches).
  config = make_config(
    "sparse", **{"sparse.selector": "gradient", "sparse.calibration_batches": 3, "sparse.density": density}
  )
  _, tree, loss_fn = build(tiny, config)
  grad = jax.grad(lambda m, b: loss_fn({"model": m}, b, None)[0])
  fisher = jax.tree_util.tree_map(
    lambda *g: sum(np.square(np.asarray(x)) for x in g), *[grad(tiny.params, tiny_batch(i)) for i in range(3)]
  )
  for path, delta in deltas.flat_deltas(tree).items():
    scores = sparse._get(fisher, path).reshape(-1)
    assert len(delta["index"]) == round(density * scores.size)
    assert scores[delta["index"]].min() >= np.delete(scores, delta["index"]).max() * (1 - 1e-5)
  # lottery: trains fully, keeps the top |moved|, and resets the weights to the pretrained ones.
  _, tree, _ = build(tiny, make_config("sparse", **{"sparse.selector": "lottery", "sparse.lottery_steps": 2}))
  for a, b in zip(jax.tree_util.tree_leaves(tree["model"]), jax.tree_util.tree_leaves(tiny.params)):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
  for path, delta in deltas.flat_deltas(tree).items():
    assert len(delta["index"]) == round(0.01 * sparse._get(tiny.params, path).size)
  # half: in every layer, exactly half of the six matrices, wholly.
  _, tree, _ = build(tiny, make_config("sparse", **{"sparse.selector": "half"}))
  per_layer = {0: 0, 1: 0}
  for path, delta in deltas.flat_deltas(tree).items():
    size = tiny.params["layers"][path[1]]["kernel"][0].size
    for layer in (0, 1):
      inside = np.sum((delta["index"] >= layer * size) & (delta["index"] < (layer + 1) * size))
      assert inside in (0, size)
      per_layer[layer] += inside == size
  assert per_layer == {0: 3, 1: 3}
  # channels: whole FFN channels, the same ones in mlp_in (columns) and mlp_out (rows).
  _, tree, _ = build(
    tiny, make_config("sparse", **{"sparse.structure": "channels", "sparse.selector": "random", "sparse.density": 0.1})
  )
  chosen = {}
  for path, delta in deltas.flat_deltas(tree).items():
    ids = sparse.unit_ids(tiny.params["layers"][path[1]]["kernel"].shape, sparse.STRUCTURES["channels"][path[1]])
    chosen[path[1]] = np.unique(ids.reshape(-1)[delta["index"]])
    assert len(delta["index"]) == np.isin(ids, chosen[path[1]]).sum()
  np.testing.assert_array_equal(chosen["mlp_in"], chosen["mlp_out"])
  assert len(chosen["mlp_in"]) == round(0.1 * 2 * 64)


def test_structured_sparsity_trains_whole_heads_across_query_key_value_and_output(tiny):
  _, tree, _ = build(tiny, make_config("sparse_heads"))
  units = {}
  for path, delta in deltas.flat_deltas(tree).items():
    shape = tiny.params["layers"][path[1]]["kernel"].shape
    ids = sparse.unit_ids(shape, sparse.STRUCTURES["heads"][path[1]]).reshape(-1)
    chosen = np.unique(ids[delta["index"]])
    assert len(delta["index"]) == np.isin(ids, chosen).sum()  # whole units only
    units[path[1]] = set(chosen.tolist())
  assert set(units) == {"query", "key", "value", "attention_out"}
  assert len({frozenset(u) for u in units.values()}) == 1 and len(units["query"]) == 2  # 25% of 2 x 4 heads


def test_prune_and_regrow_replaces_smallest_deltas_by_largest_accumulated_gradients():
  index = np.array([1, 4, 6, 9], np.int32)
  value = np.array([0.5, -0.01, 0.3, 0.02], np.float32)  # entries 4 and 9 are the smallest
  gradient = np.zeros(12)
  gradient[[0, 4, 7, 9, 11]] = [0.1, 9.0, -5.0, 8.0, 3.0]  # 4 and 9 are trained already: not candidates
  new_index, source = sparse.prune_and_regrow(index, value, gradient, replace=2)
  np.testing.assert_array_equal(new_index, [1, 6, 7, 11])
  np.testing.assert_array_equal(source, [0, 2, -1, -1])


def test_spiel_keeps_the_count_and_moves_entries_through_refreshes(tiny):
  config = make_config("spiel", **{"spiel.replace_fraction": 0.5})
  method, tree, loss_fn = build(tiny, config)
  counts = {p: len(d["index"]) for p, d in deltas.flat_deltas(tree).items()}
  state = train(method, tree, loss_fn, 2)
  dense_grad = base.dense_grad_fn(loss_fn)
  before = deltas.flat_deltas(jax.device_get(state.params))
  refreshed = method.refresh(state, dense_grad, tiny_batch, 10)
  after = deltas.flat_deltas(refreshed.params)
  viewed = base.scatter_deltas(jax.device_get(state.params))["model"]
  accumulated = sum(
    np.asarray(sparse._get(dense_grad(viewed, tiny_batch(2 + j)), p)) for j in range(4) for p in [next(iter(after))]
  )
  for path in after:
    assert len(after[path]["index"]) == counts[path] and len(np.unique(after[path]["index"])) == counts[path]
    replaced = round(sparse.replaced_fraction(0.5, 2, 10) * counts[path])
    grown = np.setdiff1d(after[path]["index"], before[path]["index"])
    assert len(grown) == replaced > 0
    assert not after[path]["value"][np.isin(after[path]["index"], grown)].any()  # grown deltas start at 0
  path = next(iter(after))  # the grown entries are the top |accumulated gradient| outside the old set
  candidates = np.abs(accumulated.reshape(-1))
  candidates[before[path]["index"]] = -1
  grown = np.setdiff1d(after[path]["index"], before[path]["index"])
  assert candidates[grown].min() >= np.delete(candidates, grown).max()
  # The optimizer state follows its entries; grown entries start with zero moments.
  suffix = "delta/" + "/".join(path) + "/value"
  moments = [
    np.asarray(x)
    for p, x in jax.tree_util.tree_leaves_with_path(refreshed.opt_state)
    if masks.path_name(p).endswith(suffix)
  ]
  old_moments = [
    np.asarray(x)
    for p, x in jax.tree_util.tree_leaves_with_path(state.opt_state)
    if masks.path_name(p).endswith(suffix)
  ]
  kept = np.isin(after[path]["index"], before[path]["index"])
  assert len(moments) == 2  # Adam's mu and nu
  for new, old in zip(moments, old_moments):
    assert not new[~kept].any()
    np.testing.assert_array_equal(new[kept], old[np.isin(before[path]["index"], after[path]["index"])])
  train(method, refreshed.params, loss_fn, 1)  # the refreshed tree trains with the same compiled shapes


def test_lisa_folds_trained_layers_and_samples_new_ones(tiny):
  method, tree, loss_fn = build(tiny, make_config("lisa", **{"layers.every": 1}))
  state = train(method, tree, loss_fn, 1)
  trained = base.scatter_deltas(jax.device_get(state.params))["model"]
  refreshed = method.refresh(state, None, tiny_batch, 10)
  folded = base.scatter_deltas(refreshed.params)["model"]
  chex.assert_trees_all_equal(jax.device_get(trained), jax.device_get(folded))  # folding loses nothing
  assert all(not d["value"].any() for d in deltas.flat_deltas(refreshed.params).values())


@pytest.mark.parametrize("variant", ["lora", "lora_dora_pissa"])
def test_lora_merged_equals_unmerged(tiny, variant):
  method, tree, loss_fn = build(tiny, make_config(variant, **{"lora.dropout": 0.0}))
  rng = np.random.default_rng(1)
  tree = jax.tree_util.tree_map_with_path(  # nonzero adapters and magnitudes, as after training
    lambda p, x: (
      x + rng.normal(0, 0.05, x.shape).astype(x.dtype)
      if masks.path_name(p).endswith(("lora_a", "lora_b", "dora_magnitude"))
      else x
    ),
    tree,
  )
  logits_fn = classifier.make_classifier(tiny.module, "similarity", 20.0).logits
  unmerged = np.asarray(logits_fn(tree, tiny_batch(3)))
  merged_tree = method.merge(tree)
  assert not any(k.startswith("lora") for k in masks.leaf_paths(merged_tree))
  assert np.abs(np.asarray(logits_fn(merged_tree, tiny_batch(3))) - unmerged).max() <= 1e-5


def test_lora_with_zero_b_is_exactly_the_base_model(minilm, sst2_16shot):
  method, tree, _ = build(
    minilm, make_config("lora"), batches=lambda s: {**{k: v[:8] for k, v in pipeline_batch(sst2_16shot).items()}}
  )
  logits_fn = jax.jit(classifier.make_classifier(minilm.module, "similarity", 20.0).logits)
  batch = pipeline_batch(sst2_16shot)
  np.testing.assert_array_equal(
    np.asarray(logits_fn(tree, batch)), np.asarray(logits_fn({"model": minilm.params}, batch))
  )


def pipeline_batch(data) -> dict:
  from fttpu.data import pipeline

  return {**pipeline.whole(data.train), **data.prompts}


def test_pissa_starts_at_the_base_model_and_its_artifact_adds_onto_the_pretrained_weights(tiny):
  method, tree, loss_fn = build(tiny, make_config("lora", **{"lora.pissa": True, "lora.rank": 4}))
  logits_fn = classifier.make_classifier(tiny.module, "similarity", 20.0).logits
  base_logits = np.asarray(logits_fn({"model": tiny.params}, tiny_batch(5)))
  assert np.abs(np.asarray(logits_fn(tree, tiny_batch(5))) - base_logits).max() <= 1e-5
  state = train(method, tree, loss_fn, 3)
  artifact = jax.device_get(method.artifact(state.params))
  assert artifact["model"]["layers"]["query"]["lora_a"].shape[-1] == 8  # rank 2r: [A, -A0]
  rebuilt = lora.merge(
    {
      "model": {
        **tiny.params,
        "layers": {k: {**v, **artifact["model"]["layers"].get(k, {})} for k, v in tiny.params["layers"].items()},
      }
    }
  )
  chex.assert_trees_all_close(jax.device_get(method.merge(state.params)), jax.device_get(rebuilt), atol=2e-6, rtol=0)


def test_head_starts_at_zero_shot_and_lbfgs_probe_matches_scikit_learn(tiny):
  from sklearn.linear_model import LogisticRegression

  logits_fn = classifier.make_classifier(tiny.module, "similarity", 20.0).logits
  _, tree, _ = build(tiny, make_config("head"))  # label descriptions of tiny_batch(0)
  batch = {**tiny_batch(4), **{k: v for k, v in tiny_batch(0).items() if k.startswith("label_")}}
  np.testing.assert_allclose(
    np.asarray(logits_fn(tree, batch)), np.asarray(logits_fn({"model": tiny.params}, batch)), atol=1e-5
  )
  three_classes = {
    **tiny_batch(7, size=40),
    "labels": np.random.default_rng(7).integers(0, 3, 40).astype(np.int32),
    "label_input_ids": np.arange(1000, 1015, dtype=np.int32).reshape(3, 5),
    "label_attention_mask": np.ones((3, 5), np.int32),
  }
  method, tree, _ = build(tiny, make_config("head", **{"head.solver": "lbfgs"}), batches=lambda step: three_classes)
  assert not method.trains
  features = np.asarray(
    classifier.make_embed_fn(tiny.module)(tiny.params, three_classes["input_ids"], three_classes["attention_mask"])
  )
  reference = LogisticRegression(C=1.0, tol=1e-10, max_iter=10000).fit(features, three_classes["labels"])
  ours = jax.nn.softmax(features @ np.asarray(tree["head"]["kernel"]) + np.asarray(tree["head"]["bias"]))
  np.testing.assert_allclose(ours, reference.predict_proba(features), atol=2e-3)  # same multinomial L2 objective


@pytest.mark.parametrize(
  "key,value,message",
  [
    ("lora.rank", 0, r"config.lora.rank=0 is invalid; valid: an integer >= 1"),
    ("sparse.density", 0.0, r"config.sparse.density=0.0 is invalid; valid: a fraction in \(0, 1\]"),
    ("spiel.density", 1.5, r"config.spiel.density=1.5 is invalid; valid: a fraction in \(0, 1\]"),
    ("sparse.selector", "fisher", r"sparse.selector='fisher' is invalid; valid: \['random', 'magnitude'"),
    ("sparse.structure", "rows", r"valid: \['none', 'heads', 'channels'\]"),
    ("lora.targets", "(", r"lora.targets='\(' is not a valid regular expression"),
    ("head.solver", "sgd", r"valid: \['adam', 'lbfgs'\]"),
    (
      "zo.base",
      "spiel",
      r"config.zo.base='spiel' is invalid; valid: \['bitfit', 'full', 'head', 'layers', 'lora', 'prefix', 'sparse'\]",
    ),
    ("zo.noise", "uniform", r"config.zo.noise='uniform' is invalid; valid: \['gaussian', 'rademacher'\]"),
    ("zo.objective", "f1", r"config.zo.objective='f1' is invalid; valid: \['loss', 'accuracy'\]"),
    ("zo.samples", 0, r"config.zo.samples=0 is invalid; valid: an integer >= 1"),
  ],
)
def test_invalid_settings_fail_at_start_up_naming_the_valid_choices(key, value, message):
  with pytest.raises(errors.ConfigError, match=message):
    make_config("full", **{key: value})


@pytest.mark.parametrize(
  "variant,key,value,message",
  [
    (
      "lora",
      "lora.targets",
      "attention_in",
      r"lora.targets='attention_in' matches no projection; valid projections: "
      r"\['layers/attention_out', 'layers/key'",
    ),
    ("sparse", "sparse.targets", "nothing", r"sparse.targets='nothing' matches no parameter; parameter paths are"),
    ("layers", "layers.select", "7", r"layers.select='7': layers \[7\] do not exist; valid: 0..1"),
    ("lisa", "layers.sample", 3, r"layers.sample=3 is invalid; valid: 1..2"),
  ],
)
def test_settings_that_do_not_fit_the_model_fail_before_compiling(tiny, variant, key, value, message):
  with pytest.raises(errors.ConfigError, match=message):
    build(tiny, make_config(variant, **{key: value}))


def test_unknown_method_lists_the_valid_ones(tiny):
  config = fewshot.get_config("method=full")
  config.method = "adapter"
  with pytest.raises(errors.ConfigError, match=r"unknown method 'adapter'; valid: \['bitfit', 'full', 'head'"):
    methods.get_method(config, None, tiny)
