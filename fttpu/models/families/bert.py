"""BERT: the encoder of fttpu/models/bert.py with BERT's inputs, names and WordPiece tokenizer."""

from typing import Any

from tokenizers import models as token_models, decoders, normalizers, pre_tokenizers, processors, trainers
import tokenizers

from fttpu.models import bert as encoder
from fttpu.models.families.base import Family, Names, register, tiny_common
from fttpu.models.transformer import ModelConfig

LAYER = {
  "query": "attention.self.query",
  "key": "attention.self.key",
  "value": "attention.self.value",
  "attention_out": "attention.output.dense",
  "attention_norm": "attention.output.LayerNorm",
  "mlp_in": "intermediate.dense",
  "mlp_out": "output.dense",
  "mlp_norm": "output.LayerNorm",
}
MODULES = {
  "word": "embeddings.word_embeddings",
  "position": "embeddings.position_embeddings",
  "token_type": "embeddings.token_type_embeddings",
  "embedding_norm": "embeddings.LayerNorm",
}
IGNORED = (r"pooler\.", r"embeddings\.position_ids", r"^cls\.seq_relationship", r"decoder\.(weight|bias)$")


def config_from_hf(hf: dict[str, Any], family: str = "bert", **overrides) -> ModelConfig:
  """The ModelConfig of a Hugging Face BERT or RoBERTa config.json."""
  if hf.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError(f"position_embedding_type={hf['position_embedding_type']!r} is not supported; only 'absolute' is.")
  if hf["hidden_size"] % hf["num_attention_heads"]:
    raise ValueError(
      f"hidden_size={hf['hidden_size']} is not divisible by num_attention_heads={hf['num_attention_heads']}"
    )
  roberta = family == "roberta"
  pad = hf.get("pad_token_id", 1 if roberta else 0)
  pad = (1 if roberta else 0) if pad is None else pad
  return ModelConfig(
    family=family,
    vocab_size=hf["vocab_size"],
    hidden_size=hf["hidden_size"],
    num_layers=hf["num_hidden_layers"],
    num_heads=hf["num_attention_heads"],
    intermediate_size=hf["intermediate_size"],
    max_positions=hf["max_position_embeddings"],
    norm_eps=hf.get("layer_norm_eps", 1e-12),
    hidden_act=hf.get("hidden_act", "gelu"),
    hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
    attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
    pad_token_id=pad,
    type_vocab_size=hf.get("type_vocab_size", 2),
    position_offset=pad + 1 if roberta else 0,
    positions_from_ids=roberta,
    **overrides,
  )


def tiny_config(vocab_size: int, max_positions: int) -> dict:
  return {
    "architectures": ["BertForMaskedLM"],
    "model_type": "bert",
    **tiny_common(vocab_size, max_positions),
    "intermediate_size": 128,
    "type_vocab_size": 2,
    "pad_token_id": 0,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
  }


def tokenizer(texts, vocab_size: int) -> tokenizers.Tokenizer:
  """A lowercasing WordPiece tokenizer with [CLS] ... [SEP], as BERT's."""
  out = tokenizers.Tokenizer(token_models.WordPiece(unk_token="[UNK]"))
  out.normalizer = normalizers.BertNormalizer(lowercase=True)
  out.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  out.decoder = decoders.WordPiece()
  out.train_from_iterator(
    list(texts),
    trainers.WordPieceTrainer(
      vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False
    ),
  )
  out.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
  return out


FAMILY = register(
  Family(
    name="bert",
    config_from_hf=config_from_hf,
    module=encoder.BertEncoder,
    masked_lm=True,
    names=Names(
      ("bert.", ""),
      "encoder.layer.{i}.",
      MODULES,
      LAYER,
      {
        "lm_transform": "cls.predictions.transform.dense",
        "lm_norm": "cls.predictions.transform.LayerNorm",
        "lm_bias": "cls.predictions.bias",
      },
      IGNORED,
      head_only=(r"^cls\.",),
    ),
    default_classifier="similarity",
    output_embedding="word",
    tiny_config=tiny_config,
    tokenizer=tokenizer,
  )
)
