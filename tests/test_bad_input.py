"""Bad input, table-driven: every entry fails before anything compiles, with one of fttpu's user
errors (what the CLI prints as one line, no traceback) whose message names the problem.
A property-based test then feeds random config values: fttpu either runs or fails that way."""

import os
import shutil
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from fttpu import errors
from fttpu import config as config_lib, methods, train
from tests.conftest import REPO, data_dir

GOOD_TRAIN_ROWS = 40  # per class, from the real SST-2 training file


def sst2_rows(count: int = GOOD_TRAIN_ROWS) -> list[str]:
  """`count` rows of each class of the real SST-2 training file."""
  with open(os.path.join(data_dir(), "sst2", "train.tsv")) as f:
    rows = f.read().splitlines()[1:]
  return [r for r in rows if r.endswith("\t0")][:count] + [r for r in rows if r.endswith("\t1")][:count]


def write_task(root, train=None, test=None):
  """A data.dir holding sst2/ with the given train.tsv and test.tsv contents (bytes or str; None: no file)."""
  folder = root / "data" / "sst2"
  folder.mkdir(parents=True)
  for name, content in (("train.tsv", train), ("test.tsv", test)):
    if content is not None:
      (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
  return str(root / "data")


GOOD = "sentence\tlabel\n" + "\n".join(sst2_rows()) + "\n"


def make_config(tiny_roberta, arg: str = "", **fields):
  """The tiny RoBERTa few-shot config (2 steps, k=4) with `fields` ('a.b' -> value) set."""
  from configs import fewshot

  config = fewshot.get_config(f"family=roberta,checkpoint={tiny_roberta},steps=2,k=4" + (f",{arg}" if arg else ""))
  config.data.dir = data_dir()
  config.data.cache_dir = os.environ["FTTPU_TFDS_DIR"]  # the session's (tiny_roberta's fixture sets it)
  for key, value in fields.items():
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    if isinstance(value, dict):
      node[leaf] = type(node[leaf])(value)
    else:
      node[leaf] = value
  return config


# (id, fields to set, or a function (tmp_path, tiny_roberta) -> fields, expected part of the message)
CONFIG_CASES = [
  ("unknown method", {"method": "adapter"}, "config.method='adapter' is invalid; valid: ['bitfit', 'full'"),
  ("unknown family", {"model.family": "gpt2"}, "config.model.family='gpt2' is invalid; valid: ['bert', 'llama'"),
  (
    "classifier for another family",
    {"model.classifier": "causal"},
    "config.model.classifier='causal' is invalid; valid: 'mlm' or 'similarity' for the encoder family 'roberta'",
  ),
  ("unknown classifier", {"model.classifier": "knn"}, "config.model.classifier='knn' is invalid"),
  (
    "unknown dtype",
    {"model.param_dtype": "float8"},
    "config.model.param_dtype='float8' is invalid; valid: ['bfloat16'",
  ),
  (
    "no checkpoint directory",
    {"model.checkpoint": "/nonexistent/roberta"},
    "config.model.checkpoint='/nonexistent/roberta' is invalid; valid: a Hugging Face checkpoint directory with config.json",
  ),
  ("logit scale", {"model.logit_scale": 0.0}, "config.model.logit_scale=0.0 is invalid; valid: a number > 0"),
  (
    "unknown task",
    {"data.task": "imdb"},
    "config.data.task='imdb' is invalid; valid: ['boolq', 'cb', 'copa', 'drop', 'mnli'",
  ),
  ("k of 0", {"data.k": 0}, "config.data.k=0 is invalid; valid: an integer >= 1"),
  ("max_length too short", {"data.max_length": 4}, "config.data.max_length=4 is invalid; valid: 8..the checkpoint's"),
  (
    "max_length past the positions",
    {"data.max_length": 4096},
    "config.data.max_length=4096 is invalid; valid: 8..130 tokens (the checkpoint's 130 positions)",
  ),
  (
    "template without its field",
    {"data.mlm_template": "It was {mask}."},
    "data.mlm_template='It was {mask}.' must contain",
  ),
  ("negative steps", {"train.steps": -1}, "config.train.steps=-1 is invalid; valid: an integer >= 0"),
  ("batch size 0", {"train.batch_size": 0}, "config.train.batch_size=0 is invalid; valid: an integer >= 1"),
  ("eval_every 0", {"train.eval_every": 0}, "config.train.eval_every=0 is invalid"),
  ("keep_checkpoints 0", {"train.keep_checkpoints": 0}, "config.train.keep_checkpoints=0 is invalid"),
  (
    "unknown best metric",
    {"train.best_metric": "f1"},
    "config.train.best_metric='f1' is invalid; valid: one of ['accuracy', 'loss'] or '' (none)",
  ),
  (
    "unknown nonfinite policy",
    {"train.nonfinite": "ignore"},
    "config.train.nonfinite='ignore' is invalid; valid: ['stop', 'skip']",
  ),
  ("unknown optimizer", {"optimizer.name": "adam"}, "config.optimizer.name='adam' is invalid; valid: ['adamw', 'sgd'"),
  ("unknown schedule", {"optimizer.schedule": "step"}, "config.optimizer.schedule='step' is invalid"),
  (
    "learning rate 0",
    {"optimizer.learning_rate": 0.0},
    "config.optimizer.learning_rate=0.0 is invalid; valid: a number > 0",
  ),
  ("learning rate NaN", {"optimizer.learning_rate": float("nan")}, "config.optimizer.learning_rate=nan is invalid"),
  ("negative weight decay", {"optimizer.weight_decay": -0.1}, "config.optimizer.weight_decay=-0.1 is invalid"),
  ("density above 1", {"sparse.density": 1.5}, "config.sparse.density=1.5 is invalid; valid: a fraction in (0, 1]"),
  ("unknown selector", {"sparse.selector": "top"}, "config.sparse.selector='top' is invalid; valid: ['random'"),
  ("structure with half", {"sparse.selector": "half", "sparse.structure": "heads"}, "config.sparse.structure='heads'"),
  ("LoRA rank 0", {"lora.rank": 0}, "config.lora.rank=0 is invalid; valid: an integer >= 1"),
  ("LoRA dropout 1", {"lora.dropout": 1.0}, "config.lora.dropout=1.0 is invalid; valid: a probability in [0, 1)"),
  ("bad regex", {"lora.targets": "(query"}, "config.lora.targets='(query' is not a valid regular expression"),
  (
    "regex matching nothing",
    {"method": "lora", "lora.targets": "attention_in"},
    "lora.targets='attention_in' matches no projection",
  ),
  ("zo eps 0", {"zo.eps": 0.0}, "config.zo.eps=0.0 is invalid; valid: a number > 0"),
  ("unknown noise", {"zo.noise": "uniform"}, "config.zo.noise='uniform' is invalid; valid: ['gaussian', 'rademacher']"),
  ("unknown zo base", {"zo.base": "adapter"}, "config.zo.base='adapter' is invalid"),
  ("unknown mesh axis", {"mesh": {"data": -1, "pipeline": 2}}, "axes among ['data', 'fsdp', 'tensor']"),
  ("two -1 mesh axes", {"mesh": {"data": -1, "fsdp": -1, "tensor": 1}}, "at most one axis of size -1"),
  (
    "mesh larger than the devices",
    {"mesh": {"data": 4, "fsdp": 1, "tensor": 1}},
    "config.mesh={'data': 4, 'fsdp': 1, 'tensor': 1} needs 4 devices; 1 are available",
  ),
  ("rule onto an unknown axis", {"sharding_rules.embed": "model"}, "config.sharding_rules.embed='model' is invalid"),
]

DATA_CASES = [
  ("missing data directory", lambda root: str(root / "nowhere"), "nowhere/sst2, and the TFDS"),
  ("missing test file", lambda root: write_task(root, GOOD, None), "test.tsv: file not found"),
  ("empty train file", lambda root: write_task(root, "", GOOD), "train.tsv: empty file; expected a header line"),
  (
    "wrong columns",
    lambda root: write_task(root, GOOD.replace("sentence\tlabel", "text\tstars", 1), GOOD),
    "train.tsv:1: expected the header 'sentence\\tlabel'",
  ),
  (
    "a row with a missing column",
    lambda root: write_task(root, GOOD.replace("\t0\n", "\n", 1), GOOD),
    "train.tsv:2: expected 2 tab-separated columns (sentence, label), got 1",
  ),
  (
    "label out of range",
    lambda root: write_task(root, GOOD.replace("\t1\n", "\t7\n", 1), GOOD),
    f"train.tsv:{GOOD_TRAIN_ROWS + 2}: label '7' is not an integer in 0..1",
  ),
  (
    "non-numeric label",
    lambda root: write_task(root, GOOD.replace("\t0\n", "\tpositive\n", 1), GOOD),
    "train.tsv:2: label 'positive' is not an integer in 0..1",
  ),
  (
    "non-UTF-8 bytes",
    lambda root: write_task(root, GOOD.encode().replace(b"\t0\n", b"\xff\xfe\t0\n", 1), GOOD),
    "train.tsv:2: not valid UTF-8",
  ),
  ("header only", lambda root: write_task(root, GOOD, "sentence\tlabel\n"), "test.tsv: no rows after the header"),
]


def user_error(config, workdir) -> str:
  """The message of the user error train.run fails with (the test fails on any other outcome)."""
  with pytest.raises(errors.USER_ERRORS) as error:
    train.run(config, str(workdir))
  return str(error.value)


@pytest.mark.parametrize("fields, expected", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_values_fail_naming_the_key_and_what_is_valid(tiny_roberta, tmp_path, fields, expected):
  assert expected in user_error(make_config(tiny_roberta, **fields), tmp_path / "run")


@pytest.mark.parametrize("make_dir, expected", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_data_fails_naming_the_file_the_line_and_what_was_expected(tiny_roberta, tmp_path, make_dir, expected):
  data = make_dir(tmp_path)
  assert expected in user_error(make_config(tiny_roberta, **{"data.dir": data}), tmp_path / "run")


def test_k_larger_than_a_class_says_how_many_rows_it_has(tiny_roberta, tmp_path):
  data = write_task(tmp_path, GOOD, GOOD)
  message = user_error(make_config(tiny_roberta, **{"data.dir": data, "data.k": 30}), tmp_path / "run")
  assert f"class 0 has {GOOD_TRAIN_ROWS} training rows; k=30 needs 60 (k train + k dev)" in message


def write_folder_task(root, classes: int) -> str:
  """A data.dir holding mytask/ whose train.tsv and test.tsv have `classes` classes of real SST-2 sentences."""
  rows = [r.rsplit("\t", 1)[0] for r in sst2_rows()]
  lines = "sentence\tlabel\n" + "".join(f"{row}\t{i % classes}\n" for i, row in enumerate(rows))
  folder = root / "data" / "mytask"
  folder.mkdir(parents=True)
  for name in ("train.tsv", "test.tsv"):
    (folder / name).write_text(lines)
  return str(root / "data")


@pytest.mark.parametrize(
  "protocol", [{"data.k": 4}, {"data.num_train": 24, "data.num_dev": 8}], ids=["k-shot", "MeZO rows"]
)
def test_label_words_must_match_the_classes_the_data_shows(tiny_roberta, tmp_path, protocol):
  """Three label words on two-class files is refused under every sampling protocol, naming both counts
  (it used to train a three-way classifier, or to say 'lower data.k'); two words on three classes too."""
  prompts = {"data.task": "mytask", "data.mlm_template": "{sentence} It was {mask}.", **protocol}
  two_classes = make_config(
    tiny_roberta,
    **{"data.dir": write_folder_task(tmp_path / "two", 2), "data.label_words": ("bad", "okay", "good"), **prompts},
  )
  assert (
    "task 'mytask': its data files show 2 classes (labels 0..1 in its test and train splits) but the task "
    "has 3 ['0', '1', '2']"
  ) in user_error(two_classes, tmp_path / "run")
  three_classes = make_config(
    tiny_roberta,
    **{"data.dir": write_folder_task(tmp_path / "three", 3), "data.label_words": ("bad", "good"), **prompts},
  )
  assert "label '2' is not an integer in 0..1 (the task has 2 classes, one per label word or description" in user_error(
    three_classes, tmp_path / "run"
  )


@pytest.mark.parametrize(
  "arg, expected",
  [
    ("stepz=3", "unknown config argument 'stepz'; valid keys: ["),
    ("steps=abc", "config argument steps='abc' is not a valid int"),
    ("steps", "config argument 'steps' is not key=value"),
  ],
)
def test_bad_config_arguments_fail_naming_the_argument(arg, expected, tiny_roberta, tmp_path):
  with pytest.raises(errors.ConfigError, match=expected.replace("[", r"\[")):
    make_config(tiny_roberta, arg)


@pytest.fixture(scope="module")
def finished_run(tiny_roberta, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("finished")
  assert train.run(make_config(tiny_roberta), str(workdir / "run"))["final"]
  return workdir / "run"


@pytest.mark.parametrize(
  "fields, expected",
  [
    ({"method": "lora"}, "method: 'full' -> 'lora'"),
    ({"model.logit_scale": 10.0}, "model.logit_scale: 20.0 -> 10.0"),
    ({"data.k": 8}, "data.k: 4 -> 8"),
  ],
  ids=["another method", "another model setting", "another data setting"],
)
def test_a_workdir_of_another_run_fails_with_what_differs(finished_run, tiny_roberta, tmp_path, fields, expected):
  message = user_error(make_config(tiny_roberta, **fields), finished_run)
  assert f"{finished_run} holds checkpoints of a run with another config (" in message and expected in message


def test_a_checkpoint_directory_of_another_family_or_without_weights_fails(tiny_roberta, tmp_path):
  no_weights = tmp_path / "no-weights"
  shutil.copytree(tiny_roberta, no_weights)
  os.remove(no_weights / "model.safetensors")
  assert "has neither model.safetensors nor model.safetensors.index.json" in user_error(
    make_config(str(no_weights)), tmp_path / "a"
  )
  wrong_family = make_config(tiny_roberta, **{"model.family": "bert", "model.classifier": "mlm"})
  assert "config.json says model_type='roberta' but model.family='bert'" in user_error(wrong_family, tmp_path / "b")


CLI_CASES = [
  (
    ["--config.train.stepz=3"],
    "unknown config key config.train.stepz (from --config.train.stepz); valid keys of config.train: [",
  ),
  (["--config.train.steps=abc"], "config.train.steps='abc' is not a valid int, e.g. 200"),
  (["--config.optimizer.learning_rate=fast"], "config.optimizer.learning_rate='fast' is not a valid float"),
  (["--config.train.steps=2.5"], "config.train.steps='2.5' is not a valid int"),
]


@pytest.mark.parametrize("flags, expected", CLI_CASES, ids=[c[0][0] for c in CLI_CASES])
def test_bad_command_line_flags_fail_with_one_line(flags, expected, tmp_path):
  result = subprocess.run(
    [sys.executable, "-m", "fttpu.main", "--config=configs/fewshot.py", *flags, f"--workdir={tmp_path}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode != 0 and expected in result.stderr and "Traceback" not in result.stderr


def test_a_config_file_that_does_not_exist_is_named(tmp_path):
  result = subprocess.run(
    [sys.executable, "-m", "fttpu.main", "--config=configs/fewshoot.py", f"--workdir={tmp_path}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode != 0 and "no config file 'configs/fewshoot.py'" in result.stderr


# ---------------------------------------------------------------- property-based

RANDOM_FIELDS = {
  "method": st.sampled_from(sorted(methods.METHODS) + ["adapter", ""]),
  "train.steps": st.integers(-2, 3),
  "train.batch_size": st.integers(-1, 40),
  "train.eval_batch_size": st.integers(0, 300),
  "data.k": st.integers(-1, 40),
  "data.max_length": st.integers(0, 90),
  "optimizer.name": st.sampled_from(["adamw", "sgd", "momentum", "sign", "adam"]),
  "optimizer.learning_rate": st.floats(-1.0, 10.0) | st.sampled_from([float("nan"), float("inf")]),
  "optimizer.warmup_steps": st.integers(-1, 5),
  "lora.rank": st.integers(-1, 80),
  "sparse.density": st.floats(-0.5, 1.5),
  "zo.eps": st.floats(-1e-3, 1.0),
  "zo.samples": st.integers(-1, 3),
  "train.nonfinite": st.sampled_from(["stop", "skip", "raise"]),
  "mesh.data": st.integers(-2, 3),
}


@settings(
  max_examples=12,
  deadline=None,
  derandomize=True,
  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.fixed_dictionaries({}, optional=RANDOM_FIELDS))
def test_random_config_values_run_or_fail_with_a_user_error(tiny_roberta, tmp_path_factory, fields):
  """Values come in as strings, as from the command line (config.set_fields parses each as its field's
  type). Whatever they are, fttpu trains and evaluates, or raises one of errors.USER_ERRORS."""
  workdir = tmp_path_factory.mktemp("random")
  try:
    config = make_config(tiny_roberta)
    config_lib.set_fields(config, {k: str(v) for k, v in fields.items()})
    record = train.run(config, str(workdir / "run"))
  except errors.USER_ERRORS as e:
    assert str(e)
    event(f"failed: {type(e).__name__}")
  else:
    assert record["final"] and 0 <= record["eval/accuracy"] <= 1
    event("ran")
