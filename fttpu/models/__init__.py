"""Model families by name: a Flax module, its config from config.json, checkpoint import/export.

family   architecture                              Hugging Face classes it reads and writes
bert     BERT encoder, optional MLM head           BertModel, BertForMaskedLM
roberta  RoBERTa encoder, optional MLM head        RobertaModel, RobertaForMaskedLM
opt      OPT decoder with its LM head              OPTForCausalLM
llama    Llama decoder with its LM head            LlamaForCausalLM
"""

import dataclasses
import logging
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import tokenizers

from fttpu import classifier, errors, files
from fttpu.errors import check
from fttpu.models import hf, quantize as quantization
from fttpu.models.families import FAMILIES
from fttpu.models.transformer import DTYPES, ModelConfig


NUMPY_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A pretrained model: module, params (numpy in host memory, or sharded jax.Arrays) and tokenizer."""

  module: nn.Module
  params: dict
  tokenizer: Optional[tokenizers.Tokenizer]
  config: ModelConfig
  checkpoint_dir: str


def with_remat(model: LoadedModel, policy: str) -> LoadedModel:
  """`model` whose scanned layers rematerialise by `policy` (train.remat, a key of transformer.REMAT_POLICIES) in
  the backward pass; the parameters are the same arrays."""
  if policy == model.config.remat:
    return model
  config = dataclasses.replace(model.config, remat=policy)
  return dataclasses.replace(model, module=model.module.clone(config=config), config=config)


def validate(config) -> None:
  """config.model: family, classifier style for the family, dtypes, checkpoint directory."""
  m = config.model
  check(m.family in FAMILIES, "model.family", m.family, str(FAMILIES.names()))
  check(m.classifier in classifier.STYLES, "model.classifier", m.classifier, str(list(classifier.STYLES)))
  masked = FAMILIES.get(m.family).masked_lm
  check(
    m.classifier != "mlm" or masked,
    "model.classifier",
    m.classifier,
    f"'causal' or 'similarity' for the decoder family {m.family!r} (mlm needs bert or roberta)",
  )
  check(
    m.classifier != "causal" or not masked,
    "model.classifier",
    m.classifier,
    f"'mlm' or 'similarity' for the encoder family {m.family!r} (causal needs opt or llama)",
  )
  for key in ("param_dtype", "compute_dtype"):
    check(m[key] in DTYPES, f"model.{key}", m[key], str(sorted(DTYPES)))
  quantize = m.get("quantize", "none")
  check(quantize in quantization.MODES, "model.quantize", quantize, str(list(quantization.MODES)))
  check(
    m.checkpoint or m.family == "bert",
    "model.checkpoint",
    m.checkpoint,
    f"a Hugging Face {m.family} checkpoint directory (the installed default is a BERT checkpoint)",
  )
  if m.checkpoint:
    check(
      files.isfile(files.join(m.checkpoint, "config.json")),
      "model.checkpoint",
      m.checkpoint,
      "a Hugging Face checkpoint directory with config.json (or '' for the default)",
    )
  check(m.logit_scale > 0, "model.logit_scale", m.logit_scale, "a number > 0")


def check_length(config: ModelConfig, max_length: int) -> None:
  """Fails unless `max_length` tokens fit the model's learned (or rotary) positions."""
  usable = config.max_positions - config.position_offset
  if max_length > usable:
    from fttpu.errors import ConfigError

    raise ConfigError(
      f"config.data.max_length={max_length} is invalid; valid: 8..{usable} tokens (the checkpoint's {usable} positions)"
    )


def make_config(
  family_name: str,
  hf_config: dict,
  *,
  lm_head: bool = False,
  dtype: str = "float32",
  param_dtype: str = "float32",
  quantize: str = "none",
) -> ModelConfig:
  """The ModelConfig of a family from a config.json dict, the precision policy and the projections'
  storage (`quantize`: none, int8, nf4)."""
  family = FAMILIES.get(family_name)
  model_type = hf_config.get("model_type", family_name)
  if model_type != family_name:
    raise errors.CheckpointError(
      f"config.json says model_type={model_type!r} but model.family={family_name!r}; "
      f"set model.family to the checkpoint's family (valid: {FAMILIES.names()})"
    )
  for key, value in (("model.compute_dtype", dtype), ("model.param_dtype", param_dtype)):
    if value not in DTYPES:
      raise ValueError(f"{key}={value!r} is invalid; valid: {sorted(DTYPES)}")
  overrides = {"dtype": dtype, "param_dtype": param_dtype}
  if family.masked_lm:
    overrides["lm_head"] = lm_head
  return dataclasses.replace(family.config_from_hf(hf_config, **overrides), quantize=quantize)


def with_quantize(module: nn.Module, mode: str) -> nn.Module:
  """`module` (a family's) with its layers' projection kernels stored as `mode` (none, int8, nf4)."""
  return (
    module if module.config.quantize == mode else module.clone(config=dataclasses.replace(module.config, quantize=mode))
  )


def _init(module: nn.Module):
  dummy = jnp.ones((1, 4), jnp.int32)
  return module.init(jax.random.key(0), dummy, dummy)["params"]


def param_shapes(module: nn.Module) -> dict:
  """ShapeDtypeStructs of the module's parameters (nothing is computed or allocated)."""
  return nn.unbox(jax.eval_shape(lambda: _init(module)))


def logical_axes(module: nn.Module) -> dict:
  """PartitionSpecs of logical axis names (embed, heads, kv, mlp, vocab, layers) per parameter."""
  return nn.get_partition_spec(jax.eval_shape(lambda: _init(module)))


def init_params(module: nn.Module, rng: jax.Array) -> dict:
  """Random parameters (tests and tiny checkpoints)."""
  return nn.unbox(module.init(rng, jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32))["params"])


# Leaves random_params fills with a constant: norm scales, and the scales of N(0, 0.02^2) weights stored as
# int8 (kernel_int8 ~ N(0, 32^2)) or nf4 (about 3 standard deviations per block of 64).
RANDOM_CONSTANTS = {"scale": 1.0, "bias": 0.0, "kernel_scale": 0.02 / 32, "kernel_absmax": 0.06}
RANDOM_KINDS = (*RANDOM_CONSTANTS, "kernel_int8", "kernel_nf4")


def random_params(module: nn.Module, seed: int = 0) -> dict:
  """Weights of the module's shapes for timing and memory (fttpu.bench on a preset), not for training.

  Made leaf by leaf in their storage dtype, each by one fused program, so nothing beyond the weights is
  ever held (flax's init would draw each stacked leaf's threefry bits and float32 values first): norm
  scales 1, biases 0, every other leaf N(0, 0.02^2) from the counter-based noise of perturbation.py;
  quantised kernels (model.quantize) as random codes with the scales of such weights.
  """
  from fttpu.models import perturbation

  def fill(shape: tuple, dtype, kind: str, key: jax.Array) -> jax.Array:
    if kind in RANDOM_CONSTANTS:
      return jnp.full(shape, RANDOM_CONSTANTS[kind], dtype)
    normal = perturbation.leaf_noise(key, shape, "gaussian").value(shape)
    if kind == "kernel_int8":
      return jnp.clip(jnp.round(normal * 32), -127, 127).astype(dtype)
    if kind == "kernel_nf4":
      return (jnp.round(normal * 64).astype(jnp.int32) % 256).astype(dtype)
    return (0.02 * normal).astype(dtype)

  make = jax.jit(fill, static_argnums=(0, 1, 2))
  paths_and_shapes = jax.tree_util.tree_flatten_with_path(param_shapes(module))
  leaves = []
  for index, (path, shape) in enumerate(paths_and_shapes[0]):
    name = getattr(path[-1], "key", "")
    kind = "bias" if name.endswith("bias") else name if name in RANDOM_KINDS else "weight"
    key = jnp.array([seed, index], jnp.uint32)
    leaves.append(make(tuple(shape.shape), shape.dtype, kind, key))
  return jax.tree_util.tree_unflatten(paths_and_shapes[1], leaves)


def load(
  family_name: str,
  checkpoint_dir: str,
  *,
  lm_head: bool = False,
  dtype: str = "float32",
  param_dtype: str = "float32",
  quantize: str = "none",
  shardings=None,
) -> LoadedModel:
  """Loads config.json, safetensors and tokenizer.json of a Hugging Face directory.

  `lm_head`: build (and read) an encoder's masked-LM head. `quantize` (int8, nf4): store the layers'
  projection kernels quantised, each quantised as it is read, one layer at a time. `shardings`: a tree of
  target shardings (or a function of the module giving one); each process then reads only its slices.
  """
  path = hf.resolve_checkpoint_dir(checkpoint_dir)
  config = make_config(
    family_name, hf.read_config(path), lm_head=lm_head, dtype=dtype, param_dtype=param_dtype, quantize=quantize
  )
  module = FAMILIES.get(family_name).module(config)
  shapes = param_shapes(with_quantize(module, "none"))  # the checkpoint's tensors
  if callable(shardings):
    shardings = shardings(module)
  params, reader = hf.load_params(
    path, family_name, shapes, NUMPY_DTYPES[param_dtype], shardings, head=config.lm_head, quantize=quantize
  )
  total = sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes))
  logging.info(
    "read %.0f%% of the checkpoint's %d parameters (the blocks this process's devices hold)",
    100 * sum(n for _, n in reader.reads) / total,
    total,
  )
  tokenizer_path = f"{path}/tokenizer.json"
  try:
    tokenizer = tokenizers.Tokenizer.from_file(tokenizer_path)
  except Exception as e:  # tokenizers raises a bare Exception for missing or malformed files
    raise errors.CheckpointError(f"cannot read {tokenizer_path}: {e}") from e
  return LoadedModel(module, params, tokenizer, config, path)


def load_for(model_config, shardings=None) -> LoadedModel:
  """`load` as a run's config.model says (family, checkpoint, classifier style, precision)."""
  return load(
    model_config.family,
    model_config.checkpoint,
    lm_head=model_config.classifier == "mlm",
    dtype=model_config.compute_dtype,
    param_dtype=model_config.param_dtype,
    quantize=model_config.get("quantize", "none"),
    shardings=shardings,
  )


def export(model: LoadedModel, params: dict, out_dir: str) -> str:
  """Writes plain model `params` (a method's merged tree["model"]) as a Hugging Face directory that
  `transformers` loads, with the source checkpoint's config.json and tokenizer files."""
  if model.config.quantize != "none":
    raise errors.CheckpointError(
      f"the model's projections are stored quantised (model.quantize={model.config.quantize!r}) and adapters "
      "stay unmerged on them: export needs float weights; the run's artifact.safetensors holds what it trained, "
      "to load onto the float checkpoint (fttpu.checkpoint.load_artifact)"
    )
  dtype = model.config.param_dtype
  return hf.export(
    jax.tree_util.tree_map(np.asarray, jax.device_get(params)),
    model.config.family,
    model.config.lm_head,
    model.checkpoint_dir,
    out_dir,
    {"torch_dtype": dtype, "dtype": dtype},
  )
