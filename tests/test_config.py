"""Bad config input fails at start-up, naming the key and what is valid."""

import pytest

from configs import fewshot
from fttpu.config import check_overrides
from fttpu.errors import ConfigError
from fttpu.trainer import validate


def test_defaults_validate():
  validate(fewshot.get_config("task=trec,method=zero_shot,k=8,seed=13"))


@pytest.mark.parametrize(
  "arg, message",
  [
    (
      "tsk=sst2",
      r"unknown config argument 'tsk'; valid keys: \['checkpoint', 'classifier', 'family', 'k', 'method', 'seed', 'steps', 'task', 'zo_base'\]",
    ),
    ("k=many", r"k='many' is not a valid int"),
    ("method", r"'method' is not key=value"),
  ],
)
def test_bad_config_arguments(arg, message):
  with pytest.raises(ConfigError, match=message):
    fewshot.get_config(arg)


@pytest.mark.parametrize(
  "key, value, message",
  [
    (
      "method",
      "adapter",
      r"config.method='adapter' is invalid; valid: \['bitfit', 'full', 'head', 'layers', 'lora', 'mezo', 'prefix', 'sparse', 'spiel', 'zero_shot', 'zo'\]",
    ),
    ("model.family", "gpt", r"config.model.family='gpt' is invalid; valid: \['bert', 'llama', 'opt', 'roberta'\]"),
    ("model.checkpoint", "/nonexistent", r"model.checkpoint='/nonexistent' is invalid; valid: a Hugging Face"),
    (
      "data.task",
      "imdb",
      r"data.task='imdb' is invalid; valid: \['boolq', 'cb', 'copa', 'drop', 'mnli', 'multirc', 'record', 'rte', 'snli', 'squad', 'sst2', 'sst5', 'trec', 'wic', 'wsc'\], a folder under data.dir",
    ),
    ("data.k", 0, r"data.k=0 is invalid; valid: an integer >= 1"),
    ("data.max_length", 4, r"data.max_length=4 is invalid; valid: 8..the checkpoint's positions"),
    ("data.pad_to_multiple_of", -16, r"data.pad_to_multiple_of=-16 is invalid; valid: an integer >= 0"),
    ("data.num_train", 1000, r"data.num_dev=0 is invalid; valid: > 0 exactly when data.num_train > 0"),
    ("data.num_test", -1, r"data.num_test=-1 is invalid; valid: an integer >= 0"),
    ("train.steps", -5, r"train.steps=-5 is invalid"),
    ("train.batch_size", 0, r"train.batch_size=0 is invalid"),
    ("train.eval_every", 0, r"train.eval_every=0 is invalid"),
    (
      "optimizer.name",
      "lion",
      r"optimizer.name='lion' is invalid; valid: \['adamw', 'sgd', 'momentum', 'sign', 'zo_sgd_sign'\]",
    ),
    ("optimizer.schedule", "step", r"optimizer.schedule='step' is invalid; valid: \['constant', 'linear', 'cosine'\]"),
    ("optimizer.learning_rate", 0.0, r"optimizer.learning_rate=0.0 is invalid; valid: a number > 0"),
    ("model.logit_scale", -1.0, r"model.logit_scale=-1.0 is invalid"),
    ("mesh.data", 0, r"mesh=.* is invalid; valid: axis sizes >= 1, or -1"),
    ("mesh.fsdp", -1, r"mesh=.* is invalid; valid: at most one axis of size -1"),
    (
      "sharding_rules.embed",
      "model",
      r"sharding_rules.embed='model' is invalid; valid: '' \(replicated\) or mesh axes "
      r"of config.mesh \['data', 'fsdp', 'tensor'\]",
    ),
    ("sharding_rules.mlp", "tensor,tensor", r"sharding_rules.mlp='tensor,tensor' is invalid"),
    ("model.classifier", "pooled", r"model.classifier='pooled' is invalid; valid: \['similarity', 'mlm', 'causal'\]"),
    (
      "model.classifier",
      "causal",
      r"model.classifier='causal' is invalid; valid: 'mlm' or 'similarity' for the "
      r"encoder family 'bert' \(causal needs opt or llama\)",
    ),
    ("model.param_dtype", "int8", r"model.param_dtype='int8' is invalid; valid: \['bfloat16', 'float16', 'float32'\]"),
    ("model.compute_dtype", "fp8", r"model.compute_dtype='fp8' is invalid"),
    ("model.family", "opt", r"model.checkpoint='' is invalid; valid: a Hugging Face opt checkpoint directory"),
  ],
)
def test_invalid_values_name_key_and_valid_range(key, value, message):
  config = fewshot.get_config()
  section, _, field = key.rpartition(".")
  (config[section] if section else config)[field] = value
  with pytest.raises(ConfigError, match=message):
    validate(config)


def test_unknown_override_keys_list_the_valid_ones():
  config = fewshot.get_config()
  check_overrides(config, ["--config.data.k=4", "--config.train.steps=3", "--workdir=x"])
  with pytest.raises(
    ConfigError, match=r"unknown config key config.data.kk .*valid keys of config.data: \['cache_dir'"
  ):
    check_overrides(config, ["--config.data.kk=4"])
  with pytest.raises(ConfigError, match=r"unknown config key config.trainer .*valid keys of config: \['data'"):
    check_overrides(config, ["--config.trainer.steps=4"])


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("data.template", "Review: {text}", r"data.template='Review: \{text\}' must contain \{sentence\} and no other"),
    ("data.template", "Review:", r"data.template='Review:' must contain \{sentence\}"),
    ("data.label_descriptions", ("bad", "good", "neutral"), r"task 'sst2' has 2 classes .* but 3 label descriptions"),
    ("data.mlm_template", "{sentence} It was.", r"data.mlm_template=.* \{mask\}"),
    ("data.label_words", ("bad",), r"label.words"),
  ],
)
def test_prompts_that_do_not_fit_the_task_fail_at_validation(key, value, message, tmp_path):
  (tmp_path / "config.json").write_text("{}")  # a checkpoint directory (validation does not read the weights)
  config = fewshot.get_config(
    f"family=roberta,checkpoint={tmp_path}" if key in ("data.mlm_template", "data.label_words") else None
  )
  section, _, field = key.rpartition(".")
  config[section][field] = value
  with pytest.raises(ConfigError, match=message):
    validate(config)


def test_mesh_axes_and_rule_names_are_checked():
  config = fewshot.get_config()
  config.mesh = {"data": -1, "pipeline": 2}
  with pytest.raises(ConfigError, match=r"mesh=.* is invalid; valid: axes among \['data', 'fsdp', 'tensor'\]"):
    validate(config)
  config = fewshot.get_config()
  config.sharding_rules = {**config.sharding_rules, "hidden": "fsdp"}
  with pytest.raises(ConfigError, match=r"valid: keys among the models' logical axes \['embed', 'heads'"):
    validate(config)
