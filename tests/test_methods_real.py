"""Update rules on the real MiniLM checkpoint: LoRA/DoRA against HF PEFT, and the small
artifacts of a run reproducing its test accuracy on the pretrained weights."""

import functools

import jax
import numpy as np
import pytest

from fttpu import checkpoint, classifier, methods, step as step_lib, train
from fttpu.data import pipeline
from fttpu.methods import lora
from fttpu.sharding import make_mesh
from tests.conftest import tiny_batch
from tests.test_methods import build, make_config
from tests.test_model_parity import real_sentences


@pytest.mark.parametrize("dora,rslora", [(False, False), (True, True)])
def test_lora_and_dora_match_peft_on_the_same_adapters(minilm, dora, rslora):
  import torch
  from peft import LoraConfig, get_peft_model
  from transformers import BertModel

  _, tree, _ = build(
    minilm, make_config("lora", **{"lora.dora": dora, "lora.rslora": rslora}), batches=tiny_batch
  )  # (LoRA reads no data)
  rng = np.random.default_rng(0)
  layers = tree["model"]["layers"]
  for module in ("query", "value"):  # nonzero adapters (and magnitudes), as after training
    for name in ("lora_a", "lora_b") + (("dora_magnitude",) if dora else ()):
      leaf = layers[module][name]
      layers[module][name] = (leaf + rng.normal(0, 0.02, leaf.shape)).astype(np.float32)
  peft_model = get_peft_model(
    BertModel.from_pretrained(minilm.checkpoint_dir),
    LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], use_dora=dora, use_rslora=rslora),
  ).eval()
  with torch.no_grad():
    for l, layer in enumerate(peft_model.base_model.model.encoder.layer):
      for module in ("query", "value"):
        target, ours = getattr(layer.attention.self, module), layers[module]
        target.lora_A["default"].weight.copy_(torch.from_numpy(ours["lora_a"][l].T.copy()))
        target.lora_B["default"].weight.copy_(torch.from_numpy(ours["lora_b"][l].reshape(8, -1).T.copy()))
        if dora:
          target.lora_magnitude_vector["default"].weight.copy_(torch.from_numpy(ours["dora_magnitude"][l].reshape(-1)))
  ids, mask = pipeline.encode(minilm.tokenizer, real_sentences(), 64)
  with torch.no_grad():
    theirs = peft_model(
      input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
    ).last_hidden_state.numpy()
  unmerged = np.asarray(minilm.module.apply({"params": tree["model"]}, ids, mask))
  merged = np.asarray(minilm.module.apply({"params": lora.merge(tree)["model"]}, ids, mask))
  real = mask.astype(bool)
  base_hidden = np.asarray(minilm.module.apply({"params": minilm.params}, ids, mask))
  assert np.abs(theirs[real] - base_hidden[real]).max() > 1e-2  # the adapters matter
  assert np.abs(unmerged[real] - theirs[real]).max() <= 1e-4
  assert np.abs(merged[real] - unmerged[real]).max() <= 1e-5


TEST_ROWS = 256  # of SST-2's 872 test rows (data.num_test): each MiniLM pass over all of them takes 7 s


# LoRA in make test; sparse and SpIEL (45 s each here) in make test-all
@pytest.mark.parametrize(
  "method,overrides",
  [
    ("lora", {}),
    pytest.param("sparse", {}, marks=pytest.mark.slow),
    pytest.param("spiel", {"spiel.every": 2}, marks=pytest.mark.slow),
  ],
)
def test_artifact_on_the_pretrained_weights_reproduces_the_runs_test_accuracy(
  method, overrides, sst2_config, sst2_16shot, minilm, tmp_path
):
  config = sst2_config.copy_and_resolve_references()
  config.method = method
  for key, value in overrides.items():
    section, field = key.split(".")
    config[section][field] = value
  config.train.steps, config.train.eval_every, config.train.checkpoint_every = 4, 4, 4
  config.data.num_test = TEST_ROWS
  record = train.run(config, str(tmp_path))
  assert record["examples"] == TEST_ROWS
  tree = checkpoint.load_artifact(str(tmp_path / "artifact.safetensors"), minilm.params)
  logits_fn = classifier.make_classifier(minilm.module, "similarity", config.model.logit_scale).logits
  eval_step = jax.jit(functools.partial(step_lib.eval_step, logits_fn=logits_fn))
  reloaded = train.evaluate(
    eval_step,
    methods.METHODS.get(method).make(config, minilm).merge(tree),
    pipeline.load_few_shot(config.data, minilm.tokenizer, config.seed).test,  # the run's TEST_ROWS rows
    sst2_16shot.prompts,
    64,
    make_mesh({"data": -1}),
  )
  assert reloaded["accuracy"] == record["eval/accuracy"]
  np.testing.assert_allclose(reloaded["loss"], record["eval/loss"], rtol=1e-5)
  size_mb = (tmp_path / "artifact.safetensors").stat().st_size / 2**20
  assert size_mb < 2, f"{method}'s artifact is {size_mb:.1f} MB; the model is 87 MB"
