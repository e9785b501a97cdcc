"""The optimizer factory, the mesh helpers and the benchmark CLI."""

import json
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import optax
import pytest

from fttpu import optim, sharding
from tests.conftest import REPO


def optimizer_config(**overrides):
  config = ml_collections.ConfigDict(
    dict(
      name="adamw", learning_rate=1e-3, weight_decay=0.1, b1=0.9, b2=0.999, eps=1e-8, schedule="linear", warmup_steps=0
    )
  )
  config.update(overrides)
  return config


def test_schedules_warm_up_then_decay_to_zero():
  linear = optim.learning_rate_schedule(optimizer_config(warmup_steps=10), total_steps=110)
  assert float(linear(0)) == 0.0 and float(linear(10)) == pytest.approx(1e-3)
  assert float(linear(60)) == pytest.approx(5e-4) and float(linear(110)) == pytest.approx(0.0, abs=1e-12)
  cosine = optim.learning_rate_schedule(optimizer_config(schedule="cosine"), total_steps=100)
  assert float(cosine(50)) == pytest.approx(5e-4) and float(cosine(100)) == pytest.approx(0.0, abs=1e-12)
  assert float(optim.learning_rate_schedule(optimizer_config(schedule="constant"), 100)(99)) == pytest.approx(1e-3)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_weight_decay_spares_biases_and_norm_scales(name):
  params = {
    "dense": {"kernel": np.ones((2, 2), np.float32), "bias": np.ones(2, np.float32)},
    "norm": {"scale": np.ones(2, np.float32), "bias": np.ones(2, np.float32)},
  }
  tx = optim.make_optimizer(optimizer_config(name=name, schedule="constant"), total_steps=10)
  zero_grads = jax.tree_util.tree_map(np.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  assert np.all(np.asarray(new["dense"]["kernel"]) < 1.0), "matrices decay"
  for leaf in (new["dense"]["bias"], new["norm"]["scale"], new["norm"]["bias"]):
    np.testing.assert_array_equal(leaf, 1.0)


def test_sign_steps_by_the_element_wise_sign_of_the_decayed_gradient():
  """optimizer.name=sign is signSGD: every entry moves by exactly lr, against the sign of its own
  (decayed) gradient entry, not by a shared sign."""
  params = {"dense": {"kernel": np.array([[1.0, -2.0], [0.5, 3.0]], np.float32), "bias": np.ones(2, np.float32)}}
  grads = {
    "dense": {"kernel": np.array([[0.3, -1e-6], [-0.2, -0.7]], np.float32), "bias": np.array([-4.0, 1e-5], np.float32)}
  }
  tx = optim.make_optimizer(optimizer_config(name="sign", schedule="constant", weight_decay=0.1), total_steps=10)
  updates, _ = tx.update(grads, tx.init(params), params)
  decayed_kernel = grads["dense"]["kernel"] + 0.1 * params["dense"]["kernel"]  # [[0.4, 0.2], [-0.15, -0.4]]
  np.testing.assert_allclose(updates["dense"]["kernel"], -1e-3 * np.sign(decayed_kernel), rtol=1e-6)
  np.testing.assert_allclose(updates["dense"]["bias"], [1e-3, -1e-3], rtol=1e-6)  # no decay on biases


def test_mesh_needs_the_devices_it_names():
  assert dict(sharding.make_mesh({"data": -1}).shape) == {"data": len(jax.devices())}
  with pytest.raises(ValueError, match=r"needs 2 devices; 1 are available"):
    sharding.make_mesh({"data": 2})
  with pytest.raises(ValueError, match="at most one axis may be -1"):
    sharding.make_mesh({"data": -1, "fsdp": -1})


def test_batch_sizes_must_divide_over_the_data_and_fsdp_axes():
  command = [
    sys.executable,
    "-c",
    "from fttpu import sharding; "
    "sharding.check_batch_sizes(sharding.make_mesh({'data': -1, 'fsdp': 2, 'tensor': 1}), 8, 6)",
  ]
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "PATH": ""}
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
  assert result.returncode != 0
  assert (
    "batch size 6 does not divide over the mesh's data x fsdp axes of 4 devices; use a multiple of 4" in result.stderr
  )


def test_bench_cli_prints_json_per_method():
  methods = ("forward", "zero_shot", "zo:zo.base=head+zo.noise=rademacher", "zero_shot:model.quantize=int8")
  command = [sys.executable, "-m", "fttpu.bench", f"--methods={','.join(methods)}", "--batch=2", "--seq=8", "--steps=1"]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout)
  for method in methods:
    assert report[method]["step_s"] > 0 and report[method]["compile_s"] > 0 and report[method]["max_rss_mb"] > 0
    assert report[method]["compiled_argument_mb"] > 50  # the 22.7M parameters (float32, or int8 projections)
  assert report["ratios_to_forward"]["zero_shot"] > 0 and report["rss_ratios_to_forward"]["zero_shot"] > 0
  assert report[methods[2]]["trainable"] == 384 * 2 + 2  # the override took: zo over the head only
  assert report[methods[2]]["compiled_alias_mb"] > 80  # the state is donated
  # model.quantize is benched as the method's model: int8 projections, a third of float32's bytes
  assert report[methods[3]]["compiled_argument_mb"] < report["zero_shot"]["compiled_argument_mb"] - 25


@pytest.mark.slow  # 18 s here: make test-all; make test runs the bench CLI on one device above
def test_bench_compares_meshes_over_fake_devices():
  """--mesh twice: the same method on 1 device and on 4 fake CPU devices with FSDP, each in its own
  process, with the step-time ratio to the first mesh; FSDP's compiled arguments are about a quarter."""
  command = [
    sys.executable,
    "-m",
    "fttpu.bench",
    "--methods=forward",
    "--mesh=data=1",
    "--mesh=fsdp=4",
    "--batch=4",
    "--seq=8",
    "--steps=1",
  ]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout)
  one, four = report["forward@data=1"], report["forward@fsdp=4"]
  assert one["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1} and four["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  assert one["compiled_argument_mb"] / 4 <= four["compiled_argument_mb"] <= one["compiled_argument_mb"] / 4 * 1.05
  assert report["step_ratios_to_first_mesh"]["forward"]["fsdp=4"] > 0


def test_random_params_have_the_modules_shapes_dtypes_and_initial_values():
  """The bench's weights for presets: every leaf as the module declares it, made in its storage dtype."""
  from fttpu import models
  from fttpu.models import presets

  config = models.make_config(
    "opt",
    {
      **presets.PRESETS["opt-125m"],
      "hidden_size": 64,
      "word_embed_proj_dim": 64,
      "ffn_dim": 128,
      "num_hidden_layers": 2,
      "num_attention_heads": 4,
      "vocab_size": 500,
    },
    param_dtype="bfloat16",
  )
  module = models.FAMILIES.get("opt").module(config)
  shapes, params = models.param_shapes(module), models.random_params(module)
  assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(params)
  weights = []
  for (path, shape), leaf in zip(jax.tree_util.tree_leaves_with_path(shapes), jax.tree_util.tree_leaves(params)):
    name, values = jax.tree_util.keystr(path), np.asarray(leaf, np.float32)
    assert leaf.shape == shape.shape and leaf.dtype == shape.dtype == jax.numpy.bfloat16, name
    if name.endswith("['scale']"):
      assert np.all(values == 1), name
    elif name.endswith("bias']"):
      assert np.all(values == 0), name
    else:
      assert abs(values.std() - 0.02) < 0.002 and abs(values.mean()) < 0.002, (name, values.std(), values.mean())
      weights.append(values.ravel()[:1000])
  assert len(weights) >= 5 and len({w.tobytes() for w in weights}) == len(weights)  # each leaf its own draw


def test_bench_rounds_take_the_median_round_and_the_median_of_the_rounds_ratios():
  """With the machine 1.5x slower in round 2, the ratio of the median figures (2.0 / 1.2) would say 1.67;
  the rounds' own ratios say 2, 2 and 1.67, whose median is 2. (In a process of its own: fttpu.bench and
  fttpu.plan both define the absl flag --methods.)"""
  script = """
import json
from fttpu import bench
forward = [{"step_s": s, "max_rss_mb": 500} for s in (1.0, 1.5, 1.2)]
mezo = [{"step_s": s, "max_rss_mb": m} for s, m in ((2.0, 700), (3.0, 800), (2.0, 600))]
print(json.dumps([bench.median_round(forward), bench.median_round(mezo[:1]),
                  bench.median_ratio(mezo, forward, "step_s", 2), bench.median_ratio(mezo, forward, "max_rss_mb", 3)]))
"""
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  median_forward, one_round, step_ratio, rss_ratio = json.loads(result.stdout)
  assert median_forward == {"step_s": 1.2, "max_rss_mb": 500, "round_step_s": [1.0, 1.5, 1.2]}
  assert one_round == {"step_s": 2.0, "max_rss_mb": 700}  # one round: the record as it was
  assert step_ratio == 2.0 and rss_ratio == 1.4


@pytest.mark.slow  # benches OPT-125m: 84 s here (make test-all; make ladder runs it for real)
def test_scale_ladder_benches_what_fits_and_says_what_does_not(tmp_path):
  """On OPT-125m in float16 with 1 GiB allowed: MeZO's planned step fits and is measured, full fine-tuning
  (AdamW: gradients and two moments beside the weights) does not and is named so; table and plot written.
  With 0.2 GiB not even the forward (every ratio's unit) fits, and nothing is benchmarked."""

  def ladder(workdir, memory_gb):
    command = [
      sys.executable,
      "-m",
      "experiments.scale_ladder",
      f"--workdir={workdir}",
      "--models=opt-125m",
      "--methods=forward,mezo,full",
      "--batch=1",
      "--seq=8",
      "--steps=1",
      "--rounds=1",
      f"--memory_gb={memory_gb}",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((workdir / "opt-125m.json").read_text()), (workdir / "results.md").read_text()

  record, table = ladder(tmp_path / "1gb", 1)
  planned = record["planned_gb"]
  assert 0.2 < planned["forward"] < planned["mezo"] < 1 < planned["full"] and record["skipped"] == ["full"]
  bench = record["bench"]
  assert bench["param_dtype"] == "float16" and 120e6 < record["parameters"] < 130e6
  assert 230 < bench["forward"]["model_params_mb"] < 260  # 2 bytes a parameter
  assert bench["mezo"]["step_s"] > 0 and bench["ratios_to_forward"]["mezo"] > 1 and "full" not in bench
  assert f"does not fit (plan {planned['full']:.1f} GiB)" in table and "- mezo: opt-125m" in table
  assert "- full: none" in table and (tmp_path / "1gb" / "results.png").stat().st_size > 10_000
  record, table = ladder(tmp_path / "tiny", 0.2)
  assert record["bench"] == {} and record["skipped"] == ["forward", "mezo", "full"]
  assert f"| does not fit (plan {record['planned_gb']['forward']:.1f} GiB) |" in table and "- mezo: none" in table


def bf16_scan_figures(dtype: str) -> list:
  """[compiled temp MiB, peak RSS extra MiB] of experiments/xla_cpu_bf16_scan's program: 6 layers of 256x1024."""
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.xla_cpu_bf16_scan",
      f"--one=jax:{dtype}",
      "--layers=6",
      "--hidden=256",
      "--ffn=1024",
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_cpu_scan_over_bfloat16_weights_holds_a_float32_stack_and_the_run_warns(caplog):
  """The finding train.warn_of_bfloat16_on_cpu reports: XLA's CPU backend converts a scanned bfloat16 stack
  to float32 whole (temporaries: the stack in float32, 6 MiB here, on top of a layer's), float16 one layer at a time. If a new
  XLA slices bfloat16 too, this fails, and the warning (and the float16 default of the ladder) can go."""
  from fttpu import train

  stack_mb = 6 * 256 * 1024 * 4 / 2**20
  float16_temp = bf16_scan_figures("float16")[0]
  assert float16_temp < 3 * stack_mb / 6  # a layer's float32 copy in flight (two, measured)
  assert bf16_scan_figures("bfloat16")[0] >= stack_mb + float16_temp / 2  # the whole stack on top
  with caplog.at_level("WARNING"):
    train.warn_of_bfloat16_on_cpu({"w": jax.numpy.zeros((2, 2), jax.numpy.float16)})
    assert not [r for r in caplog.records if "bfloat16 weights" in r.getMessage()]
    train.warn_of_bfloat16_on_cpu({"w": jax.numpy.zeros((2, 2), jax.numpy.bfloat16)})
  assert [r for r in caplog.records if "bfloat16 weights on XLA's CPU backend" in r.getMessage()]


def test_noise_cost_times_every_draw_against_the_sign_draw():
  """experiments/noise_cost.py: a row per transform, each a positive time per entry, sign at 1.00x, and a
  row per rounding of the float16 update."""
  out = subprocess.run(
    [sys.executable, "-m", "experiments.noise_cost", "--entries=65536", "--rounds=2"],
    capture_output=True,
    text=True,
    cwd=REPO,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  rows = {
    line.split("|")[1].strip(): line.split("|")[2:4]
    for line in out.stdout.splitlines()
    if line.startswith("| ") and "ns" not in line
  }
  draws = {"sign", "hash only", "box-muller", "box-muller, jnp.log", "inverse CDF"}
  assert set(rows) == draws | {"nearest", "stochastic"}, out.stdout
  assert all(float(ns) > 0 for ns, _ in rows.values()) and rows["sign"][1].strip() == "1.00"


def test_torch_sitting_divides_by_the_peers_mean_and_marks_fttpu_only_rows(tmp_path):
  """experiments.torch_sitting's table: each fttpu figure over the mean of the peers' runs before and after,
  x forward over fttpu's forward; methods without a peer get no ratio; the plot is written."""
  from experiments import torch_sitting

  peer = lambda s, rss: {"step_s": s, "max_rss_mb": rss}
  before = {"forward": peer(0.2, 500), "full": peer(0.8, 1100), "lora": peer(0.5, 800), "mezo": peer(1.2, 700)}
  after = {"forward": peer(0.2, 500), "full": peer(1.0, 1100), "lora": peer(0.5, 800), "mezo": peer(1.2, 700)}
  ours = {
    "cpu_count": 2,
    "forward": peer(0.1, 600),
    "full": peer(0.9, 1320),
    "lora": peer(0.4, 880),
    "mezo": peer(0.25, 770),
    "zo:zo.base=lora": peer(0.2, 650),
    "ratios_to_forward": {},
  }
  rows = {r["method"]: r for r in torch_sitting.rows(before, ours, after)}
  assert list(rows) == ["forward", "full", "lora", "mezo", "zo:zo.base=lora"]
  assert rows["full"]["time_ratio"] == pytest.approx(1.0) and rows["full"]["rss_ratio"] == pytest.approx(1.2)
  assert rows["mezo"]["x_forward"] == pytest.approx(2.5) and rows["forward"]["time_ratio"] == pytest.approx(0.5)
  assert "time_ratio" not in rows["zo:zo.base=lora"]
  text = torch_sitting.table(list(rows.values()), "header")
  assert "| full AdamW | 0.800 / 1.000 | 0.900 | 1.00 | 9.00x | 1100 / 1320 | 1.20 |" in text
  assert "| MeZO over LoRA |  | 0.200 |  | 2.00x | 650 |  |" in text
  torch_sitting.plot(list(rows.values()), str(tmp_path / "plot.png"))
  assert (tmp_path / "plot.png").stat().st_size > 10_000
