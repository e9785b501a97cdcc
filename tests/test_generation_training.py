"""Training the generation tasks (SQuAD, DROP): MeZO's LM loss on the answer tokens, zo.objective=f1, and
runs through train.run that decode and score dev and test F1.

A toy SQuAD it can learn: "Context: The word is <colour>." answered by that colour, one token of a tiny
random OPT's byte-level tokenizer copied from the prompt. Full fine-tuning learns to copy it in about 80
steps; zeroth-order steps on the F1 of the greedy answers start from a model fine-tuned part of the way.
`pytest -s -k f1_objective` prints the F1 before and after the zeroth-order steps.
"""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from configs import fewshot
from fttpu import generate, generation_objectives, models, sharding, train, trainer
from fttpu.data import generation, pipeline
from fttpu.errors import ConfigError
from fttpu.methods import zo
from fttpu.models import tiny

pytestmark = pytest.mark.quick_compile  # a tiny model, short runs: compiling is the cost (tests/conftest.py)
COLOURS = ("red", "blue", "green", "black", "white", "pink", "gold", "gray")
MAX_NEW_TOKENS = 4


def toy_row(colour: str, answer: str | None = None) -> dict:
  return {
    "title": "Toy",
    "context": f"The word is {colour}.",
    "question": "What is the word?",
    "answers": [answer or colour],
  }


def write_jsonl(path, rows) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in rows)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  """(data dir with squad/{train,test}.jsonl: 48 and 8 rows, a tiny random OPT checkpoint dir)."""
  root = tmp_path_factory.mktemp("toy")
  write_jsonl(root / "data" / "squad" / "train.jsonl", [toy_row(COLOURS[i % 8]) for i in range(48)])
  write_jsonl(root / "data" / "squad" / "test.jsonl", [toy_row(COLOURS[(3 * i) % 8]) for i in range(8)])
  texts = [f"Title: Toy\nContext: The word is {c}.\nQuestion: What is the word?\nAnswer: {c}\n" for c in COLOURS]
  checkpoint = tiny.build("opt", str(root / "opt"), texts * 30, vocab_size=400)  # each " colour" one token
  return str(root / "data"), checkpoint


@pytest.fixture(scope="module")
def opt(toy):
  return models.load("opt", toy[1], lm_head=True)


def toy_config(toy, method: str, steps: int = 2, **fields):
  """SQuAD on the toy: 32 training rows, 8 dev, 8 test; prompts of 28 tokens, answers of at most 4."""
  data_dir, checkpoint = toy
  config = fewshot.get_config(f"task=squad,method={method},family=opt,checkpoint={checkpoint},steps={steps}")
  config.data.dir, config.data.cache_dir = data_dir, os.path.join(data_dir, "tfds")
  config.data.num_train, config.data.num_dev, config.data.num_test = 32, 8, 8
  config.data.max_length, config.data.max_new_tokens = 32, MAX_NEW_TOKENS
  config.train.batch_size = config.train.eval_batch_size = 8
  for key, value in fields.items():
    section, name = key.split(".")
    config[section][name] = value
  return config


def load_toy(config, tokenizer) -> generation.GenerationData:
  return generation.load_generation(config.data, tokenizer, config.seed, config.data.max_new_tokens)


# ------------------------------------------------------------------ the LM loss on the answer


def test_answer_loss_is_the_mean_nll_over_every_target_token_of_the_batch(toy, opt):
  """Rows whose answers take 1 and 3 tokens: the loss is the NLL summed over the 2 + 4 target tokens (answer
  and newline) divided by 6, computed here from a plain forward: not the mean of the rows' means, and no
  prompt token counts."""
  from fttpu.data.qa_tasks import SQUAD
  from fttpu.data.rows import Row

  rows = [Row(toy_row("red"), "a"), Row(toy_row("blue", "blue red gold"), "b")]
  encoded = generation.encode_teacher_forced(opt.tokenizer, SQUAD, rows, 32)
  batch = pipeline.whole(encoded)
  targets = [opt.tokenizer.decode(ids[mask > 0].tolist()) for ids, mask in zip(encoded.input_ids, encoded.target_mask)]
  assert targets == [" red\n", " blue red gold\n"] and encoded.target_mask.sum(1).tolist() == [2, 4]
  loss, aux = jax.jit(generation_objectives.make_answer_loss_fn(opt.module))({"model": opt.params}, batch)
  logits = np.asarray(
    opt.module.apply({"params": opt.params}, batch["input_ids"], batch["attention_mask"], output="logits"), np.float64
  )
  log_probs = (
    logits
    - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    - logits.max(-1, keepdims=True)
  )
  nll = [
    -log_probs[row, t - 1, batch["input_ids"][row, t]]
    for row in range(2)
    for t in np.flatnonzero(batch["target_mask"][row])
  ]
  assert len(nll) == 6
  np.testing.assert_allclose(float(loss), np.mean(nll), rtol=1e-5)
  row_means = np.mean([np.mean(nll[:2]), np.mean(nll[2:])])
  assert abs(np.mean(nll) - row_means) > 1e-3  # the two means differ, so the test tells them apart
  assert 0.0 <= float(aux["accuracy"]) <= 1.0


# ------------------------------------------------------------------ runs through train.run


def read_metrics(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_fine_tuning_lowers_the_answer_loss_and_raises_dev_f1(toy, tmp_path):
  """Full fine-tuning through train.run, 80 AdamW steps at a constant 1e-3: the training loss falls below
  a third of its first value and the dev F1 of the greedy answers rises from the one at step 40 to 0.75
  or more at step 80; the test line has F1 and exact match."""
  config = toy_config(toy, "full", steps=80, **{"optimizer.learning_rate": 1e-3, "optimizer.schedule": "constant"})
  config.train.eval_every, config.train.log_every = 40, 10
  train.run(config, str(tmp_path / "run"))
  lines = read_metrics(tmp_path / "run")
  losses = [line["train/loss"] for line in lines if "train/loss" in line]
  dev = [line["eval/f1"] for line in lines if line.get("split") == "dev"]
  test = lines[-1]
  print(f"train loss {losses[0]:.3f} -> {losses[-1]:.3f}; dev F1 {dev}; test F1 {test['eval/f1']:.3f}")
  assert losses[-1] < losses[0] / 3
  assert len(dev) == 2 and dev[1] >= 0.75 and dev[1] > dev[0] + 0.25
  assert test["split"] == "test" and test["final"] and {"eval/f1", "eval/em"} <= set(test)
  assert "eval/accuracy" not in test


def test_mezo_on_f1_through_train_run_writes_test_f1_and_replays(toy, tmp_path):
  """method=mezo, zo.objective=f1, 2 steps through train.run (the compiled, donated step decodes both
  probes and scores them by a host callback): train/f1 is logged, the test line has F1, the best checkpoint
  is kept by dev F1, and fttpu.replay rebuilds the parameters bit for bit from the trajectory."""
  from fttpu import replay

  config = toy_config(toy, "mezo", **{"zo.objective": "f1", "zo.noise": "rademacher", "zo.eps": 5e-2})
  config.train.eval_every = config.train.checkpoint_every = config.train.log_every = 1
  workdir = str(tmp_path / "run")
  result = train.run(config, workdir)
  lines = read_metrics(workdir)
  steps = [line for line in lines if "train/loss" in line]
  assert [line["step"] for line in steps] == [1, 2] and all(0 <= line["train/f1"] <= 1 for line in steps)
  assert result["split"] == "test" and 0 <= result["eval/f1"] <= 1 and result["examples"] == 8
  assert config.train.best_metric == "f1"
  assert replay.replay_workdir(workdir)["identical"]


# ------------------------------------------------------------------ the F1 objective


@pytest.fixture(scope="module")
def part_trained(toy, opt):
  """(toy data, the tiny OPT after 66 full fine-tuning steps at a constant 1e-3): it copies the colour on
  about half of the training rows (F1 0.47 when measured)."""
  config = toy_config(toy, "full", steps=66, **{"optimizer.learning_rate": 1e-3, "optimizer.schedule": "constant"})
  data = load_toy(config, opt.tokenizer)
  state, step, batch_at, run = compiled(config, opt, data)
  for i in range(66):
    state, _ = step(state, batch_at(i))
  return data, dataclasses.replace(opt, params=jax.device_get(run.method.merge(state.params)["model"]))


def compiled(config, model, data):
  """(state, the compiled donated train step, batch_at, setup) of `config` on one device, as train.run builds them."""
  mesh = sharding.make_mesh({"data": 1})
  batch_at, train_set = trainer.data_batches(config, data)
  run = trainer.setup(config, model, batch_at, train_set, train_golds=data.train_prompts.answers)
  state, state_sharding = trainer.place(
    run, config.seed, mesh, dict(config.sharding_rules), models.logical_axes(model.module)
  )
  step = trainer.compile_train_step(run, state_sharding, sharding.batch_shardings(mesh, batch_at(0)), mesh)
  return state, step, (lambda i: sharding.put_batch(mesh, batch_at(i))), run


def train_f1(model, params, data, noise=None) -> float:
  """F1 of the greedy answers on the training rows (what zo.objective=f1 scores), decoded outside the step."""
  _, f1 = generate.evaluate_generation(
    model.module, params, model.tokenizer, data.task, data.train_prompts, MAX_NEW_TOKENS, noise=noise, batch_size=32
  )
  return f1


def test_the_step_scores_each_probe_by_the_f1_of_its_greedy_answers(toy, part_trained):
  """Zeroth-order steps over the biases (zo.base=bitfit) with the whole training set as the batch: each
  step's projected gradient is -(F1(theta + eps z) - F1(theta - eps z)) / (2 eps) and train/f1 their mean,
  with F1 decoded and scored here outside the step for the same z (zo.draw_noise); at least one of the
  steps has probes of different F1."""
  data, model = part_trained
  eps = 5e-2
  config = toy_config(toy, "zo", **{"zo.base": "bitfit", "zo.objective": "f1", "zo.eps": eps, "train.batch_size": 32})
  state, step, batch_at, run = compiled(config, model, data)
  nonzero = 0
  for i in range(4):
    tree, labels = jax.device_get(state.params), run.method.labels(state.params)
    rng = jax.random.fold_in(jax.random.wrap_key_data(jax.device_get(state.rng)), i)
    noise = zo.draw_noise(tree, labels, zo.probe_key(rng, 0), config.zo.noise)
    probes = [zo.perturb(tree, noise, scale) for scale in (eps, -eps)]
    plus, minus = (train_f1(model, probe["model"], data, probe["noise"]) for probe in probes)
    state, metrics = step(state, batch_at(i))
    np.testing.assert_allclose(float(metrics["train/projected_grad"][0]), -(plus - minus) / (2 * eps), atol=1e-4)
    np.testing.assert_allclose(float(metrics["train/f1"]), (plus + minus) / 2, atol=1e-6)
    nonzero += plus != minus
  assert nonzero >= 1


def test_f1_objective_raises_the_f1_of_the_greedy_answers(toy, part_trained):
  """60 steps of ZO-SGD on zo.objective=f1 (2-SPSA over the biases, eps 0.05, lr 0.02, seed 2; the whole
  training set each step) from the part-trained model: the F1 of its greedy answers on the training rows
  rises by 0.1 or more (measured over seeds 1 to 6: 0.47 -> 0.59 to 0.88). The same steps with the
  objective's sign reversed would descend it."""
  data, model = part_trained
  fields = {"zo.base": "bitfit", "zo.objective": "f1", "zo.eps": 5e-2, "zo.samples": 2, "train.batch_size": 32}
  config = toy_config(toy, "zo", steps=60, **fields, **{"optimizer.learning_rate": 2e-2})
  config.seed = 2
  state, step, batch_at, run = compiled(config, model, data)
  before = train_f1(model, model.params, data)
  for i in range(60):
    state, metrics = step(state, batch_at(i))
  after = train_f1(model, jax.device_get(run.method.merge(state.params)["model"]), data)
  print(f"zo.objective=f1, 60 ZO-SGD steps (zo.base=bitfit): training-row F1 {before:.3f} -> {after:.3f}")
  assert 0.2 < before < 0.8 and after >= before + 0.1


# ------------------------------------------------------------------ bad configs


# (id, task, method, fields, expected part of the message)
BAD_CONFIGS = [
  (
    "f1 on classification",
    "sst2",
    "mezo",
    {"zo.objective": "f1"},
    r"'f1' is invalid; valid: \['loss', 'accuracy'\] \(f1",
  ),
  (
    "accuracy on generation",
    "squad",
    "mezo",
    {"zo.objective": "accuracy"},
    r"valid: \['loss', 'f1'\] \(the generation",
  ),
  ("linear probe", "squad", "head", {}, r"config.method='head' is invalid; valid: a method among \[.*'full'.*\]"),
  ("zo over a linear probe", "squad", "zo", {"zo.base": "head"}, r"config.zo.base='head' is invalid; valid: a method"),
  ("best metric", "squad", "full", {"train.best_metric": "accuracy"}, r"valid: one of \['em', 'f1'\] or '' \(none\)"),
  (
    "no answer token",
    "squad",
    "full",
    {"data.max_new_tokens": 0},
    r"max_new_tokens=0 is invalid; valid: an integer >= 1",
  ),
  (
    "no room for the prompt",
    "squad",
    "full",
    {"data.max_new_tokens": 50},  # in data.max_length=32
    r"config.data.max_length=32 is invalid; valid: at least data.max_new_tokens \+ 8 = 58",
  ),
]


@pytest.mark.parametrize(
  "task, method, fields, expected", [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS]
)
def test_bad_generation_configs_fail_at_start_up_naming_what_is_valid(toy, task, method, fields, expected):
  """Validation (before any model or data loads) refuses each, naming the key, the value and what is valid."""
  if task == "sst2":
    config = fewshot.get_config(f"task=sst2,method={method}")
    config.zo.objective = fields["zo.objective"]
  else:
    config = toy_config(toy, method, **fields)
  with pytest.raises(ConfigError, match=expected):
    trainer.validate(config)


def test_generation_defaults_validate_and_keep_the_best_checkpoint_by_f1(toy):
  """configs/fewshot.py for task=squad: MeZO's 50 answer tokens, best checkpoint by dev F1; valid with the
  LM loss and with zo.objective=f1."""
  config = fewshot.get_config(f"task=squad,method=mezo,family=opt,checkpoint={toy[1]}")
  config.data.num_train, config.data.num_dev = 1000, 500
  assert config.train.best_metric == "f1" and config.data.max_new_tokens == generation.MAX_NEW_TOKENS == 50
  trainer.validate(config)
  config.zo.objective = "f1"
  trainer.validate(config)
