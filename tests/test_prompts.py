"""Prompt styles: LM-BFF masked-LM templates, MeZO-style causal candidates, sentence-pair tasks."""

import os
import socket

import ml_collections
import numpy as np
import pytest
import tokenizers

from fttpu import errors
from fttpu.errors import ConfigError
from fttpu.data import pipeline, tasks, tfds_local, tsv
from fttpu.models import tiny
from tests.conftest import data_dir

TREC_WORDS = tasks.TASKS["trec"].label_words


def write(path, text: str):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)


def sst2_rows(n: int, offset: int = 0) -> tuple[list[tuple[str, ...]], np.ndarray]:
  rows, labels = tsv.read_tsv(os.path.join(data_dir(), "sst2", "train.tsv"), 2)
  return rows[offset : offset + n], labels[offset : offset + n]


def corpus() -> list[str]:
  """A few hundred real SST-2 sentences plus the prompts, so that the label words become single tokens."""
  sentences = [row[0].strip() for row in sst2_rows(300)[0]]
  prompts = [f"It was {w}." for w in ("great", "terrible")] + [f"{w}: what is it?" for w in TREC_WORDS]
  prompts += ["Yes or No?\nYes", "Yes or No?\nNo", "Maybe"]
  return sentences + prompts * 30


@pytest.fixture(scope="module")
def roberta():
  return tiny.train_tokenizer(corpus(), "roberta")


@pytest.fixture(scope="module")
def opt():
  return tiny.train_tokenizer(corpus(), "opt")


@pytest.fixture(scope="module")
def minilm_tokenizer():
  from fttpu.models import hf

  return tokenizers.Tokenizer.from_file(os.path.join(hf.default_checkpoint_dir(), "tokenizer.json"))


def real(tokenizer, ids, mask) -> str:
  """The text of the attended tokens, special tokens included."""
  return tokenizer.decode(np.asarray(ids)[np.asarray(mask) == 1].tolist(), skip_special_tokens=False)


def test_family_tokenizers_have_the_families_special_tokens_and_padding():
  expected = {
    "roberta": ({"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}, "<s> hi</s>", 1),
    "opt": ({"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}, "</s> hi", 1),
    "llama": ({"<unk>": 0, "<s>": 1, "</s>": 2}, "<s> hi", 0),
    "bert": ({"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}, "[CLS] hi [SEP]", 0),
  }
  for family, (specials, text, pad_id) in expected.items():
    tokenizer = tiny.train_tokenizer(["hi there", "hi again"] * 5, family, vocab_size=300)
    assert {t: tokenizer.token_to_id(t) for t in specials} == specials, family
    ids, mask = pipeline.encode(tokenizer, [" hi"], 6)
    assert real(tokenizer, ids[0], mask[0]) == text, family
    assert (ids[0][mask[0] == 0] == pad_id).all() and mask[0].sum() < 6, family


def test_sst2_mlm_rows_are_the_lm_bff_template_with_one_mask(roberta):
  rows, labels = sst2_rows(60)
  encoded = pipeline.encode_split(roberta, tasks.get_task("sst2", data_dir(), style="mlm"), rows, labels, 256, "mlm")
  assert encoded.input_ids.shape == (60, 256) and encoded.target_mask is None
  mask_id = roberta.token_to_id("<mask>")
  for (sentence,), ids, mask in zip(rows, encoded.input_ids, encoded.attention_mask):
    assert (ids == mask_id).sum() == 1
    # <mask> takes the space before it (lstrip), so the text reads "It was<mask>.", as LM-BFF's `_was*mask*.`.
    assert real(roberta, ids, mask) == "<s>" + sentence.strip() + " It was<mask>.</s>"
    assert np.flatnonzero(ids == mask_id)[0] == mask.sum() - 3  # then "." and "</s>"


def test_truncation_never_cuts_the_mask(roberta):
  mask_id = roberta.token_to_id("<mask>")
  long = " ".join(["a truly long and winding sentence"] * 40)
  sst2 = pipeline.encode_mlm(roberta, tasks.get_task("sst2", data_dir(), style="mlm"), [(long,)], [1], 16)
  assert sst2.attention_mask.sum() == 16 and (sst2.input_ids == mask_id).sum() == 1
  assert real(roberta, sst2.input_ids[0], sst2.attention_mask[0]).startswith("<s>")  # the start of the text went
  assert real(roberta, sst2.input_ids[0], sst2.attention_mask[0]).endswith(" winding sentence It was<mask>.</s>")
  # TREC's mask comes first: the end of the question goes instead.
  trec = pipeline.encode_mlm(roberta, tasks.get_task("trec", data_dir(), style="mlm"), [(long + " ?",)], [0], 16)
  assert trec.input_ids[0, :3].tolist() == [0, mask_id, roberta.token_to_id(":")] and trec.input_ids[0, -1] == 2
  assert real(roberta, trec.input_ids[0], trec.attention_mask[0]).startswith("<s><mask>: a truly long")


def test_verbalizer_ids_are_the_label_words_after_a_space(roberta):
  ids = pipeline.prompts(roberta, tasks.get_task("sst2", data_dir(), style="mlm"), "mlm")["verbalizer_ids"]
  assert ids.dtype == np.int32 and [roberta.decode([i]) for i in ids] == [" terrible", " great"]


def test_a_label_word_of_several_tokens_fails_naming_it(roberta):
  task = tasks.get_task("sst2", data_dir(), label_words=("terrible", "zqxwvjk"), style="mlm")
  with pytest.raises(
    ConfigError,
    match=r"label word 'zqxwvjk' is not one token: ' zqxwvjk' -> \['Ġ', 'z'.*"
    r"MLM prompts need one token per class",
  ):
    pipeline.prompts(roberta, task, "mlm")


def test_tokenizer_without_a_mask_token_fails(opt):
  with pytest.raises(ConfigError, match="no mask token"):
    pipeline.encode_mlm(opt, tasks.get_task("sst2", data_dir(), style="mlm"), [("fine",)], [1], 16)


def test_wordpiece_tokenizer_gives_mask_and_single_token_words(minilm_tokenizer):
  assert pipeline.mask_token(minilm_tokenizer) == ("[MASK]", minilm_tokenizer.token_to_id("[MASK]"))
  for name in ("sst2", "trec", "rte", "mnli"):
    task = tasks.TASKS[name]
    ids = pipeline.verbalizer_ids(minilm_tokenizer, task.label_words)
    assert [minilm_tokenizer.id_to_token(i) for i in ids] == [w.lower() for w in task.label_words]
  task = tasks.get_task("trec", data_dir(), style="mlm")
  encoded = pipeline.encode_mlm(minilm_tokenizer, task, [("What is a nematode ?",)], [0], 16)
  assert [minilm_tokenizer.id_to_token(i) for i in encoded.input_ids[0, :5]] == ["[CLS]", "[MASK]", ":", "what", "is"]


def test_causal_target_mask_marks_exactly_the_label_word(opt):
  rows, labels = sst2_rows(30)
  rows = rows + [(" ".join(["an overlong review"] * 50),)]
  task = tasks.get_task("sst2", data_dir(), style="causal")
  encoded = pipeline.encode_split(opt, task, rows, np.append(labels, 1), 48, "causal")
  assert encoded.input_ids.shape == encoded.target_mask.shape == (31, 2, 48)
  assert encoded.target_mask.dtype == np.int32
  for r, (sentence,) in enumerate(rows):
    for c, word in enumerate(("terrible", "great")):
      ids, mask, target = encoded.input_ids[r, c], encoded.attention_mask[r, c], encoded.target_mask[r, c]
      assert opt.decode(ids[target == 1].tolist()) == " " + word
      assert ids[0] == opt.token_to_id("</s>")  # OPT's BOS survives left truncation
      assert (target <= mask).all() and np.flatnonzero(target)[-1] == mask.sum() - 1
      if r < 30 and mask.sum() < 48:  # untruncated: BOS, the prompt, the word
        assert real(opt, ids, mask) == f"</s>{sentence.strip()} It was {word}"
  assert encoded.attention_mask[30].sum(-1).tolist() == [48, 48]


def test_causal_word_follows_a_prompt_ending_in_a_newline_directly(opt):
  task = tasks.get_task("rte", data_dir(), style="causal")
  encoded = pipeline.encode_causal(opt, task, [("It rains.", "It is wet.")], [0], 64)
  for c, word in enumerate(("Yes", "No")):
    ids, mask, target = encoded.input_ids[0, c], encoded.attention_mask[0, c], encoded.target_mask[0, c]
    assert real(opt, ids, mask) == f'</s>It rains.\nDoes this mean that "It is wet." is true? Yes or No?\n{word}'
    assert opt.decode(ids[target == 1].tolist()) == word


def rte_like(root, train_rows: str = None):
  body = "sentence1\tsentence2\tlabel\n"
  write(
    root / "train.tsv",
    train_rows or body + "".join(f"The cat sat on mat {i}.\tA cat is on mat {i}.\t{i % 2}\n" for i in range(12)),
  )
  write(root / "test.tsv", body + "Dogs bark loudly!\tSome animals make noise.\t0\n")


def test_pair_task_directory_encodes_both_sentences(tmp_path, tfds_dir, roberta):
  rte_like(tmp_path / "rte")
  task = tasks.get_task("rte", str(tmp_path), style="mlm")
  assert task.text_fields == ("sentence1", "sentence2")
  splits = tfds_local.load_splits(task, str(tmp_path), tfds_dir)
  assert splits["train"][0][3] == ("The cat sat on mat 3.", "A cat is on mat 3.")
  assert splits["test"][0] == [("Dogs bark loudly!", "Some animals make noise.")]
  encoded = pipeline.encode_split(roberta, task, *splits["test"], 64, "mlm")
  # sentence1 without its final punctuation, "?", the mask, ",", sentence2 with a lowercase first letter.
  assert (
    real(roberta, encoded.input_ids[0], encoded.attention_mask[0])
    == "<s>Dogs bark loudly?<mask>, some animals make noise.</s>"
  )
  causal = pipeline.encode_split(roberta, task, *splits["test"], 64, "causal")
  assert (
    real(roberta, causal.input_ids[0, 1], causal.attention_mask[0, 1])
    == '<s>Dogs bark loudly!\nDoes this mean that "Some animals make noise." is true? Yes or No?\nNo</s>'
  )
  # An unregistered pair directory takes its fields from the header.
  rte_like(tmp_path / "pairs")
  pairs = tasks.get_task(
    "pairs", str(tmp_path), mlm_template="{sentence1} {mask} {sentence2}", label_words=("Yes", "No"), style="mlm"
  )
  assert pairs.text_fields == ("sentence1", "sentence2") and pairs.num_classes == 2


def test_a_mask_between_two_sentences_survives_a_long_pair(roberta):
  task = tasks.get_task("rte", data_dir(), style="mlm")
  premise = " ".join(["The committee discussed the budget at length."] * 30)
  encoded = pipeline.encode_mlm(roberta, task, [(premise, "The budget was discussed.")], [0], 32)
  text = real(roberta, encoded.input_ids[0], encoded.attention_mask[0])
  assert (encoded.input_ids == roberta.token_to_id("<mask>")).sum() == 1
  assert text.startswith("<s>The committee discussed") and text.endswith("?<mask>, the budget was discussed.</s>")


@pytest.mark.parametrize(
  "body, message",
  [
    (
      "sentence1\tsentence2\tlabel\nA.\tB.\t1\nonly one\t0\n",
      r"pairs/train.tsv:3: expected 3 tab-separated columns \(sentence1, sentence2, label\), got 2",
    ),
    ("sentence1\tsentence2\tlabel\nA.\tB.\tC.\t1\n", r"pairs/train.tsv:2: expected 3 tab-separated columns"),
    ("sentence1\tsentence2\tlabel\nA.\tB.\tyes\n", r"pairs/train.tsv:2: label 'yes' is not an integer in 0..1"),
    ("sentence\tlabel\nA.\t1\n", r"pairs/train.tsv:1: expected the header 'sentence1\\tsentence2\\tlabel'"),
  ],
)
def test_malformed_pair_rows_name_file_and_line(tmp_path, tfds_dir, body, message):
  rte_like(tmp_path / "pairs", body)
  with pytest.raises(errors.DataError, match=message):
    tsv.read_tsv(str(tmp_path / "pairs/train.tsv"), 2, ("sentence1", "sentence2"))
  task = tasks.get_task("rte", str(tmp_path))
  os.rename(tmp_path / "pairs", tmp_path / "rte")
  with pytest.raises(errors.DataError, match=message.replace("pairs/", "rte/")):
    tfds_local.load_splits(task, str(tmp_path), tfds_dir)


@pytest.mark.parametrize(
  "overrides, message",
  [
    (
      dict(mlm_template="{sentence} It was good."),
      r"data.mlm_template='.*' must contain \{sentence\} and \{mask\} "
      r"exactly once$",
    ),
    (dict(mlm_template="{mask} {sentence} {mask}"), r"must contain \{sentence\} and \{mask\} exactly once$"),
    (
      dict(causal_template="{sentence} It was {mask}"),
      r"data.causal_template=.* must contain \{sentence\} and no "
      r"other \{...\} field",
    ),
    (dict(template="{sentence} {mask}"), r"data.template=.* no other \{...\} field"),
    (dict(label_words=("bad", "okay", "good")), r"task 'sst2' has 2 classes .* but 3 label words"),
  ],
)
def test_prompt_overrides_are_checked(overrides, message):
  with pytest.raises(ConfigError, match=message):
    tasks.get_task("sst2", data_dir(), **overrides)


def test_pair_templates_need_both_sentences_and_unregistered_tasks_their_words(tmp_path):
  with pytest.raises(
    ConfigError,
    match=r"data.template='\{sentence\}' must contain \{sentence1\}, \{sentence2\} "
    r"and no other",
  ):
    tasks.get_task("rte", data_dir(), template="{sentence}")
  with pytest.raises(ConfigError, match=r"must contain \{sentence1\}, \{sentence2\} and \{mask\} exactly once$"):
    tasks.get_task("mnli", data_dir(), mlm_template="{sentence1_trimmed}? {mask}")
  task = tasks.get_task("mnli", data_dir(), mlm_template="{sentence2_lowerfirst} {mask} {sentence1_trimmed}")
  assert (
    tasks.fill(task.mlm_template, task.text_fields, ("A dog runs .", "The dog moves."), mask="_")
    == "the dog moves. _ A dog runs"
  )
  rte_like(tmp_path / "pairs")
  with pytest.raises(ConfigError, match=r"not registered.*--config.data.mlm_template=.*--config.data.label_words"):
    tasks.get_task("pairs", str(tmp_path), style="mlm")
  with pytest.raises(ConfigError, match=r"task 'pairs' has no mlm_template for style 'mlm'"):
    tasks.get_task("pairs", str(tmp_path), label_words=("Yes", "No"), style="mlm")


def test_missing_data_says_which_tasks_have_a_catalog_entry(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match=r"task 'sst5' has no TFDS catalog entry and no directory"):
    tfds_local.load_splits(tasks.get_task("sst5", str(tmp_path)), str(tmp_path), str(tmp_path / "tfds"))

  def offline(*args, **kwargs):
    raise socket.gaierror(-2, "Name or service not known")

  monkeypatch.setattr(socket, "getaddrinfo", offline)
  for name, catalog in (("rte", "glue/rte"), ("mnli", "glue/mnli"), ("snli", "snli")):
    with pytest.raises(FileNotFoundError, match=rf"no local copy at .*{name}.*'{catalog}'.*gaierror"):
      tfds_local.load_splits(tasks.get_task(name, str(tmp_path)), str(tmp_path), str(tmp_path / "tfds"))


def few_shot_config(task: str, tfds_dir: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    dict(
      task=task,
      dir=data_dir(),
      cache_dir=tfds_dir,
      k=4,
      max_length=32,
      template="",
      label_descriptions=(),
      label_names=(),
    )
  )


@pytest.mark.parametrize("name, classes, test_size", [("sst2", 2, 872), ("trec", 6, 500)])
def test_load_few_shot_for_each_style(name, classes, test_size, tfds_dir, minilm_tokenizer, opt):
  config = few_shot_config(name, tfds_dir)
  for style, tokenizer in (("similarity", minilm_tokenizer), ("mlm", minilm_tokenizer), ("causal", opt)):
    data = pipeline.load_few_shot(config, tokenizer, 13, style=style)
    assert data.style == style
    shape = (classes, 32) if style == "causal" else (32,)
    for split, size in ((data.train, 4 * classes), (data.dev, 4 * classes), (data.test, test_size)):
      assert split.input_ids.shape == split.attention_mask.shape == (size, *shape)
      assert (split.target_mask is not None) == (style == "causal")
      assert np.bincount(split.labels, minlength=classes).min() >= (4 if size == 4 * classes else 1)
    batch = pipeline.train_batch(data.train, 5, 8, seed=13)
    evals = list(pipeline.eval_batches(data.test, 64))
    assert sum(b["weights"].sum() for b in evals) == test_size
    for b in (batch, evals[-1], pipeline.whole(data.dev)):
      assert set(b) == {"input_ids", "attention_mask", "labels", "weights"} | (
        {"target_mask"} if style == "causal" else set()
      )
      assert b["input_ids"].shape[1:] == shape and b["input_ids"].shape == b.get("target_mask", b["input_ids"]).shape
    expected = {
      "similarity": {"label_input_ids", "label_attention_mask"},
      "mlm": {"verbalizer_ids", "mask_token_id"},
      "causal": set(),
    }
    assert set(data.prompts) == expected[style]
    if style == "mlm":
      mask_id = minilm_tokenizer.token_to_id("[MASK]")
      assert all(((s.input_ids == mask_id).sum(1) == 1).all() for s in (data.train, data.dev, data.test))
      assert data.prompts["verbalizer_ids"].shape == (classes,)
    if style == "causal":
      assert (data.test.target_mask.sum(-1) >= 1).all()
  # Config keys a config may add: the MLM overrides reach the task.
  config.mlm_template = "{sentence} {mask}!" if name == "sst2" else "{mask} question: {sentence}"
  data = pipeline.load_few_shot(config, minilm_tokenizer, 13, style="mlm")
  assert data.task.mlm_template == config.mlm_template


def test_causal_batches_carry_the_target_mask_through_every_batching(opt):
  rows, labels = sst2_rows(10)
  data = pipeline.encode_split(opt, tasks.get_task("sst2", data_dir(), style="causal"), rows, labels, 24, "causal")
  batch = pipeline.train_batch(data, 0, 4, seed=1)
  order = [int(np.flatnonzero((data.input_ids == row).all(axis=(1, 2)))[0]) for row in batch["input_ids"]]
  np.testing.assert_array_equal(batch["target_mask"], data.target_mask[order])
  np.testing.assert_array_equal(batch["labels"], data.labels[order])
  last = list(pipeline.eval_batches(data, 4))[-1]
  np.testing.assert_array_equal(last["target_mask"][:2], data.target_mask[8:])
  assert last["weights"].tolist() == [1, 1, 0, 0]


def test_multiple_choice_rows_score_their_own_choices(tmp_path, opt):
  """A `sentence<TAB>choice1<TAB>choice2<TAB>label` task: each row's candidates are its own choices,
  the target tokens decode to them, and a non-causal style is refused."""
  folder = tmp_path / "copa_like"
  folder.mkdir()
  rows = [
    ("The man broke his toe because", "he dropped a hammer on his foot", "he got a hole in his sock", 0),
    ("I tipped the bottle so", "the liquid poured out", "the liquid froze", 0),
    ("The sun was rising so", "I went to sleep", "I woke up", 1),
    ("She was thirsty so", "she drank water", "she sang a song", 0),
  ]
  for split in ("train", "test"):
    with open(folder / f"{split}.tsv", "w") as f:
      f.write(tsv.choice_header(2) + "\n")
      f.writelines(f"{s}\t{a}\t{b}\t{label}\n" for s, a, b, label in rows)
  task = tasks.get_task(str(folder), str(tmp_path), style="causal")
  assert task.choice_fields == ("choice1", "choice2") and task.num_classes == 2
  encoded = pipeline.encode_split(opt, task, [r[:3] for r in rows], [r[3] for r in rows], 32, "causal")
  assert encoded.input_ids.shape == (4, 2, 32)
  for i, row in enumerate(rows):
    for c in range(2):
      targets = encoded.input_ids[i, c][encoded.target_mask[i, c] > 0]
      assert opt.decode(targets.tolist()).strip() == row[1 + c]
  overridden = tasks.get_task(str(folder), str(tmp_path), causal_template="Premise: {sentence}", style="causal")
  assert overridden.causal_template == "Premise: {sentence}"
  with pytest.raises(ConfigError, match="multiple choice .* scored by a causal LM"):
    tasks.get_task(str(folder), str(tmp_path), style="mlm")
  with open(folder / "train.tsv", "a") as f:
    f.write("only a sentence\tone choice\t1\n")
  with pytest.raises(errors.DataError, match=r"train.tsv:6: expected 4 tab-separated columns"):
    tsv.read_tsv(str(folder / "train.tsv"), 2)
