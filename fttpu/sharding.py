"""The device mesh, and where every array of a run lives on it.

  config.mesh            {"data": -1, "fsdp": 1, "tensor": 1}: axis sizes, -1 takes the remaining devices
  config.sharding_rules  the models' logical axis names -> mesh axes ("" = replicated), e.g.
                         embed -> fsdp (FSDP), heads/mlp/vocab -> tensor (Megatron: column-parallel
                         query/key/value/mlp_in, row-parallel attention_out/mlp_out)

Parameters take the logical names the models annotate (models.logical_axes); the leaves a method
adds take the names its module registers (fttpu.methods.base.register_added_leaves: LoRA A shares
the kernel's input axes, B its output axes); heads and sparse deltas are replicated. A dimension that does not divide its mesh axes is replicated with a
warning. Optimizer state follows the parameter it belongs to. Batches split over `data` and
`fsdp`; each process puts only its own rows on its own devices.
"""

import logging
import math

import jax
import numpy as np
from flax import traverse_util
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from fttpu.errors import ConfigError, check

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # FSDP shards the batch like data parallelism; tensor parallelism does not
LOGICAL_NAMES = ("embed", "heads", "kv", "mlp", "vocab", "layers")
# The four families share parameter and axis names, so one default serves them all.
DEFAULT_RULES = {"embed": "fsdp", "heads": "tensor", "kv": "", "mlp": "tensor", "vocab": "tensor", "layers": ""}


def default_rules(family: str) -> dict:
  """The logical -> mesh axis rules of a model family (FSDP over `fsdp`, tensor parallelism over `tensor`)."""
  del family  # bert, roberta, opt and llama name their axes alike
  return dict(DEFAULT_RULES)


def validate(config) -> None:
  """config.mesh and config.sharding_rules."""
  check(
    all(v == -1 or v >= 1 for v in config.mesh.values()),
    "mesh",
    dict(config.mesh),
    "axis sizes >= 1, or -1 for the remaining devices",
  )
  check(set(config.mesh) <= set(AXES), "mesh", dict(config.mesh), f"axes among {list(AXES)}")
  check(list(config.mesh.values()).count(-1) <= 1, "mesh", dict(config.mesh), "at most one axis of size -1")
  check(
    set(config.sharding_rules) <= set(LOGICAL_NAMES),
    "sharding_rules",
    dict(config.sharding_rules),
    f"keys among the models' logical axes {list(LOGICAL_NAMES)}",
  )
  for name, targets in config.sharding_rules.items():
    axes = [a for a in (targets or "").split(",") if a]
    check(
      all(a in config.mesh for a in axes) and len(set(axes)) == len(axes),
      f"sharding_rules.{name}",
      targets,
      f"'' (replicated) or mesh axes of config.mesh {list(config.mesh)}, comma-separated",
    )


def make_mesh(axes: dict, devices=None) -> Mesh:
  """{'data': -1, 'fsdp': 2} -> a Mesh over `devices` (default: all, of every process); at most one axis
  may be -1."""
  names, sizes = list(axes), list(axes.values())
  devices = jax.devices() if devices is None else list(devices)
  if sizes.count(-1) > 1:
    raise ConfigError(f"mesh {dict(axes)}: at most one axis may be -1")
  known = math.prod(s for s in sizes if s != -1)
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != len(devices):
    raise ConfigError(
      f"config.mesh={dict(axes)} needs {math.prod(sizes)} devices; {len(devices)} are available "
      "(set one axis to -1 to take the rest)"
    )
  # jax.make_mesh orders devices by the hardware topology (TPU slices, hosts); Auto: GSPMD propagates shardings.
  return jax.make_mesh(tuple(sizes), tuple(names), axis_types=(AxisType.Auto,) * len(names), devices=devices)


def parse_mesh(spec: str) -> dict:
  """'data=1,fsdp=8' -> {'data': 1, 'fsdp': 8, 'tensor': 1} (axes left out have size 1), as CLIs take meshes."""
  sizes = {axis: 1 for axis in AXES}
  for item in filter(None, spec.split(",")):
    axis, _, size = item.partition("=")
    if axis not in AXES or not size.isdigit() or int(size) < 1:
      raise ConfigError(f"--mesh item {item!r} is invalid; valid: axis=size with axes {list(AXES)}, sizes >= 1")
    sizes[axis] = int(size)
  return sizes


def devices_for(count: int) -> list:
  """`count` devices of the default backend, or `count` fake CPU devices when it has another number
  (benchmarks and plans: set jax_num_cpu_devices before the first device is touched)."""
  devices = jax.devices()
  return devices if len(devices) == count else jax.devices("cpu")[:count]


def axis_size(mesh: Mesh, names) -> int:
  return math.prod(dict(mesh.shape).get(name, 1) for name in names)


def check_batch_sizes(mesh: Mesh, *batch_sizes: int) -> None:
  """Batches split over the `data` and `fsdp` axes: every batch size must divide by their product."""
  size = axis_size(mesh, BATCH_AXES)
  for batch_size in batch_sizes:
    if batch_size % size:
      raise ConfigError(
        f"batch size {batch_size} does not divide over the mesh's data x fsdp axes of {size} devices; "
        f"use a multiple of {size} (train.batch_size, train.eval_batch_size)"
      )


# ------------------------------------------------------------------ parameters


_WARNED = set()


def _warn_once(message: str) -> None:
  if message not in _WARNED:
    _WARNED.add(message)
    logging.warning(message)


def mesh_spec(shape: tuple, logical: tuple, rules: dict, mesh: Mesh, name: str = "") -> P:
  """The PartitionSpec of an array of `shape` whose axes have `logical` names. A dimension that does
  not divide its mesh axes, or whose mesh axes an earlier dimension took, is replicated (with a warning
  for the former)."""
  sizes, used, spec = dict(mesh.shape), set(), []
  for dim, logical_name in zip(shape, logical):
    targets = tuple(a for a in (rules.get(logical_name) or "").split(",") if a and sizes.get(a, 1) > 1)
    if any(a in used for a in targets):
      targets = ()
    size = math.prod(sizes[a] for a in targets)
    if targets and dim % size:
      _warn_once(
        f"{name or 'array'}: dimension {dim} ({logical_name}) does not divide over mesh axes "
        f"{'x'.join(targets)} of {size} devices; replicated along it"
      )
      targets = ()
    used.update(targets)
    spec.append(targets[0] if len(targets) == 1 else (targets or None))
  return P(*spec)


def param_specs(tree: dict, model_axes: dict, rules: dict, mesh: Mesh, added_axes=None) -> dict:
  """PartitionSpecs of a method's tree {"model": ..., "head"?, "delta"?} (arrays or ShapeDtypeStructs).
  `model_axes`: models.logical_axes(module), the logical names of the plain model's parameters;
  `added_axes(path, shape, model_axes)`: those of a leaf a method adds (fttpu.methods.base.added_leaf_axes)."""
  axes = {k: tuple(v) for k, v in traverse_util.flatten_dict(model_axes).items()}

  def spec(path, leaf):
    keys = tuple(str(getattr(k, "key", k)) for k in path)
    name = "/".join(keys)
    if keys[0] != "model":
      return P()  # the head, sparse deltas: small, replicated
    logical = axes.get(keys[1:]) or (added_axes(keys[1:], leaf.shape, axes) if added_axes else None)
    if logical is None or len(logical) != len(leaf.shape):
      _warn_once(f"{name} has no logical axis names; replicated")
      return P()
    return mesh_spec(leaf.shape, logical, rules, mesh, name)

  return jax.tree_util.tree_map_with_path(spec, tree)


def named(mesh: Mesh, specs):
  return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def state_shardings(state, param_shardings: dict, mesh: Mesh):
  """Shardings of a TrainState: params as given, each optimizer-state leaf as the parameter whose path
  ends its own and whose shape it has (Adam's moments, momentum), everything else replicated."""
  flat = {k: v for k, v in traverse_util.flatten_dict(param_shardings).items()}
  shapes = {k: v.shape for k, v in traverse_util.flatten_dict(state.params).items()}

  def follow(path, leaf):
    keys = tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
    for start in range(len(keys)):
      if keys[start:] in flat and shapes[keys[start:]] == leaf.shape:
        return flat[keys[start:]]
    return replicated(mesh)

  return state.replace(
    params=param_shardings,
    opt_state=jax.tree_util.tree_map_with_path(follow, state.opt_state),
    step=replicated(mesh),
    rng=replicated(mesh),
  )


def create_state(params, tx, seed: int, mesh: Mesh, rules: dict, model_axes: dict, added_axes=None):
  """(TrainState, its shardings) on `mesh`: the parameters placed by the rules, the optimizer state
  created in place beside them (never whole on one device). The parameters are donated."""
  from fttpu.state import TrainState

  param_sharding = named(mesh, param_specs(params, model_axes, rules, mesh, added_axes))
  create = lambda params: TrainState.create(params, tx, seed)
  shardings = state_shardings(jax.eval_shape(create, params), param_sharding, mesh)
  return jax.jit(create, out_shardings=shardings, donate_argnums=0)(put(params, param_sharding)), shardings


def put(tree, shardings):
  """The tree placed as `shardings` say. Host arrays are cut into each device's block (every process
  holds the same values and transfers only its devices' blocks); device arrays are resharded."""

  def place(x, s):
    if isinstance(x, jax.Array):
      return x if x.sharding == s else jax.device_put(x, s)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda index: x[index])

  return jax.tree_util.tree_map(place, tree, shardings)


def to_host(tree):
  """numpy copies of a tree's arrays; arrays sharded across processes are gathered first (a collective:
  every process must call this at the same point). Under tracing (fttpu.plan sizes a method's tree
  with jax.eval_shape) tracers pass through."""

  def get(x):
    if isinstance(x, jax.core.Tracer):
      return x
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree_util.tree_map(get, tree)


def device_bytes(tree) -> dict:
  """{device: bytes of the tree's blocks it holds} over this process's devices."""
  out = {}
  for leaf in jax.tree_util.tree_leaves(tree):
    for shard in leaf.addressable_shards:
      out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
  return out


# ------------------------------------------------------------------ batches

SHARED_KEYS = ("label_input_ids", "label_attention_mask", "verbalizer_ids", "mask_token_id")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_shardings(mesh: Mesh, batch: dict) -> dict:
  """Examples split over `data` x `fsdp`; what every example shares (label descriptions, verbalizer ids)
  replicated."""
  axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
  split = NamedSharding(mesh, P(axes)) if axes else replicated(mesh)
  return {k: replicated(mesh) if k in SHARED_KEYS else split for k in batch}


def local_rows(sharding: NamedSharding, shape: tuple) -> slice:
  """The rows of a global array of `shape` that this process's devices hold under `sharding`."""
  rows = [index[0] for index in sharding.addressable_devices_indices_map(shape).values()]
  starts = [r.start or 0 for r in rows]
  stops = [shape[0] if r.stop is None else r.stop for r in rows]
  return slice(min(starts), max(stops))


def put_batch(mesh: Mesh, batch: dict) -> dict:
  """A global batch from the host batch: each process transfers only the rows its devices hold."""
  shardings = batch_shardings(mesh, batch)

  def place(value, s):
    value = np.asarray(value)
    if s.is_fully_replicated:
      return jax.make_array_from_callback(value.shape, s, lambda index: value[index])
    return jax.make_array_from_process_local_data(s, value[local_rows(s, value.shape)], value.shape)

  return {k: place(v, shardings[k]) for k, v in batch.items()}
