"""Shared fixtures: the real MiniLM checkpoint and real 16-shot SST-2, loaded once per session."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def share_compiled_programs():
  """One persistent XLA compilation cache for the whole test session: the many end-to-end runs
  (subprocesses, which inherit the environment) and in-process tests compile the same steps on the
  same tiny models, and each compiles only once. It starts empty, so a session proves what a fresh
  clone does; pytest-xdist's workers inherit the controller's directory."""
  if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return
  path = tempfile.mkdtemp(prefix="fttpu-test-xla-cache-")
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = path
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.1"
  # A size limit turns on the cache's file lock: without it, a process can read an entry another is writing.
  os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(8 << 30)


share_compiled_programs()


def with_fake_devices(count: int) -> dict:
  """The environment of a subprocess that sees `count` CPU devices (the session's XLA_FLAGS kept)."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}".strip()
  return {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}


def huge_pages_for_subprocesses():
  """The environment fttpu's command lines restart themselves into (fttpu.host_memory), set once here so
  that the many runs the tests start do not each restart."""
  from fttpu import host_memory

  tunables = host_memory.tunables_with_huge_pages(os.environ.get("GLIBC_TUNABLES", ""))
  if tunables is not None:
    os.environ["GLIBC_TUNABLES"] = tunables


huge_pages_for_subprocesses()

# Files whose programs all run on tiny random models for a few steps (or, test_plan.py, only compile them):
# compiling them is nearly all their cost, so they compile with XLA's optimisation passes off
# (jax_disable_most_optimizations) and at its O0 level (jax_optimization_level), in-process and in the runs
# they start. Measured: the tiny BERT's full step compiles in 1.3 s instead of 4.1; the plans' compiled
# memory figures (arguments, temporaries, aliases) are the same with and without. What they check is
# fttpu's programs, not XLA's code generation. Everything on the real checkpoint, and the tiny runs of a
# hundred steps or more (test_resilience, test_multihost), compiles as users' programs do; a short run in such a file is marked `quick_compile`.
QUICK_COMPILE_FILES = (
  "test_architecture.py",
  "test_bad_input.py",
  "test_experiments.py",
  "test_family_methods.py",
  "test_methods.py",
  "test_plan.py",
  "test_remote_workdir.py",
  "test_sharding.py",
  "test_workdir.py",
  "test_zo.py",
  "test_zo_consistency.py",
)


def quick_compile():
  """XLA's optimisations off in this process and the processes it starts, until the generator resumes."""
  import jax

  quick = {"jax_disable_most_optimizations": True, "jax_optimization_level": "O0"}
  before = {name: jax.config.values[name] for name in quick}
  for name, value in quick.items():
    os.environ[name.upper()] = str(value)
    jax.config.update(name, value)
  try:
    yield
  finally:
    for name, value in before.items():
      del os.environ[name.upper()]
      jax.config.update(name, value)


@pytest.fixture(autouse=True, scope="module")
def quick_compile_file(request):
  """For the files of QUICK_COMPILE_FILES (module-scoped, so that their module fixtures compile so too)."""
  yield from quick_compile() if request.path.name in QUICK_COMPILE_FILES else iter([None])


@pytest.fixture(autouse=True)
def quick_compile_test(request):
  """For a test marked `quick_compile`: a short in-process run in a file that also has long ones."""
  marked = request.node.get_closest_marker("quick_compile") and request.path.name not in QUICK_COMPILE_FILES
  yield from quick_compile() if marked else iter([None])


def data_dir() -> str:
  """DATA_DIR (relative paths are taken from the repo root, as make passes them), else ../shared/data."""
  path = Path(os.environ.get("DATA_DIR", "../shared/data"))
  path = path if path.is_absolute() else (REPO / path).resolve()
  if not (path / "sst2" / "train.tsv").is_file():
    raise FileNotFoundError(f"the tests need the real task data: no {path}/sst2/train.tsv; set DATA_DIR")
  return str(path)


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  os.environ["FTTPU_TFDS_DIR"] = path  # subprocesses of the end-to-end tests prepare here too
  return path


@pytest.fixture(scope="session")
def minilm():
  from fttpu import models

  return models.load("bert", "")


@pytest.fixture(scope="session")
def sst2_config(tfds_dir):
  from configs import fewshot

  config = fewshot.get_config("task=sst2,method=full,k=16,seed=42")
  config.data.dir = data_dir()
  config.data.cache_dir = tfds_dir
  return config


@pytest.fixture(scope="session")
def sst2_16shot(sst2_config, minilm):
  from fttpu.data import pipeline

  return pipeline.load_few_shot(sst2_config.data, minilm.tokenizer, sst2_config.seed)


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory, tfds_dir):
  """A tiny random RoBERTa checkpoint directory (tokenizer trained on SST-2), for end-to-end runs."""
  from fttpu.models import tiny

  path = str(tmp_path_factory.mktemp("tiny-roberta"))
  return tiny.build("roberta", path, tiny.task_texts("sst2", data_dir(), tfds_dir))


@pytest.fixture(scope="session")
def tiny():
  return make_tiny()


def make_tiny():
  """A 2-layer random BERT (hidden 32, 4 heads) for the mechanics of methods: fast to compile."""
  import jax
  import numpy as np
  from fttpu import models
  from fttpu.models import bert

  config = models.transformer.ModelConfig(
    family="bert",
    vocab_size=1200,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    intermediate_size=64,
    max_positions=32,
    type_vocab_size=2,
  )
  module = bert.BertEncoder(config)
  params = jax.tree_util.tree_map(np.asarray, models.init_params(module, jax.random.key(0)))
  return models.LoadedModel(module, params, None, config, "")


def tiny_batch(seed: int, size: int = 8, length: int = 12) -> dict:
  """Random token ids with padding, binary labels and two label descriptions."""
  import numpy as np

  rng = np.random.default_rng(seed)
  lengths = rng.integers(4, length + 1, size)
  mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
  return {
    "input_ids": (rng.integers(1000, 1200, (size, length)) * mask).astype(np.int32),
    "attention_mask": mask,
    "labels": rng.integers(0, 2, size).astype(np.int32),
    "weights": np.ones(size, np.float32),
    "label_input_ids": rng.integers(1000, 1200, (2, 5)).astype(np.int32),
    "label_attention_mask": np.ones((2, 5), np.int32),
  }


# The method matrix (tests/test_family_methods.py) runs whole on RoBERTa (encoder, MLM) and Llama (decoder:
# rotary, GQA, untied head) in `make test`; BERT-MLM runs RoBERTa's code but for positions, OPT Llama's
# decoder with other options, so `make test` runs these methods on them and `make test-all` the rest.
SHARED_CODE_FAMILIES = ("bert", "opt")
SHARED_CODE_FAST_METHODS = ("full", "mezo")
# Rematerialisation wraps the scanned layer the same way for every method: `make test` checks its gradients
# for full fine-tuning on RoBERTa and Llama, `make test-all` for LoRA and on BERT and OPT too.
REMAT_FAST = (("roberta", "full"), ("llama", "full"))
# Methods that only choose which leaves train (whole layers, LISA's sampled layers, SpIEL's entries): the
# same labels on every family, so `make test` runs them on RoBERTa and `make test-all` on Llama too.
LABEL_ONLY_METHODS = ("layers", "lisa", "spiel")
# Packed streams: RoBERTa runs BERT's encoder and OPT Llama's decoder path (other positions), so `make test`
# checks bert and llama and leaves these to `make test-all`.
STREAMS_SHARED_CODE_FAMILIES = ("roberta", "opt")


# The files that take 10 s or more, longest first (measured; only the order depends on it). `make test`
# runs the files over two pytest-xdist workers (--dist loadfile: a file's module fixtures are built once),
# handing out files in this order and the short rest after them: longest first leaves the least for one
# worker to run alone at the end.
LONGEST_FILES = (
  "test_family_methods.py",
  "test_zo.py",
  "test_resilience.py",
  "test_methods.py",
  "test_experiments.py",
  "test_zo_consistency.py",
  "test_workdir.py",
  "test_plan.py",
  "test_sharding.py",
  "test_generation_training.py",
  "test_quantize.py",
  "test_zo_real.py",
  "test_bad_input.py",
  "test_generate.py",
  "test_main.py",
  "test_optim_bench.py",
  "test_multihost.py",
  "test_methods_real.py",
  "test_step.py",
  "test_cli_errors.py",
  "test_families.py",
  "test_accumulation.py",
  "test_model_parity.py",
  "test_architecture.py",
)


def pytest_collection_modifyitems(config, items):
  import pytest

  rank = lambda item: LONGEST_FILES.index(item.path.name) if item.path.name in LONGEST_FILES else len(LONGEST_FILES)
  items.sort(key=rank)  # stable: the tests of a file keep their order
  for item in items:
    if only_in_test_all(item):
      item.add_marker(pytest.mark.slow)


def only_in_test_all(item) -> bool:
  """The cells of the family x method matrices (and of the packed-streams test over families) that `make
  test` leaves to `make test-all` (above)."""
  params = getattr(getattr(item, "callspec", None), "params", {})
  family, method = params.get("family_setup"), params.get("method_name")
  if item.originalname == "test_every_method_trains_its_leaves_on_every_family":
    if family in SHARED_CODE_FAMILIES:
      return method not in SHARED_CODE_FAST_METHODS
    return family == "llama" and method in LABEL_ONLY_METHODS
  if item.originalname == "test_every_remat_policy_gives_the_gradients_of_none":
    return (family, method) not in REMAT_FAST
  if item.originalname == "test_several_streams_in_one_pass_equal_each_alone_perturbed_and_differentiated":
    return params.get("pair") in STREAMS_SHARED_CODE_FAMILIES
  return False
