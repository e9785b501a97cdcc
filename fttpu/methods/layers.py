"""Layer selection: train chosen transformer layers (surgical fine-tuning, SubTuning), or a
fresh random sample of them every few steps (LISA).

`layers.select` is either layer numbers ("4,5"; negative counts from the top) or a regex over
parameter paths ("layers/.*mlp|embedding"). Numbered layers train through deltas on their
slices of the layer-stacked weights (deltas.py), so optimizer state exists for those layers only.

`layers.sample=k` with `layers.every=K` is LISA (Pan et al. 2024): the embeddings always train,
and k transformer layers, resampled every K steps; at a resample the trained layers' deltas are
folded into the weights and the new layers start with fresh optimizer state.
"""

import re

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from fttpu.errors import ConfigError, check, check_regex
from fttpu.methods import deltas, masks
from fttpu.methods.base import is_added_leaf, make_method, register, register_section, scatter_deltas, wrap
from fttpu.sharding import to_host


def layer_indices(params, layers: list[int]) -> dict:
  """Flat indices of the given layers' slices in every layer-stacked weight."""
  out = {}
  for path, leaf in traverse_util.flatten_dict(params).items():
    if path[0] == "layers" and not is_added_leaf(path[-1]):
      per_layer = int(np.prod(leaf.shape[1:]))
      out[path] = np.concatenate([np.arange(l * per_layer, (l + 1) * per_layer) for l in sorted(layers)])
  return out


def parse_layers(select: str, num_layers: int) -> list[int] | None:
  """[4, 5] for "4,5" (or "-2,-1" of 6 layers); None when `select` is a regex."""
  if not re.fullmatch(r"\s*-?\d+\s*(,\s*-?\d+\s*)*", select):
    return None
  chosen = [int(x) for x in select.split(",")]
  bad = [x for x in chosen if not -num_layers <= x < num_layers]
  if bad:
    raise ConfigError(
      f"layers.select={select!r}: layers {bad} do not exist; valid: 0..{num_layers - 1} (or -{num_layers}..-1)"
    )
  return sorted({x % num_layers for x in chosen})


def sample_layers(key_data, step: int, num_layers: int, k: int) -> list[int]:
  key = jax.random.fold_in(jax.random.wrap_key_data(key_data), step)
  return sorted(int(x) for x in np.asarray(jax.random.permutation(key, num_layers))[:k])


def section() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    {
      "select": "-1",  # layer numbers "4,5" or a parameter-path regex "layers/.*mlp"
      "sample": 0,  # LISA: k layers trained at a time (0 = off, use select)
      "every": 20,  # LISA: resample every this many steps
    }
  )


def check_section(config) -> None:
  c = config.layers
  check(c.sample >= 0, "layers.sample", c.sample, "an integer >= 0 (0 = no LISA sampling)")
  check(c.every >= 1, "layers.every", c.every, "an integer >= 1")
  check_regex(c.select, "layers.select")


register_section("layers", section, check_section)


@register("layers", learning_rate=2e-5, zo_learning_rate=1e-4)
def make(config, model):
  c = config.layers
  num_layers = model.config.num_layers
  if c.sample:
    return make_lisa(c, num_layers)
  chosen = parse_layers(c.select, num_layers)
  if chosen is None:
    return make_method("layers", wrap, lambda tree: masks.label_matching(tree, c.select, "layers.select"))
  prepare = lambda params, rng, context: deltas.build(params, layer_indices(params, chosen))
  return make_method("layers", prepare, deltas.labels)


def make_lisa(c, num_layers: int):
  if not 1 <= c.sample <= num_layers:
    raise ConfigError(f"layers.sample={c.sample} is invalid; valid: 1..{num_layers} (the model's layers)")

  def labels(tree):
    outside_layers = lambda path: masks.path_name(path).startswith("model/") and path[1].key != "layers"
    return jax.tree_util.tree_map_with_path(
      lambda path, label: masks.TRAIN if outside_layers(path) else label, deltas.labels(tree)
    )

  def prepare(params, rng, context):
    return deltas.build(params, layer_indices(params, sample_layers(jax.random.key_data(rng), 0, num_layers, c.sample)))

  def refresh(state, dense_grad, batch_at, total_steps):
    """Fold the sampled layers' deltas into the weights; sample new layers with fresh state."""
    step = int(jax.device_get(state.step))
    tree = scatter_deltas(to_host(state.params))
    tree = deltas.build(
      jax.tree_util.tree_map(np.asarray, tree["model"]),
      layer_indices(tree["model"], sample_layers(np.asarray(state.rng), step, num_layers, c.sample)),
    )
    fresh = {path: np.full(len(d["index"]), -1) for path, d in deltas.flat_deltas(tree).items()}
    return state.replace(params=tree, opt_state=deltas.remap_optimizer_state(to_host(state.opt_state), fresh))

  return make_method("layers", prepare, labels, refresh=refresh, refresh_every=c.every)
