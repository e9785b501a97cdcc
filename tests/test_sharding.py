"""Sharded training on 8 fake CPU devices equals one device; rules, fallbacks and resharding restore.

The 8-device runs share one subprocess (XLA_FLAGS must be set before JAX starts): every method
trains the tiny BERT for a few steps on each mesh, and the parameters are compared with the
one-device run of the same steps.
"""

import json
import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from fttpu import methods, models, sharding
from tests.conftest import REPO, with_fake_devices

STEPS = 4
MESHES = {
  "one": {"data": 1, "fsdp": 1, "tensor": 1},
  "data": {"data": 8, "fsdp": 1, "tensor": 1},
  "fsdp": {"data": 1, "fsdp": 8, "tensor": 1},
  "tensor": {"data": 2, "fsdp": 1, "tensor": 4},
}
# (method, optimizer, learning rate): rates large enough that STEPS steps move the parameters well above
# float32 rounding. Full fine-tuning with momentum, not Adam: Adam divides by the gradient's magnitude, so
# a leaf whose exact gradient is 0 (the attention key bias: softmax ignores a constant shift) takes
# rounding noise, which differs with any summation order, to a full lr-sized step. LoRA and sparse keep
# Adam (their leaves have real gradients). MeZO with sign noise (gaussian compiles 4x slower here; the
# noise kind does not change how anything is sharded).
METHODS = {
  "full": ("full", "momentum", 1e-3),
  "lora": ("lora", "adamw", 1e-2),
  "sparse": ("sparse", "adamw", 1e-2),
  "mezo": ("mezo", "sgd", 1e-3),
}
# The meshes each method trains on in `make test`: what the tests below read (every method's FSDP run; the
# data-parallel all-reduces of full and MeZO; tensor parallelism's rules on full and LoRA). The other
# cells of the matrix run in `make test-all`.
QUICK_MESHES = {
  "full": ("data", "fsdp", "tensor"),
  "lora": ("fsdp", "tensor"),
  "sparse": ("fsdp",),
  "mezo": ("data", "fsdp"),
}
# Allowed |parameter difference| as a fraction of how far training moved the parameters (see below).
TOLERANCE = {"full": 1e-4, "lora": 1e-4, "sparse": 1e-4, "mezo": 1e-3}

SCRIPT = """
import json, math, re, sys, tempfile
import jax, numpy as np
from fttpu import checkpoint, models, sharding, trainer
from tests.conftest import make_tiny, tiny_batch
from tests.test_methods import build, make_config
from tests.test_sharding import MESHES, METHODS, STEPS
from tests.test_zo import zo_config

model = make_tiny()
axes, rules = models.logical_axes(model.module), sharding.default_rules("bert")
batches = lambda i: tiny_batch(i, size=8)
host = lambda tree: jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def train(method, tree, loss_fn, mesh):  # placed and compiled as fttpu.train does
  run = trainer.Setup(method, host(tree), loss_fn, logits_fn=None, optimizer=None)
  state, shardings = trainer.place(run, 0, mesh, rules, axes)
  step = trainer.compile_train_step(run, shardings, sharding.batch_shardings(mesh, batches(0)), mesh)
  step = step.lower(state, sharding.put_batch(mesh, batches(0))).compile()
  losses = []
  for i in range(STEPS):
    state, metrics = step(state, sharding.put_batch(mesh, batches(i)))
    losses.append(float(metrics["train/loss"]))
  return state, shardings, losses, step.as_text()


def all_reduce_sizes(hlo: str) -> list:  # elements of every array every all-reduce of a compiled program reduces
  sizes = []
  for line in hlo.splitlines():
    if " all-reduce(" in line or " all-reduce-start(" in line:
      result_type = line.split("=", 1)[1].split("all-reduce", 1)[0]  # one array, or a tuple of them
      sizes += [math.prod(int(d) for d in dims.split(",") if d) for dims in re.findall(r"\w+\[([\d,]*)\]", result_type)]
  return sizes


def spec(state, *path):
  leaf = state.params
  for key in path:
    leaf = leaf[key]
  return str(tuple(leaf.sharding.spec))


out = {}
for name, (method_name, optimizer, lr) in METHODS.items():
  config = zo_config("full", noise="rademacher") if method_name == "mezo" else make_config(method_name)
  config.optimizer.name, config.optimizer.learning_rate = optimizer, lr
  method, tree, loss_fn = build(model, config)
  initial = host(tree)
  meshes = ["one", *json.loads(sys.argv[1])[name]]
  runs = {m: train(method, tree, loss_fn, sharding.make_mesh(MESHES[m], jax.devices()[:math.prod(MESHES[m].values())]))
          for m in meshes}
  one = host(runs["one"][0].params)
  moved = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(initial)))
  out[name] = {"moved": moved}
  for m, (state, shardings, losses, hlo) in runs.items():
    params = host(state.params)
    diffs = [float(np.max(np.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(one))]
    out[name][m] = {"max_abs_diff": max(diffs), "losses": losses, "devices": state.params["model"]["word"]["embedding"].sharding.num_devices,
                    "query_kernel": spec(state, "model", "layers", "query", "kernel"),
                    "mlp_out_kernel": spec(state, "model", "layers", "mlp_out", "kernel"),
                    "word_embedding": spec(state, "model", "word", "embedding")}
    if m == "data":
      out[name][m]["all_reduce_elements"] = all_reduce_sizes(hlo)
    if name == "lora":
      out[name][m]["lora_a"] = spec(state, "model", "layers", "query", "lora_a")
      out[name][m]["lora_b"] = spec(state, "model", "layers", "query", "lora_b")
      mu = [x for x in jax.tree_util.tree_leaves(state.opt_state) if x.shape == state.params["model"]["layers"]["query"]["lora_b"].shape]
      out[name][m]["adam_moment_specs"] = sorted({str(tuple(x.sharding.spec)) for x in mu})
    if m == "fsdp":
      leaves = jax.tree_util.tree_leaves(state.params)
      per_device = sharding.device_bytes(state.params)
      out[name][m]["bytes"] = {"total": sum(x.nbytes for x in leaves), "max_device": max(per_device.values()),
                               "replicated": sum(x.nbytes for x in leaves if x.sharding.is_fully_replicated),
                               "devices": len(per_device)}

  if name == "full":  # resharding restore: written on 8 devices (FSDP), read onto 1 device and onto 2 x 2
    saved_state = runs["fsdp"][0]
    saved = host(saved_state)
    with tempfile.TemporaryDirectory() as directory:
      manager = checkpoint.make_manager(directory, 1)
      checkpoint.save(manager, saved_state)
      manager.wait_until_finished()
      restored = {}
      for target, shape in (("one", {"data": 1, "fsdp": 1, "tensor": 1}), ("2x2", {"data": 1, "fsdp": 2, "tensor": 2})):
        mesh = sharding.make_mesh(shape, jax.devices()[:math.prod(shape.values())])
        like, _ = trainer.place(trainer.Setup(method, initial, None, None, None), 0, mesh, rules, axes)
        state, _ = checkpoint.restore(manager, STEPS, like)
        same = all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(host(state)), jax.tree_util.tree_leaves(saved)))
        restored[target] = {"identical": same, "devices": state.params["model"]["word"]["embedding"].sharding.num_devices,
                            "query_kernel": spec(state, "model", "layers", "query", "kernel")}
      out["restore"] = restored
print(json.dumps(out))
"""


def meshes_to_train(items) -> dict:
  """Per method, QUICK_MESHES and the meshes of the selected cells of the matrix test."""
  meshes = {method: set(quick) for method, quick in QUICK_MESHES.items()}
  for item in items:
    if item.originalname == "test_sharded_training_matches_one_device" and item.path.name == "test_sharding.py":
      meshes[item.callspec.params["method"]].add(item.callspec.params["mesh"])
  return {method: sorted(names) for method, names in meshes.items()}


@pytest.fixture(scope="module")
def eight_devices(request):
  env = with_fake_devices(8)
  meshes = json.dumps(meshes_to_train(request.session.items))
  result = subprocess.run(
    [sys.executable, "-c", SCRIPT, meshes], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
  )
  assert result.returncode == 0, result.stderr[-4000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
  "method,mesh",
  [
    pytest.param(method, mesh, marks=() if mesh in QUICK_MESHES[method] else pytest.mark.slow, id=f"{mesh}-{method}")
    for mesh in ("data", "fsdp", "tensor")
    for method in METHODS
  ],
)
def test_sharded_training_matches_one_device(eight_devices, method, mesh):
  """The same steps on 8 devices give one device's parameters and losses.

  Sharding changes only the order of float32 sums (per-device partial sums of the batch, of the
  contracted hidden or head axis, then an all-reduce), so each loss and gradient differs by a few
  float32 roundings, ~1e-7 relative. Over STEPS steps that stays far below 1e-4 of how far training
  moved the parameters (measured: at most 2.5e-5). MeZO's projected gradient divides a difference
  of two losses by 2 eps = 2e-3, which scales their rounding by 500: its bound is 1e-3 (measured:
  at most 1.0e-4). Losses agree to a tenth of that, relative."""
  run, one = eight_devices[method][mesh], eight_devices[method]["one"]
  assert run["devices"] == 8 and one["devices"] == 1
  moved = eight_devices[method]["moved"]
  assert run["max_abs_diff"] <= TOLERANCE[method] * moved, (run["max_abs_diff"], moved)
  np.testing.assert_allclose(run["losses"], one["losses"], rtol=TOLERANCE[method] / 10)


def test_data_parallel_zeroth_order_exchanges_scalars_only(eight_devices):
  """Every replica regenerates z from the shared step key: MeZO's compiled data-parallel step all-reduces
  only the loss sums (a few scalars), where autodiff's all-reduces every gradient."""
  mezo, full = (
    eight_devices["mezo"]["data"]["all_reduce_elements"],
    eight_devices["full"]["data"]["all_reduce_elements"],
  )
  assert mezo and max(mezo) <= 16, mezo
  assert max(full) >= 1200 * 32, max(full)  # the word embedding's gradient, at least


def test_parameters_shard_as_the_rules_say(eight_devices):
  """FSDP splits the hidden (embed) axis, tensor parallelism the heads, mlp and vocab axes (Megatron:
  query column-parallel, mlp_out row-parallel); data parallelism replicates every parameter."""
  full = eight_devices["full"]
  assert full["data"]["query_kernel"] == "(None, None, None, None)"
  assert full["fsdp"]["query_kernel"] == "(None, 'fsdp', None, None)"
  assert full["fsdp"]["word_embedding"] == "(None, 'fsdp')"
  assert full["tensor"]["query_kernel"] == "(None, None, 'tensor', None)"
  assert full["tensor"]["mlp_out_kernel"] == "(None, 'tensor', None)"
  assert full["tensor"]["word_embedding"] == "('tensor', None)"


def test_lora_adapters_and_adam_moments_follow_their_kernel(eight_devices):
  """A shares the kernel's input axes, B its output axes; Adam's moments shard like the leaf they belong to."""
  fsdp, tensor = eight_devices["lora"]["fsdp"], eight_devices["lora"]["tensor"]
  assert fsdp["lora_a"] == "(None, 'fsdp', None)" and fsdp["lora_b"] == "(None, None, None, None)"
  assert tensor["lora_a"] == "(None, None, None)" and tensor["lora_b"] == "(None, None, 'tensor', None)"
  assert tensor["adam_moment_specs"] == ["(None, None, 'tensor', None)"]


@pytest.mark.parametrize("method", list(METHODS))
def test_fsdp_holds_an_eighth_of_the_parameters_per_device(eight_devices, method):
  """Per device: at most 1/8 of all parameter bytes plus the leaves left replicated."""
  stats = eight_devices[method]["fsdp"]["bytes"]
  assert stats["devices"] == 8
  assert stats["max_device"] <= stats["total"] / 8 + stats["replicated"], stats
  assert stats["replicated"] < 0.1 * stats["total"], stats


def test_a_checkpoint_written_on_8_devices_restores_onto_other_meshes(eight_devices):
  """Saved under FSDP over 8 devices; restored onto 1 device and onto a 2 x 2 (fsdp x tensor) mesh, bit for bit."""
  restore = eight_devices["restore"]
  assert restore["one"] == {"identical": True, "devices": 1, "query_kernel": "(None, None, None, None)"}
  assert restore["2x2"] == {"identical": True, "devices": 4, "query_kernel": "(None, 'fsdp', 'tensor', None)"}


def test_a_dimension_that_does_not_divide_is_replicated_with_a_warning(caplog):
  """4 heads over 8 tensor devices cannot split: that axis is replicated, the others still shard."""
  mesh = AbstractMesh((2, 8), ("fsdp", "tensor"))
  with caplog.at_level(logging.WARNING):
    spec = sharding.mesh_spec(
      (2, 32, 4, 8), ("layers", "embed", "heads", "kv"), sharding.default_rules("bert"), mesh, "layers/query/kernel"
    )
  assert spec == P(None, "fsdp", None, None)
  assert "layers/query/kernel: dimension 4 (heads) does not divide over mesh axes tensor of 8 devices" in caplog.text


def test_one_mesh_axis_is_used_once_per_array_and_rules_may_name_several():
  mesh = AbstractMesh((2, 2, 2), ("data", "fsdp", "tensor"))
  rules = {**sharding.default_rules("bert"), "embed": "data,fsdp", "mlp": "fsdp"}
  assert sharding.mesh_spec((2, 32, 64), ("layers", "embed", "mlp"), rules, mesh) == P(None, ("data", "fsdp"), None)


@pytest.mark.parametrize("variant", ["lora_all", "prefix"])
def test_every_leaf_a_method_adds_gets_its_axes_from_the_model(tiny, variant, caplog):
  """LoRA/DoRA leaves on every projection and prefix keys/values: no leaf falls back to replication for
  want of logical names, and every leaf with a hidden-size axis is split over fsdp."""
  from tests.test_methods import build, make_config

  config = (
    make_config("lora", **{"lora.targets": "query|key|value|attention_out|mlp_in|mlp_out", "lora.dora": True})
    if variant == "lora_all"
    else make_config("prefix")
  )
  _, tree, _ = build(tiny, config)
  with caplog.at_level(logging.WARNING):
    specs = sharding.param_specs(
      tree,
      models.logical_axes(tiny.module),
      sharding.default_rules("bert"),
      AbstractMesh((4,), ("fsdp",)),
      methods.added_leaf_axes,
    )
  assert "no logical axis names" not in caplog.text
  flat = {
    "/".join(str(k.key) for k in path): s
    for path, s in jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, P))
  }
  if variant == "prefix":  # (layers, length, heads, kv): no hidden axis; heads would follow tensor
    assert flat["model/layers/prefix_key"] == flat["model/layers/prefix_value"] == P(None, None, None, None)
    return
  assert flat["model/layers/mlp_in/lora_a"] == P(None, "fsdp", None)  # (layers, embed, rank)
  assert flat["model/layers/mlp_out/lora_b"] == P(None, None, "fsdp")  # (layers, rank, embed)
  assert flat["model/layers/query/lora_a"] == P(None, "fsdp", None)
  assert flat["model/layers/attention_out/dora_magnitude"] == P(None, "fsdp")  # (layers, embed)
  assert flat["model/layers/query/lora_scale"] == P(None)
