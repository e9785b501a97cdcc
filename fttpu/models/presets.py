"""config.json contents of the papers' models, for planning a run without downloading them.

fttpu.plan sizes a run from the architecture alone (no weights are read), so a preset name stands
in for a checkpoint directory there: `python -m fttpu.plan --model=opt-13b ...`. The values are
those of the models' Hugging Face config.json files (the fields fttpu reads).
"""

ROBERTA = {
  "model_type": "roberta",
  "vocab_size": 50265,
  "max_position_embeddings": 514,
  "type_vocab_size": 1,
  "layer_norm_eps": 1e-5,
  "hidden_act": "gelu",
  "pad_token_id": 1,
  "bos_token_id": 0,
  "eos_token_id": 2,
}
OPT = {
  "model_type": "opt",
  "vocab_size": 50272,
  "max_position_embeddings": 2048,
  "do_layer_norm_before": True,
  "activation_function": "relu",
  "pad_token_id": 1,
  "bos_token_id": 2,
  "eos_token_id": 2,
  "enable_bias": True,
  "torch_dtype": "float16",
}
LLAMA = {
  "model_type": "llama",
  "vocab_size": 32000,
  "max_position_embeddings": 4096,
  "rms_norm_eps": 1e-5,
  "rope_theta": 10000.0,
  "hidden_act": "silu",
  "tie_word_embeddings": False,
  "torch_dtype": "float16",
}


def _opt(hidden: int, layers: int, heads: int) -> dict:
  return {
    **OPT,
    "hidden_size": hidden,
    "word_embed_proj_dim": hidden,
    "num_hidden_layers": layers,
    "num_attention_heads": heads,
    "ffn_dim": 4 * hidden,
  }


PRESETS = {
  "roberta-base": {
    **ROBERTA,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
  },
  "roberta-large": {
    **ROBERTA,
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
  },
  "opt-125m": _opt(768, 12, 12),
  "opt-1.3b": _opt(2048, 24, 32),
  "opt-2.7b": _opt(2560, 32, 32),
  "opt-6.7b": _opt(4096, 32, 32),
  "opt-13b": _opt(5120, 40, 40),
  "opt-30b": _opt(7168, 48, 56),
  "llama-2-7b": {
    **LLAMA,
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "intermediate_size": 11008,
  },
  "llama-2-13b": {
    **LLAMA,
    "hidden_size": 5120,
    "num_hidden_layers": 40,
    "num_attention_heads": 40,
    "num_key_value_heads": 40,
    "intermediate_size": 13824,
  },
}


def check(names, flag: str) -> None:
  """ConfigError naming `flag`, the unknown names and the valid presets, unless every name is a preset."""
  from fttpu.errors import ConfigError

  unknown = [name for name in names if name not in PRESETS]
  if unknown:
    raise ConfigError(f"{flag}: {unknown} are not presets; valid: {sorted(PRESETS)}")
