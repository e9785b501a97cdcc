"""The byte-level BPE that the tokenizers of the byte-level families share (each family module,
fttpu/models/families/, builds its own: specials and post-processing), trained with `tokenizers` alone.

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
from tokenizers import decoders, models, pre_tokenizers, trainers


def byte_level(texts, specials, vocab_size: int) -> tokenizers.Tokenizer:
  """A byte-level BPE tokenizer (RoBERTa, OPT, Llama style) with `specials` first, learnt from `texts`."""
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.train_from_iterator(
    list(texts),
    trainers.BpeTrainer(
      vocab_size=vocab_size,
      special_tokens=specials,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
    ),
  )
  return tokenizer
