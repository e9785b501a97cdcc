"""Small tokenizers shaped like each Hugging Face family's, trained with `tokenizers` alone.

For tiny random checkpoints in tests and demos (the real vocabularies cannot be downloaded
here). Special tokens, their ids and the special tokens added around a text follow the family:

  roberta  byte-level BPE; <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4 (lstrip, as RoBERTa's); "<s> X </s>"
  opt      byte-level BPE; <s>=0 <pad>=1 </s>=2 <unk>=3; "</s> X" (OPT's tokenizer uses </s> as BOS)
  llama    byte-level BPE (Llama's is a SentencePiece BPE; the ids of the specials match);
           <unk>=0 <s>=1 </s>=2; "<s> X". No pad token, as Llama's: pipeline.pad_token pads with
           <unk> (id 0), which the attention mask hides.
  bert     lowercasing WordPiece; [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4; "[CLS] X [SEP]"

A label word is one token only if the corpus makes it one: put the prompts, with their label
words, in `texts` often enough.
"""
import tokenizers
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors, trainers

FAMILIES = ("roberta", "opt", "llama", "bert")

_SPECIALS = {
    "roberta": ["<s>", "<pad>", "</s>", "<unk>", AddedToken("<mask>", lstrip=True, special=True)],
    "opt": ["<s>", "<pad>", "</s>", "<unk>"],
    "llama": ["<unk>", "<s>", "</s>"],
    "bert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
}


def _byte_level(texts, specials, vocab_size: int) -> tokenizers.Tokenizer:
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False))
  return tokenizer


def train_tokenizer(texts, family: str, vocab_size: int = 2000) -> tokenizers.Tokenizer:
  """A `family`-style tokenizer with a vocabulary of at most `vocab_size` learnt from `texts`."""
  if family not in FAMILIES:
    raise ValueError(f"family {family!r} is not one of {list(FAMILIES)}")
  texts = list(texts)
  specials = _SPECIALS[family]
  if family == "bert":
    tokenizer = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False))
    tokenizer.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    return tokenizer
  tokenizer = _byte_level(texts, specials, vocab_size)
  if family == "roberta":
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True,
                                                            add_prefix_space=False)
  elif family == "opt":
    tokenizer.post_processor = processors.TemplateProcessing(
        single="</s> $A", pair="</s> $A </s> $B:1", special_tokens=[("</s>", 2)])
  else:
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s>:1 $B:1", special_tokens=[("<s>", 1)])
  return tokenizer
