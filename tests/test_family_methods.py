"""Every update rule runs on every family, classified as the paper tables do (tiny random models).

bert and roberta classify with the MLM head at the prompt's mask (LM-BFF), opt and llama by the
label words' log-likelihood (MeZO's OPT protocol). Checkpoints are tiny random models with a
tokenizer trained on SST-2 (fttpu.models.tiny), read through the Hugging Face import.
"""
import jax
import numpy as np
import pytest

from configs import fewshot
from fttpu import classifier, methods, models, optim, step as step_lib
from fttpu.config import ConfigError
from fttpu.data import pipeline, tsv
from fttpu.methods import masks
from fttpu.models import tiny
from fttpu.state import TrainState
from tests.conftest import data_dir

FAMILIES = ("bert", "roberta", "opt", "llama")
METHODS = ("full", "head", "bitfit", "layers", "sparse", "spiel", "lora", "prefix", "mezo", "zo")


@pytest.fixture(scope="session")
def sst2_texts():
  rows, _ = tsv.read_tsv(f"{data_dir()}/sst2/train.tsv", 2)
  texts = [row[0] for row in rows[:3000]]
  return texts + [f"{s} It was {w}." for s in texts[:20] for w in ("great", "terrible")] * 10


@pytest.fixture(scope="session", params=FAMILIES)
def family_setup(request, sst2_texts, tmp_path_factory):
  """(family, config factory, loaded model, few-shot data) for a tiny random checkpoint of the family."""
  family = request.param
  path = tiny.build(family, str(tmp_path_factory.mktemp(f"tiny-{family}")), sst2_texts)

  def config_for(method):
    config = fewshot.get_config(f"family={family},checkpoint={path},method={method},k=4,steps=3")
    config.data.dir = data_dir()
    config.data.max_length = 24
    config.train.batch_size = 4
    return config

  config = config_for("full")
  model = models.load_for(config.model)
  data = pipeline.load_few_shot(config.data, model.tokenizer, config.seed, config.model.classifier)
  return family, config_for, model, data


def run_steps(config, model, data, steps=3):
  """(initial tree, final state, losses) after `steps` jitted train steps of config.method."""
  optimizer = optim.make_optimizer(config.optimizer, 10)
  method = methods.get_method(config, optimizer, model)
  classify = classifier.make_classifier(model.module, config.model.classifier)
  loss_fn = classifier.make_loss_fn(classify.logits)
  batch_at = lambda i: {**pipeline.train_batch(data.train, i, config.train.batch_size, 0), **data.prompts}
  context = methods.Context(loss_fn, classify, batch_at, {**pipeline.whole(data.train), **data.prompts},
                            model.module, optimizer)
  tree = method.prepare(model.params, jax.random.key(0), context)
  state = TrainState.create(tree, method.tx, 0)
  initial = jax.tree_util.tree_map(np.array, state.params)
  step = jax.jit(lambda s, b: step_lib.train_step(s, b, method=method, loss_fn=loss_fn))
  losses = []
  for i in range(steps):
    state, metrics = step(state, batch_at(i))
    losses.append(float(metrics["train/loss"]))
  return method, initial, state, losses


@pytest.mark.parametrize("method_name", METHODS)
def test_every_method_trains_its_leaves_on_every_family(family_setup, method_name):
  family, config_for, model, data = family_setup
  config = config_for(method_name)
  if method_name == "bitfit" and family == "llama":
    with pytest.raises(ConfigError, match="bitfit's bias pattern.*matches no parameter"):
      run_steps(config, model, data)
    return  # Llama has no bias terms: BitFit has nothing to train, and says so
  method, initial, state, losses = run_steps(config, model, data)
  assert np.all(np.isfinite(losses)), losses
  labels = method.labels(state.params)
  moved = frozen_moved = 0
  for before, after, label in zip(jax.tree_util.tree_leaves(initial), jax.tree_util.tree_leaves(state.params),
                                  jax.tree_util.tree_leaves(labels)):
    changed = not np.array_equal(before, np.asarray(after))
    moved += changed and label == masks.TRAIN
    frozen_moved += changed and label == masks.FREEZE
  assert moved >= 1 and frozen_moved == 0


def test_head_starts_at_the_zero_shot_logits(family_setup):
  """The head method's initial linear head reproduces the prompt classifier's logits (mlm exactly; causal
  with one-token label words up to the per-row log-normaliser, which softmax over classes ignores)."""
  family, config_for, model, data = family_setup
  config = config_for("head")
  classify = classifier.make_classifier(model.module, config.model.classifier)
  batch = {**pipeline.whole(data.dev), **data.prompts}
  zero_shot = np.asarray(classify.logits({"model": model.params}, batch))
  kernel, bias = classify.zero_shot_head(model.params, batch)
  with_head = np.asarray(classify.logits({"model": model.params, "head": {"kernel": kernel, "bias": bias}}, batch))
  if config.model.classifier == "causal":
    zero_shot, with_head = (jax.nn.log_softmax(x, -1) for x in (zero_shot, with_head))
  np.testing.assert_allclose(with_head, zero_shot, atol=2e-4)
