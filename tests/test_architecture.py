"""The structure the next person relies on: imports point one way (no cycle in fttpu/, function-local
imports counted), no function over 80 lines, and a method added as one module plus one line."""

import ast
import importlib
import importlib.util
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.conftest import tiny_batch

PACKAGE = Path(__file__).resolve().parents[1] / "fttpu"
MAX_FUNCTION_LINES = 80


def module_files() -> dict[str, Path]:
  files = {}
  for path in PACKAGE.rglob("*.py"):
    name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    files[name.removesuffix(".__init__")] = path
  return files


def imported(node, current: str, modules: dict) -> list[str]:
  """The fttpu modules an import statement names (`from a import b` names a.b when b is a module)."""
  if isinstance(node, ast.Import):
    return [a.name for a in node.names if a.name in modules]
  base = node.module or ""
  if node.level:
    parts = current.split(".")
    keep = len(parts) - node.level + (1 if modules[current].name == "__init__.py" else 0)
    base = ".".join(parts[:keep] + ([base] if base else []))
  found = []
  for alias in node.names:
    name = f"{base}.{alias.name}"
    found += [name] if name in modules else [base] if base in modules else []
  return found


def import_graph() -> dict[str, set]:
  modules = module_files()
  graph = {}
  for name, path in modules.items():
    tree = ast.parse(path.read_text())
    graph[name] = {
      m
      for node in ast.walk(tree)
      if isinstance(node, (ast.Import, ast.ImportFrom))
      for m in imported(node, name, modules)
    } - {name}
  return graph


def cycles(graph: dict[str, set]) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in graph:
    if v not in index:
      visit(v)
  return found


def test_the_cycle_finder_finds_a_cycle_through_a_function_local_import():
  source = "def f():\n  from fttpu import b\n"
  tree = ast.parse(source)
  modules = {"fttpu.a": Path("a.py"), "fttpu.b": Path("b.py"), "fttpu": Path("__init__.py")}
  edges = [m for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for m in imported(node, "fttpu.a", modules)]
  assert edges == ["fttpu.b"]
  assert cycles({"fttpu.a": {"fttpu.b"}, "fttpu.b": {"fttpu.a"}, "fttpu.c": {"fttpu.a"}}) == [["fttpu.a", "fttpu.b"]]


def test_fttpu_has_no_import_cycle():
  found = cycles(import_graph())
  assert not found, f"import cycles in fttpu/: {found}"


def test_a_run_does_not_load_pytorch_where_it_is_installed():
  """The tests' environment has PyTorch (their reference); tensorboardX would import it into every run
  (1 s and 300 MB) only to accept torch tensors, which fttpu never logs."""
  import subprocess

  assert importlib.util.find_spec("torch"), "the test environment installs PyTorch: this test needs it"
  code = "import sys, fttpu.main, fttpu.metrics; sys.exit('torch' in sys.modules)"
  assert subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, timeout=120).returncode == 0


def test_no_function_in_fttpu_is_longer_than_80_lines():
  long = [
    f"{path.relative_to(PACKAGE.parent)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
    for path in module_files().values()
    for node in ast.walk(ast.parse(path.read_text()))
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
  ]
  assert not long, long


@pytest.fixture
def toy_method():
  """tests/toy_method.py imported as the table's new line would import it; unregistered afterwards."""
  from fttpu.methods import METHODS, SECTIONS

  module = importlib.import_module("tests.toy_method")
  yield module
  METHODS.unregister("norms")
  SECTIONS.unregister("norms")
  sys.modules.pop("tests.toy_method")


def test_a_new_method_is_one_module_and_one_line(toy_method, tiny):
  """The toy method gets its config section and learning rate in configs/fewshot.py, its checks at
  start-up, a zeroth-order variant, and trains through the one setup: only its leaves move and the
  loss falls."""
  from configs import fewshot
  from fttpu import errors, step as step_lib, trainer
  from fttpu.methods import masks
  from fttpu.state import TrainState

  config = fewshot.get_config("method=norms")
  assert config.norms.pattern == r"norm/(scale|bias)$" and config.optimizer.learning_rate == 1e-2
  assert fewshot.get_config("method=zo,zo_base=norms").optimizer.learning_rate == 1e-3
  trainer.validate(config)
  config.norms.pattern = "norm/(scale"
  with pytest.raises(errors.ConfigError, match=r"config.norms.pattern='norm/\(scale' is not a valid regular"):
    trainer.validate(config)
  config.norms.pattern = r"norm/(scale|bias)$"
  for method_name in ("norms", "zo"):
    config.method, config.zo.base = method_name, "norms"
    config.optimizer = fewshot.get_config(f"method={method_name},zo_base=norms").optimizer
    batch = tiny_batch(0, size=16)
    run = trainer.setup(config, tiny, lambda step: batch, batch, total_steps=50, rng=jax.random.key(0))
    labels = run.method.labels(run.tree)
    assert {p for p, l in zip(masks.leaf_paths(run.tree), jax.tree_util.tree_leaves(labels)) if l == masks.TRAIN} == {
      f"model/layers/{m}/{p}" for m in ("attention_norm", "mlp_norm") for p in ("scale", "bias")
    } | {"model/embedding_norm/scale", "model/embedding_norm/bias"}
    step = jax.jit(lambda s, b: step_lib.train_step(s, b, method=run.method, loss_fn=run.loss_fn))
    state = TrainState.create(run.tree, run.method.tx, 0)
    losses = []
    for _ in range(30 if method_name == "norms" else 60):
      state, metrics = step(state, batch)
      losses.append(float(metrics["train/loss"]))
    assert np.mean(losses[-5:]) < losses[0] - 0.02, (method_name, losses[0], losses[-5:])
