"""Sparse fine-tuning: a fixed mask (`sparse`) or a dynamic one (`spiel`), stored as deltas.

`sparse` chooses, once and per target weight, the entries at density d (deltas.py):
  random     uniformly at random
  magnitude  largest |w|
  gradient   largest Fisher information (sum of squared gradients over a few batches, as FISH)
  lottery    largest |w_ft - w0| after a short full fine-tuning phase (LT-SFT); then reset to w0
  half       a random half of the target matrices of every layer, wholly (HFT)
`sparse.structure=heads|channels` chooses whole attention heads (their query/key/value/output
slices together) or FFN channels (mlp_in column with mlp_out row), scored by the selector
summed over the unit (S2FT style).

`spiel` (SpIEL, Ansell et al. 2024) keeps d of each target weight's entries trainable; every
`spiel.every` steps it drops the entries with the smallest |delta| (their weights return to the
pretrained values) and grows as many new ones where the gradient accumulated over
`spiel.accumulate` batches is largest. The replaced fraction decays with a cosine to 0 at the
end of training; the count per weight stays exactly the same.
"""

import jax
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from fttpu.errors import ConfigError, check, check_regex
from fttpu.methods import deltas
from fttpu.methods.base import dense_grad_fn, make_method, register, register_section, scatter_deltas
from fttpu.sharding import to_host

SELECTORS = ("random", "magnitude", "gradient", "lottery", "half")
STRUCTURES = {
  "none": None,  # per layer-stacked weight: which axis indexes heads / channels
  "heads": {"query": 2, "key": 2, "value": 2, "attention_out": 1},
  "channels": {"mlp_in": 2, "mlp_out": 1},
}


def lottery_scores(params, context, steps: int, rng) -> dict:
  """|w - w0| after `steps` steps of full fine-tuning with the configured optimizer (LT-SFT)."""
  tx = context.optimizer

  @jax.jit
  def step(model, opt_state, batch, rng):
    grads = jax.grad(lambda m: context.loss_fn({"model": m}, batch, rng)[0])(model)
    updates, opt_state = tx.update(grads, opt_state, model)
    return optax.apply_updates(model, updates), opt_state

  model, opt_state = params, tx.init(params)
  for i in range(steps):
    model, opt_state = step(model, opt_state, context.train_batch(i), jax.random.fold_in(rng, i))
  return jax.tree_util.tree_map(lambda a, b: np.abs(to_host(a) - to_host(b)), model, params)


def entry_scores(selector: str, params, paths, rng, context, config) -> dict:
  """A score per entry of each target weight; the largest scores are kept."""
  if selector == "random":
    return {p: _numpy_rng(rng, i).random(_get(params, p).shape) for i, p in enumerate(paths)}
  if selector == "magnitude":
    return {p: np.abs(to_host(_get(params, p))) for p in paths}
  if selector == "gradient":
    grad = dense_grad_fn(context.loss_fn)
    fisher = {p: 0.0 for p in paths}
    for i in range(config.calibration_batches):
      grads = grad(params, context.train_batch(i))
      fisher = {p: fisher[p] + np.square(to_host(_get(grads, p))) for p in paths}
    return fisher
  if selector == "lottery":
    moved = lottery_scores(params, context, config.lottery_steps, rng)
    return {p: _get(moved, p) for p in paths}
  raise ConfigError(f"sparse.selector={selector!r} is unknown; valid: {list(SELECTORS)}")


def _numpy_rng(rng, i: int) -> np.random.Generator:
  """A numpy generator seeded from a JAX key and a number (fast sampling of large index sets)."""
  return np.random.default_rng(np.asarray(jax.random.key_data(jax.random.fold_in(rng, i))))


def random_subset(rng, i: int, size: int, density: float) -> np.ndarray:
  """deltas.count(density, size) distinct flat indices drawn uniformly (memory of the subset, not of the weight)."""
  return _numpy_rng(rng, i).choice(size, deltas.count(density, size), replace=False)


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def unit_ids(shape, axis: int) -> np.ndarray:
  """For a layer-stacked weight, the id layer * units + unit of every entry (unit along `axis`)."""
  layer = np.arange(shape[0]).reshape((-1,) + (1,) * (len(shape) - 1))
  unit = np.arange(shape[axis]).reshape((-1,) + (1,) * (len(shape) - axis - 1))
  return np.broadcast_to(layer * shape[axis] + unit, shape)


def structured_indices(params, scores: dict, axes: dict, density: float) -> dict:
  """Flat indices of every entry of the top units (heads or channels), scored by summed entry scores."""
  counts = {"/".join(p): _get(params, p).shape[axes[p[-2]]] for p in scores}
  if len(set(counts.values())) > 1:
    raise ConfigError(
      f"sparse.structure: the weights scored together have different unit counts {counts} "
      "(grouped-query attention has fewer key/value heads than query heads); use "
      "sparse.structure=channels or none"
    )
  ids = {p: unit_ids(_get(params, p).shape, axes[p[-2]]) for p in scores}
  units = max(int(i.max()) + 1 for i in ids.values())
  unit_scores = sum(np.bincount(ids[p].reshape(-1), scores[p].reshape(-1), minlength=units) for p in scores)
  chosen = deltas.top(unit_scores, deltas.count(density, units))
  return {p: np.flatnonzero(np.isin(ids[p], chosen)) for p in scores}


def half_indices(params, paths, rng) -> dict:
  """HFT: in every layer, all entries of a random half of the target (layer-stacked) weights."""
  layers = _get(params, paths[0]).shape[0]
  chosen = {p: [] for p in paths}
  for layer in range(layers):
    order = np.asarray(jax.random.permutation(jax.random.fold_in(rng, layer), len(paths)))
    for i in order[: len(paths) // 2]:
      per_layer = _get(params, paths[i])[0].size
      chosen[paths[i]].append(np.arange(layer * per_layer, (layer + 1) * per_layer))
  return {p: np.concatenate(c) for p, c in chosen.items() if c}


def target_weights(params, config, structure) -> list[tuple]:
  if structure is None:
    return deltas.target_paths(params, config.targets, "sparse.targets")
  return [p for p in deltas.target_paths(params, r"layers/.*/kernel$", "sparse.targets") if p[-2] in structure]


def sparse_section() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    {
      "density": 0.01,  # fraction of each target weight's entries that train
      "selector": "magnitude",  # random | magnitude | gradient | lottery | half
      "structure": "none",  # none | heads | channels
      "targets": r"layers/.*/kernel$",  # regex over parameter paths
      "calibration_batches": 8,  # gradient: batches of squared gradients (Fisher)
      "lottery_steps": 50,  # lottery: steps of full fine-tuning before choosing
    }
  )


def spiel_section() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    {
      "density": 0.01,
      "targets": r"layers/.*/kernel$",
      "every": 20,  # steps between prune/regrow
      "accumulate": 4,  # batches of gradient accumulated to choose what grows
      "replace_fraction": 0.3,  # fraction replaced at the first refresh, cosine-decayed to 0
    }
  )


def check_density(config, section: str) -> None:
  c = config[section]
  check(0 < c.density <= 1, f"{section}.density", c.density, "a fraction in (0, 1]")
  check_regex(c.targets, f"{section}.targets")


def check_sparse(config) -> None:
  check_density(config, "sparse")
  s = config.sparse
  check(s.selector in SELECTORS, "sparse.selector", s.selector, str(list(SELECTORS)))
  check(s.structure in STRUCTURES, "sparse.structure", s.structure, str(list(STRUCTURES)))
  check(
    s.structure == "none" or s.selector != "half",
    "sparse.structure",
    s.structure,
    "'none' with selector 'half' (half picks whole matrices)",
  )
  check(s.calibration_batches >= 1, "sparse.calibration_batches", s.calibration_batches, "an integer >= 1")
  check(s.lottery_steps >= 1, "sparse.lottery_steps", s.lottery_steps, "an integer >= 1")


def check_spiel(config) -> None:
  check_density(config, "spiel")
  p = config.spiel
  check(p.every >= 1, "spiel.every", p.every, "an integer >= 1")
  check(p.accumulate >= 1, "spiel.accumulate", p.accumulate, "an integer >= 1")
  check(0 <= p.replace_fraction <= 1, "spiel.replace_fraction", p.replace_fraction, "a fraction in [0, 1]")


register_section("sparse", sparse_section, check_sparse)
register_section("spiel", spiel_section, check_spiel)


@register("sparse", learning_rate=5e-4, zo_learning_rate=1e-3)
def make(config, model):
  c = config.sparse
  structure = STRUCTURES[c.structure]

  def prepare(params, rng, context):
    paths = target_weights(params, c, structure)
    if c.selector == "half":
      return deltas.build(params, half_indices(params, paths, rng))
    if c.selector == "random" and structure is None:  # a uniform subset, drawn without scoring every entry
      return deltas.build(
        params, {p: random_subset(rng, i, _get(params, p).size, c.density) for i, p in enumerate(paths)}
      )
    scores = entry_scores(c.selector, params, paths, rng, context, c)
    if structure is not None:
      return deltas.build(params, structured_indices(params, scores, structure, c.density))
    return deltas.build(params, {p: deltas.top(s, deltas.count(c.density, s.size)) for p, s in scores.items()})

  return make_method("sparse", prepare, deltas.labels)


def replaced_fraction(initial: float, step: int, total_steps: int) -> float:
  """Cosine decay of the fraction of entries replaced at a refresh, from `initial` to 0."""
  return 0.5 * initial * (1.0 + np.cos(np.pi * min(step / max(total_steps, 1), 1.0)))


def prune_and_regrow(index: np.ndarray, value: np.ndarray, accumulated: np.ndarray, replace: int):
  """(new index, source) keeping len(index) entries: the `replace` smallest |value| go, the
  `replace` largest |accumulated| entries outside `index` come in. source[i] is the old position
  of new entry i, or -1 for a grown entry."""
  if replace == 0:
    return index, np.arange(len(index))
  keep = np.sort(np.argpartition(np.abs(value), replace)[replace:]) if replace < len(index) else np.array([], int)
  candidates = np.abs(accumulated.reshape(-1)).astype(np.float64)
  candidates[index] = -np.inf  # only entries not trained so far can grow
  grown = deltas.top(candidates, replace)
  new_index = np.concatenate([index[keep], grown])
  source = np.concatenate([keep, np.full(replace, -1)])
  order = np.argsort(new_index, kind="stable")
  return new_index[order].astype(np.int32), source[order]


@register("spiel", learning_rate=5e-4)
def make_spiel(config, model):
  c = config.spiel

  def prepare(params, rng, context):
    paths = deltas.target_paths(params, c.targets, "spiel.targets")
    return deltas.build(
      params, {p: random_subset(rng, i, _get(params, p).size, c.density) for i, p in enumerate(paths)}
    )

  def refresh(state, dense_grad, batch_at, total_steps):
    """Prune the smallest deltas and grow where the accumulated gradient is largest (host side)."""
    step = int(jax.device_get(state.step))
    tree = to_host(state.params)
    viewed = scatter_deltas(tree)["model"]
    flat = deltas.flat_deltas(tree)
    accumulated = {path: 0.0 for path in flat}  # of the target weights only
    for j in range(c.accumulate):
      grads = dense_grad(viewed, batch_at(step + j))
      accumulated = {path: total + to_host(_get(grads, path)) for path, total in accumulated.items()}
    fraction = replaced_fraction(c.replace_fraction, step, total_steps)
    sources = {}
    for path, delta in flat.items():
      replace = int(round(fraction * len(delta["index"])))
      new_index, source = prune_and_regrow(delta["index"], delta["value"], accumulated[path], replace)
      flat[path] = {
        "index": new_index,
        "value": np.where(source >= 0, delta["value"][np.maximum(source, 0)], 0).astype(np.float32),
      }
      sources[path] = source
    tree = {**tree, "delta": traverse_util.unflatten_dict(flat)}
    return state.replace(params=tree, opt_state=deltas.remap_optimizer_state(to_host(state.opt_state), sources))

  return make_method("spiel", prepare, deltas.labels, refresh=refresh, refresh_every=c.every)
