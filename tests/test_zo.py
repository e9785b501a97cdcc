"""Zeroth-order fine-tuning (MeZO and the zo family): the estimate against the true gradient,
convergence, masks and the trajectory replay. Mechanics on the tiny BERT (data parallelism and its
scalar-only all-reduces: tests/test_sharding.py); the trajectory replayed through the CLI on the tiny RoBERTa."""

import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors.numpy

from configs import fewshot
from fttpu import errors
from fttpu import methods, step as step_lib, trainer
from fttpu.methods import base, masks, zo
from fttpu.models import perturbation
from fttpu.state import TrainState
from tests.conftest import REPO, data_dir, tiny_batch
from tests.test_main import run_main
from tests.test_methods import build, state_entries, train


def zo_config(base_name: str = "full", optimizer: str = "sgd", **settings):
  config = fewshot.get_config("method=mezo" if base_name == "full" else f"method=zo,zo_base={base_name}")
  config.optimizer.name = optimizer
  for key, value in settings.items():
    config.zo[key] = value
  methods.validate(config)
  return config


def flat(tree) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree_util.tree_leaves(tree)])


@pytest.mark.parametrize("kind", perturbation.KINDS)
def test_noise_of_looked_up_rows_is_the_rows_of_the_whole_leaf(kind):
  """An embedding draws noise for the rows it reads, a scanned layer for its slice; the update draws the
  whole leaf: all must be the same z. And z is standard and uncorrelated: mean 0, variance 1 (gaussian:
  fourth moment 3), no correlation between neighbouring entries, rows or keys."""
  shape = (3000, 384)
  key = jax.random.key_data(jax.random.key(5, impl=perturbation.IMPL))
  noise = perturbation.leaf_noise(key, shape, kind)
  whole = np.asarray(noise.value(shape), np.float64)
  rows = np.array([0, 1364, 1365, 2999, 7])
  np.testing.assert_array_equal(np.asarray(noise.take(rows).value((len(rows), 384))), whole[rows])
  layer = perturbation.Noise(noise.keys[1364], noise.scale[1364], kind)  # what nn.scan hands layer 1364
  np.testing.assert_array_equal(np.asarray(layer.value((384,))), whole[1364])
  size = whole.size
  assert abs(whole.mean()) < 5 / np.sqrt(size) and abs(whole.var() - 1) < 5 * np.sqrt(2 / size)
  if kind == "rademacher":
    assert set(np.unique(whole)) == {-1.0, 1.0}
  else:
    assert abs(np.mean(whole**4) - 3) < 5 * np.sqrt(96 / size) and np.isfinite(whole).all()
  other = np.asarray(perturbation.leaf_noise(perturbation.subkeys(key, 1), shape, kind).value(shape))
  for a, b in ((whole[:, 1:], whole[:, :-1]), (whole[1:], whole[:-1]), (whole, other)):
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 5 / np.sqrt(a.size)


@pytest.mark.parametrize("kind", perturbation.KINDS)
def test_noise_is_independent_across_samples_steps_leaves_and_within_each_draw(kind):
  """z as a step draws it (draw_noise on the step's key): for each pair of draws that must be independent
  (samples of a step, steps, two leaves, neighbouring entries) no linear correlation and none between
  squares (the radius of a Box-Muller pair shared with its neighbour would show there); gaussian z
  passes a Kolmogorov-Smirnov test against N(0, 1) and matches its moments through the sixth."""
  from scipy import stats

  shape = (2048, 512)
  tree = {"model": {"a": jnp.zeros(shape), "b": jnp.zeros(shape)}}
  labels = jax.tree_util.tree_map(lambda _: masks.TRAIN, tree)
  run_key = jax.random.key(11)

  def z(step, sample, leaf):
    key = zo.probe_key(jax.random.fold_in(run_key, step), sample)  # as step.train_step folds in the step
    noise = dict(zo.draw_noise(tree, labels, key, kind))[("model", leaf)]
    return np.asarray(noise.value(shape), np.float64).ravel()

  base = z(0, 0, "a")
  size = base.size
  for label, other in (
    ("samples", z(0, 1, "a")),
    ("steps", z(1, 0, "a")),
    ("leaves", z(0, 0, "b")),
    ("entries", np.roll(base, 1)),
    ("rows", np.roll(base, shape[1])),
  ):
    for power in (1, 2):
      if kind == "rademacher" and power == 2:
        continue  # z^2 == 1
      assert abs(np.corrcoef(base**power, other**power)[0, 1]) < 5 / np.sqrt(size), (label, power)
  if kind == "gaussian":
    u = np.linspace(-1, 1, 10001, dtype=np.float32)
    np.testing.assert_allclose(perturbation.sin_half_period(jnp.asarray(u)), np.sin(np.pi * u / 2), rtol=0, atol=1e-6)
    assert stats.kstest(base, "norm").pvalue > 1e-3
    for order, moment in ((1, 0), (2, 1), (3, 0), (4, 3), (6, 15)):
      spread = np.sqrt(stats.norm.moment(2 * order) - moment**2)  # the standard error of the sample moment
      assert abs(np.mean(base**order) - moment) < 5 * spread / np.sqrt(size), order


def test_the_draws_log_is_within_its_bound_of_logs_on_every_uniform_it_takes_and_beyond():
  """perturbation.log_positive on all 2^16 uniforms the radius takes ((2k + 1) / 2^17), exactly 0 at 1, and on
  positive floats over 70 orders of magnitude: within 1.5e-6 of log relative (|log u| > 1e-3) and 1e-5 absolute."""
  uniforms = (np.arange(2**16, dtype=np.float64) * 2 + 1) / 2**17
  logs = np.asarray(perturbation.log_positive(jnp.asarray(uniforms, jnp.float32)), np.float64)
  assert np.max(np.abs(logs / np.log(uniforms) - 1)) < 1.5e-6
  assert float(perturbation.log_positive(jnp.float32(1.0))) == 0.0
  wide = np.exp(np.linspace(-80, 80, 100_001)).astype(np.float32).astype(np.float64)
  logs, exact = np.asarray(perturbation.log_positive(jnp.asarray(wide, jnp.float32)), np.float64), np.log(wide)
  assert np.max(np.abs(logs - exact)) < 1e-5
  away_from_one = np.abs(exact) > 1e-3
  assert np.max(np.abs(logs[away_from_one] / exact[away_from_one] - 1)) < 1.5e-6


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_estimate_averaged_over_samples_aligns_with_the_true_gradient(tiny, noise):
  """n-SPSA with n samples: E[g_hat] = grad, and for d parameters E|g_hat|^2 = |grad|^2 (1 + (d + c) / n)
  (c = 1 gaussian, -1 rademacher), so cos(g_hat, grad) ~ 1 / sqrt(1 + (d + c) / n); g_hat . grad / |grad|^2
  is a mean of n squared projections with standard deviation <= sqrt(2 / n)."""
  samples = 1024
  method, tree, loss_fn = build(tiny, zo_config(samples=samples, noise=noise))
  labels, batch = method.labels(tree), tiny_batch(0)
  _, aux, estimate = jax.jit(lambda t, key: method.estimate(loss_fn, t, labels, batch, key))(tree, jax.random.key(3))
  true = jax.grad(lambda t: loss_fn(t, batch, None)[0])(tree)
  g_hat, g = flat(estimate), flat(true)
  d = g.size
  ratio = g_hat @ g / (g @ g)
  assert abs(ratio - 1) < 5 * np.sqrt(2 / samples), ratio
  cosine = g_hat @ g / (np.linalg.norm(g_hat) * np.linalg.norm(g))
  expected = 1 / np.sqrt(1 + (d + (1 if noise == "gaussian" else -1)) / samples)
  assert 0.7 * expected < cosine < 1.3 * expected, (cosine, expected, d)
  assert aux["projected_grad"].shape == (samples,)


@pytest.mark.parametrize(
  "optimizer_name,schedule",
  [("sgd", optax.constant_schedule(0.02)), ("zo_sgd_sign", optax.cosine_decay_schedule(0.05, 1500))],
)
def test_zo_sgd_converges_on_a_convex_problem(optimizer_name, schedule):
  """Least squares in 10 dimensions (optimum loss 0): ZO-SGD, and ZO-SGD-Sign (steps of fixed size
  |z|, so with a decaying rate), through the one train step."""
  rng = np.random.default_rng(0)
  features = rng.normal(size=(64, 10)).astype(np.float32)
  batch = {"x": features, "y": features @ rng.normal(size=10).astype(np.float32)}

  def loss_fn(tree, batch, rng=None):
    residual = batch["x"] @ tree["head"]["kernel"] - batch["y"]
    return 0.5 * jnp.mean(jnp.square(residual)), {"accuracy": jnp.zeros(())}

  labels = functools.partial(masks.label_all, label=masks.TRAIN)
  method = base.with_optimizer(
    base.make_method("toy", base.wrap, labels, estimate=zo.spsa(1e-3, 1, "gaussian", "loss", optimizer_name)),
    optax.sgd(schedule),
  )
  tree = {"model": {}, "head": {"kernel": np.zeros(10, np.float32)}}
  state = train(method, tree, loss_fn, 1500, batches=lambda step: batch)
  assert loss_fn(state.params, batch)[0] < 1e-4 * loss_fn(tree, batch)[0]


@pytest.mark.slow  # 22 s here: make test-all; make test replays ZO-SGD-Sign from its trajectory
def test_zo_sgd_sign_steps_along_the_sign_of_each_projection_times_its_z(tiny):
  """ZO-Bench's ZO-SGD-Sign: sum_i sign(g_i) z_i / n with the same z and g as ZO-SGD's sum_i g_i z_i / n."""
  samples = 4
  estimates = {}
  for name in ("sgd", "zo_sgd_sign"):
    method, tree, loss_fn = build(tiny, zo_config(optimizer=name, samples=samples))
    labels = method.labels(tree)
    estimates[name] = jax.jit(lambda t: method.estimate(loss_fn, t, labels, tiny_batch(0), jax.random.key(3)))(tree)
  projected = np.asarray(estimates["sgd"][1]["projected_grad"])
  np.testing.assert_array_equal(projected, estimates["zo_sgd_sign"][1]["projected_grad"])
  assert np.all(np.abs(projected) > 1e-3) and len(set(np.sign(projected))) == 2, projected  # signs differ, |g| != 1
  z = [
    flat(zo.gradient(tree, labels, jax.random.key(3), jnp.eye(samples)[i] * samples, "gaussian"))
    for i in range(samples)
  ]
  # float32 sums of entries up to ~25 round differently as XLA fuses them (measured: 1.4e-6 apart); a wrong
  # sign or coefficient moves an entry by about |z_i| * 2 / samples, far above atol.
  np.testing.assert_allclose(
    flat(estimates["zo_sgd_sign"][2]), np.sign(projected) @ np.stack(z) / samples, rtol=1e-5, atol=2e-5
  )
  np.testing.assert_allclose(flat(estimates["sgd"][2]), projected @ np.stack(z) / samples, rtol=1e-5, atol=2e-5)


def test_zo_sgd_sign_is_a_zeroth_order_rule_only():
  config = fewshot.get_config("method=full")
  config.optimizer.name = "zo_sgd_sign"
  with pytest.raises(
    errors.ConfigError,
    match="config.optimizer.name='zo_sgd_sign' is invalid; valid: "
    r"\['adamw', 'sgd', 'momentum', 'sign'\] for method='full'",
  ):
    trainer.validate(config)


@pytest.mark.parametrize("base_name", base.zo_bases())
def test_every_base_moves_its_trainable_leaves_only(tiny, base_name):
  config = zo_config(base_name)
  method, tree, loss_fn = build(tiny, config, weight_decay=0.0)
  labels = method.labels(tree)
  state = train(method, tree, loss_fn, 2)
  moved, frozen_moved = 0, []
  for (path, before), after, label in zip(
    jax.tree_util.tree_leaves_with_path(tree),
    jax.tree_util.tree_leaves(state.params),
    jax.tree_util.tree_leaves(labels),
  ):
    same = np.array_equal(np.asarray(before), np.asarray(after))
    if label == masks.FREEZE and not same:
      frozen_moved.append(masks.path_name(path))
    moved += label == masks.TRAIN and not same
  assert not frozen_moved, f"zo over {base_name} changed frozen leaves {frozen_moved}"
  assert moved == sum(label == masks.TRAIN for label in jax.tree_util.tree_leaves(labels)), "a trainable leaf stayed"
  assert state_entries(state.opt_state) == 0, "ZO-SGD keeps no optimizer state"


def test_accuracy_objective_estimates_from_differences_of_correct_counts(tiny):
  config = zo_config(objective="accuracy", samples=8)
  method, tree, loss_fn = build(tiny, config)
  batch = tiny_batch(0)
  _, aux, _ = jax.jit(lambda t: method.estimate(loss_fn, t, method.labels(t), batch, jax.random.key(0)))(tree)
  counts = np.asarray(aux["projected_grad"]) * 2 * config.zo.eps * len(batch["labels"])  # minus the change of correct
  np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)


@pytest.mark.parametrize(
  "base_name,optimizer,settings",
  [
    ("full", "sgd", {"noise": "rademacher"}),
    ("lora", "momentum", {"samples": 2}),
    ("sparse", "adamw", {}),
    ("full", "zo_sgd_sign", {}),
  ],
)
def test_replaying_the_trajectory_reproduces_the_trained_parameters(tiny, base_name, optimizer, settings):
  """Bit for bit with ZO-SGD and momentum; with Adam up to float32 rounding (XLA fuses its
  division differently in the replay program than in the train step)."""
  method, tree, loss_fn = build(tiny, zo_config(base_name, optimizer, **settings))
  step = jax.jit(functools.partial(step_lib.train_step, method=method, loss_fn=loss_fn))
  state = TrainState.create(tree, method.tx, 7)
  projected = []
  for i in range(6):
    state, metrics = step(state, tiny_batch(i))
    projected.append(np.asarray(metrics["train/projected_grad"]))
  replayed = trainer.replay_trajectory(
    tree,
    method.labels(tree),
    method.tx,
    TrainState.create(tree, method.tx, 7).rng,
    np.stack(projected),
    settings.get("noise", "gaussian"),
    optimizer,
  )
  for a, b in zip(jax.tree_util.tree_leaves(replayed), jax.tree_util.tree_leaves(state.params)):
    if optimizer == "adamw":
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-9)
    else:
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(flat(replayed), flat(tree))


def run_replay(workdir) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "fttpu.replay", f"--workdir={workdir}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )


# gaussian replays within 1e-3 of an update (make test-all): 51 s here; rademacher, bit for bit, in make test
@pytest.mark.parametrize("noise", ["rademacher", pytest.param("gaussian", marks=pytest.mark.slow)])
def test_a_mezo_run_replays_from_its_trajectory(tmp_path, tiny_roberta, noise):
  """The CLI run (tiny RoBERTa, 16-shot SST-2) saves trajectory.safetensors; `python -m fttpu.replay` rebuilds its final checkpoint:
  bit for bit with rademacher noise, within float32 rounding of the Box-Muller draw with gaussian (the
  README says so). A gaussian trajectory that an earlier generator drew (no `noise_generator` in its
  metadata) is refused with the reason, not replayed along other directions."""
  workdir = tmp_path / "mezo"
  result = run_main(
    f"--config=configs/fewshot.py:family=roberta,checkpoint={tiny_roberta},method=mezo,k=16,seed=42,steps=12",
    f"--config.data.dir={data_dir()}",
    "--config.data.num_test=64",  # the test split is not what these check
    f"--config.zo.noise={noise}",
    "--config.train.checkpoint_every=6",
    workdir=workdir,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert (workdir / "trajectory.safetensors").is_file()
  replay = run_replay(workdir)
  assert replay.returncode == 0, replay.stderr[-3000:]
  out = json.loads(replay.stdout.strip().splitlines()[-1])
  assert out["steps"] == 12 and out["max_abs_update"] > 1e-5, out
  if noise == "rademacher":
    assert out["identical"] and out["max_abs_diff"] == 0.0, out
  else:  # a replay that drew another z, or skipped a step, would differ by the size of an update
    assert out["max_abs_diff"] <= 1e-3 * out["max_abs_update"], out
    path = workdir / "trajectory.safetensors"
    safetensors.numpy.save_file(safetensors.numpy.load_file(path), path, metadata={"method": "mezo"})
    refused = run_replay(workdir)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "its gaussian z was drawn by the inverse-CDF generator of an earlier fttpu" in refused.stderr


@pytest.mark.slow  # 19 s here: two runs for one refusal
def test_replay_refuses_a_run_that_rechooses_its_trainable_set(tmp_path, tiny_roberta):
  """LISA under zo.base=layers resamples its layers from the run's state every layers.every steps;
  the trajectory does not hold that choice, so replay says why it cannot rebuild the run."""
  workdir = tmp_path / "lisa"
  result = run_main(
    f"--config=configs/fewshot.py:family=roberta,checkpoint={tiny_roberta},method=zo,zo_base=layers,k=16,seed=42,steps=4",
    f"--config.data.dir={data_dir()}",
    "--config.data.num_test=64",  # the test split is not what these check
    "--config.layers.sample=1",
    "--config.layers.every=2",
    "--config.train.checkpoint_every=4",
    workdir=workdir,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  replay = run_replay(workdir)
  assert replay.returncode != 0
  assert "cannot replay a zo_layers run: it re-chooses its trainable set every 2 steps" in replay.stderr
  assert "Traceback" not in replay.stderr
