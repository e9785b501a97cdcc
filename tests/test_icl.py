"""In-context demonstrations (MeZO's ICL row, fttpu/data/demonstrations.py): the prompt of each task kind
character for character, the per-row draw from the training rows, left truncation, the config checks, and a
zero_shot run on a tiny random OPT whose logits the demonstrations change."""

import json

import jax
import numpy as np
import pytest

from configs import fewshot as fewshot_config
from fttpu import classifier, models, train
from fttpu.data import demonstrations, fewshot, generation, pipeline
from fttpu.errors import ConfigError
from fttpu.models import tiny

SEP = "\n\n"  # MeZO's train_sep

# Hand-written rows and, for each, MeZO's verbalize with its gold, stripped: the demonstration it makes.
RTE_TRAIN = [
  (("The cat sat on the mat.", "A cat is sitting."), 0),
  (("It rained in Paris all week.", "Paris was dry."), 1),
  (("Tom bought three apples.", "Tom has apples."), 0),
  (("The shop closes at noon.", "The shop is open all night."), 1),
]
RTE_ANSWERED = [
  'The cat sat on the mat.\nDoes this mean that "A cat is sitting." is true? Yes or No?\nYes',
  'It rained in Paris all week.\nDoes this mean that "Paris was dry." is true? Yes or No?\nNo',
  'Tom bought three apples.\nDoes this mean that "Tom has apples." is true? Yes or No?\nYes',
  'The shop closes at noon.\nDoes this mean that "The shop is open all night." is true? Yes or No?\nNo',
]
RTE_TEST = [
  (("Birds can fly south.", "Some animals fly."), 0),
  (("The river froze in winter.", "The river was warm."), 1),
]
RTE_TEST_PROMPTS = [
  'Birds can fly south.\nDoes this mean that "Some animals fly." is true? Yes or No?\n',
  'The river froze in winter.\nDoes this mean that "The river was warm." is true? Yes or No?\n',
]
RTE_WORDS = ("Yes", "No")

COPA_TRAIN = [
  {"premise": "The girl was tired.", "choice1": "She went to bed.", "choice2": "She ran a race.", "question": "effect"},
  {"premise": "The road was wet.", "choice1": "It had rained.", "choice2": "The sun was out.", "question": "cause"},
  {"premise": "I dropped the glass.", "choice1": "It flew away.", "choice2": "It broke.", "question": "effect"},
  {"premise": "The baby cried.", "choice1": "She was asleep.", "choice2": "She was hungry.", "question": "cause"},
]
COPA_LABELS = [0, 0, 1, 1]
COPA_ANSWERED = [
  "The girl was tired so she went to bed.",
  "The road was wet because it had rained.",
  "I dropped the glass so it broke.",
  "The baby cried because she was hungry.",
]
COPA_TEST = {
  "premise": "My body cast a shadow over the grass.",
  "choice1": "The sun was rising.",
  "choice2": "The grass was cut.",
  "question": "cause",
  "label": 0,
}
COPA_TEST_CANDIDATES = [
  "My body cast a shadow over the grass because the sun was rising.",
  "My body cast a shadow over the grass because the grass was cut.",
]

SQUAD_TRAIN = [
  {"title": "Paris", "context": "Paris is the capital of France.", "question": "What is the capital of France?"},
  {"title": "Moon", "context": "The Moon orbits the Earth.", "question": "What orbits the Earth? "},
  {"title": "Water", "context": "Water boils at 100 degrees.", "question": "When does water boil?"},
  {"title": "Cats", "context": "Cats sleep most of the day.", "question": "What do cats do all day?"},
]
SQUAD_ANSWERS = [["Paris"], ["The Moon", "Moon"], ["at 100 degrees"], ["sleep"]]
SQUAD_ANSWERED = [
  "Title: Paris\nContext: Paris is the capital of France.\nQuestion: What is the capital of France?\nAnswer: Paris",
  "Title: Moon\nContext: The Moon orbits the Earth.\nQuestion: What orbits the Earth?\nAnswer: The Moon",
  "Title: Water\nContext: Water boils at 100 degrees.\nQuestion: When does water boil?\nAnswer: at 100 degrees",
  "Title: Cats\nContext: Cats sleep most of the day.\nQuestion: What do cats do all day?\nAnswer: sleep",
]
SQUAD_TEST = {
  "title": "Super_Bowl_50",
  "context": "Super Bowl 50 was won by the Denver Broncos.",
  "question": " Which team won Super Bowl 50? ",
  "answers": ["Denver Broncos", "the Broncos"],
}
SQUAD_TEST_PROMPT = (
  "Title: Super_Bowl_50\nContext: Super Bowl 50 was won by the Denver Broncos.\nQuestion: Which team won Super Bowl 50?\n"
  "Answer:"
)


def write_jsonl(path, records) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in records))


def write_rte(path, rows) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("sentence1\tsentence2\tlabel\n" + "".join(f"{a}\t{b}\t{label}\n" for (a, b), label in rows))


@pytest.fixture(scope="module")
def icl_dir(tmp_path_factory):
  """RTE (TSV), COPA and SQuAD (JSONL) folders: four training rows each, the test rows above."""
  root = tmp_path_factory.mktemp("icl")
  write_rte(root / "rte" / "train.tsv", RTE_TRAIN)
  write_rte(root / "rte" / "test.tsv", RTE_TEST)
  write_jsonl(root / "copa" / "train.jsonl", [{**r, "label": label} for r, label in zip(COPA_TRAIN, COPA_LABELS)])
  write_jsonl(root / "copa" / "test.jsonl", [COPA_TEST])
  write_jsonl(root / "squad" / "train.jsonl", [{**r, "answers": a} for r, a in zip(SQUAD_TRAIN, SQUAD_ANSWERS)])
  write_jsonl(root / "squad" / "test.jsonl", [SQUAD_TEST])
  return root


ALL_TEXTS = (
  RTE_ANSWERED + RTE_TEST_PROMPTS + COPA_ANSWERED + COPA_TEST_CANDIDATES + SQUAD_ANSWERED + [SQUAD_TEST_PROMPT]
)


@pytest.fixture(scope="module")
def opt():
  return tiny.train_tokenizer(ALL_TEXTS * 20, "opt", vocab_size=600)


def config_for(icl_dir, tfds_dir, task: str, demonstrations_count: int, family: str = "opt", method: str = "zero_shot"):
  """The fewshot config of `task` in icl_dir: 3 training rows, 1 dev row, the whole test file."""
  config = fewshot_config.get_config(f"task={task},method={method},family={family}")
  config.data.update(
    dir=str(icl_dir),
    cache_dir=tfds_dir,
    num_train=3,
    num_dev=1,
    num_test=0,
    max_length=128,
    demonstrations=demonstrations_count,
  )
  return config


def shown(tokenizer, ids, mask) -> str:
  """The attended tokens as text, special tokens included (OPT's BOS is </s>)."""
  return tokenizer.decode(np.asarray(ids)[np.asarray(mask) == 1].tolist(), skip_special_tokens=False)


def drawn(answered: list[str], count: int, seed: int, split: str, position: int) -> list[str]:
  """The demonstrations of row `position` of `split`: training rows of the split's sample (3 of the 4 rows by
  MeZO's sample_rows), in the order demonstrations.draw gives."""
  train_idx, _ = fewshot.sample_rows(4, 3, 1, seed)
  return [answered[train_idx[i]] for i in demonstrations.draw(3, count, seed, split, position)]


# --- the prompt of each task kind, character for character --------------------------------------------------


@pytest.mark.parametrize("seed", [0, 5])
def test_classification_prompt_is_the_answered_training_rows_then_the_row(icl_dir, tfds_dir, opt, seed):
  data = pipeline.load_few_shot(config_for(icl_dir, tfds_dir, "rte", 3).data, opt, seed, "causal")
  for position, prompt in enumerate(RTE_TEST_PROMPTS):
    demos = drawn(RTE_ANSWERED, 3, seed, "test", position)
    assert sorted(demos) == sorted(RTE_ANSWERED[i] for i in fewshot.sample_rows(4, 3, 1, seed)[0])  # all 3, drawn
    for c, word in enumerate(RTE_WORDS):
      ids, mask, target = (
        x[position, c] for x in (data.test.input_ids, data.test.attention_mask, data.test.target_mask)
      )
      assert shown(opt, ids, mask) == "</s>" + demos[0] + SEP + demos[1] + SEP + demos[2] + SEP + prompt + word
      assert opt.decode(ids[target == 1].tolist()) == word  # the candidate alone is scored, not the demos' words
  dev_row = fewshot.sample_rows(4, 3, 1, seed)[1][0]
  dev_text = shown(opt, data.dev.input_ids[0, 0], data.dev.attention_mask[0, 0])
  assert dev_text.startswith("</s>" + drawn(RTE_ANSWERED, 3, seed, "dev", 0)[0] + SEP)
  assert dev_text.count(RTE_ANSWERED[dev_row].rsplit("\n", 1)[0]) == 1  # the dev row is only the evaluated row
  assert shown(opt, data.train.input_ids[0, 0], data.train.attention_mask[0, 0]).count(SEP) == 0  # training rows: none


def test_multiple_choice_prompt_puts_the_gold_candidates_demonstrations_before_each_candidate(icl_dir, tfds_dir, opt):
  data = pipeline.load_few_shot(config_for(icl_dir, tfds_dir, "copa", 2).data, opt, 3, "causal")
  demos = drawn(COPA_ANSWERED, 2, 3, "test", 0)
  assert len(set(demos)) == 2
  for c, candidate in enumerate(COPA_TEST_CANDIDATES):
    ids, mask, target = (x[0, c] for x in (data.test.input_ids, data.test.attention_mask, data.test.target_mask))
    assert shown(opt, ids, mask) == "</s>" + demos[0] + SEP + demos[1] + SEP + candidate
    assert opt.decode(ids[target == 1].tolist()).strip() == candidate.split(" because ")[1]
  assert data.test.gold_mask.tolist() == [[1, 0]]


def test_generation_prompt_puts_first_gold_answers_before_the_question(icl_dir, tfds_dir, opt):
  config = config_for(icl_dir, tfds_dir, "squad", 3)
  config.data.max_length = 256
  data = generation.load_generation(config.data, opt, seed=1, max_new_tokens=16)
  demos = drawn(SQUAD_ANSWERED, 3, 1, "test", 0)
  expected = "</s>" + SEP.join(demos) + SEP + SQUAD_TEST_PROMPT
  assert shown(opt, data.test.input_ids[0], data.test.attention_mask[0]) == expected
  assert data.test.input_ids.shape == (1, 256 - 16) and data.test.attention_mask[0, 0] == 0  # left-padded
  assert data.test.answers == (("Denver Broncos", "the Broncos"),)
  # training rows decode (the F1 objective) and teacher-force without demonstrations
  assert all(
    shown(opt, i, m).count(SEP) == 0 for i, m in zip(data.train_prompts.input_ids, data.train_prompts.attention_mask)
  )
  assert shown(opt, data.train.input_ids[0], data.train.attention_mask[0]).count(SEP) == 0


def test_the_layout_joins_stripped_demonstrations_by_a_blank_line():
  assert demonstrations.joined([" a \n", "\nb c", " "]) == "a" + SEP + "b c" + SEP
  assert demonstrations.joined([]) == ""


# --- which demonstrations ------------------------------------------------------------------------------------


def test_each_row_draws_its_own_distinct_training_rows_reproducibly_by_seed():
  rows = [demonstrations.draw(1000, 32, 13, "test", p) for p in range(4)]
  for row in rows:
    assert len(set(row.tolist())) == 32 and row.min() >= 0 and row.max() < 1000
  np.testing.assert_array_equal(rows[0], demonstrations.draw(1000, 32, 13, "test", 0))
  assert len({tuple(r) for r in rows}) == 4  # MeZO: one set per evaluated row
  assert not np.array_equal(rows[0], demonstrations.draw(1000, 32, 21, "test", 0))  # another seed
  assert not np.array_equal(rows[0], demonstrations.draw(1000, 32, 13, "dev", 0))  # another split


ADJECTIVES = ("fine", "dull", "bright", "slow", "warm", "cold")


@pytest.fixture(scope="module")
def reviews_dir(tmp_path_factory):
  """An SST-2 folder of 60 training and 12 test reviews, every text distinct."""
  root = tmp_path_factory.mktemp("reviews")
  (root / "sst2").mkdir()
  for split, rows in (("train", range(60)), ("test", range(100, 112))):
    lines = [f"film {i} felt {ADJECTIVES[i % 6]} .\t{i % 2}\n" for i in rows]
    (root / "sst2" / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(lines))
  return root


@pytest.fixture(scope="module")
def reviews_opt(reviews_dir):
  texts = [f"film {i} felt {a} . It was great terrible" for i in range(120) for a in ADJECTIVES]
  return tiny.train_tokenizer(texts, "opt", vocab_size=400)


def reviews(reviews_dir, tfds_dir, tokenizer, seed: int, count: int):
  """(config.data, the reviews sampled with `seed`: 40 train, 8 dev, 12 test rows, `count` demonstrations)."""
  config = fewshot_config.get_config("task=sst2,method=zero_shot,family=opt")
  config.data.update(
    dir=str(reviews_dir), cache_dir=tfds_dir, num_train=40, num_dev=8, num_test=0, max_length=128, demonstrations=count
  )
  return config.data, pipeline.load_few_shot(config.data, tokenizer, seed, "causal")


def row_texts(tokenizer, split: pipeline.Encoded, candidate=None) -> list[str]:
  """Each row's text after BOS with its `candidate` (None: its gold label's)."""
  picks = split.labels if candidate is None else [candidate] * len(split)
  return [shown(tokenizer, split.input_ids[i, c], split.attention_mask[i, c])[4:] for i, c in enumerate(picks)]


def test_demonstrations_are_training_rows_never_the_evaluated_row(reviews_dir, tfds_dir, reviews_opt):
  _, data = reviews(reviews_dir, tfds_dir, reviews_opt, 13, 4)
  _, plain = reviews(reviews_dir, tfds_dir, reviews_opt, 13, 0)
  training = set(row_texts(reviews_opt, plain.train))  # each training row with its gold word
  assert not set(row_texts(reviews_opt, plain.dev)) & training  # dev rows are never in the pool
  for name in ("dev", "test"):
    golds, drawn_sets = row_texts(reviews_opt, getattr(plain, name)), []
    for c in (0, 1):
      for text, alone, gold in zip(
        row_texts(reviews_opt, getattr(data, name), c), row_texts(reviews_opt, getattr(plain, name), c), golds
      ):
        assert text.endswith(SEP + alone)  # the evaluated row, whole, last
        demos = text[: -len(alone)].split(SEP)[:-1]
        assert len(set(demos)) == 4 and set(demos) <= training and gold not in demos
        drawn_sets.append(tuple(demos))
    half = len(drawn_sets) // 2
    assert drawn_sets[:half] == drawn_sets[half:]  # every candidate of a row follows the same demonstrations
    assert len(set(drawn_sets)) == half  # one draw per row


def test_the_draw_follows_the_seed_and_zero_demonstrations_change_nothing(reviews_dir, tfds_dir, reviews_opt):
  _, a = reviews(reviews_dir, tfds_dir, reviews_opt, 13, 4)
  _, again = reviews(reviews_dir, tfds_dir, reviews_opt, 13, 4)
  _, other = reviews(reviews_dir, tfds_dir, reviews_opt, 21, 4)
  np.testing.assert_array_equal(a.test.input_ids, again.test.input_ids)
  np.testing.assert_array_equal(a.dev.input_ids, again.dev.input_ids)
  assert not np.array_equal(a.test.input_ids, other.test.input_ids)  # the same test rows, other demonstrations
  config, plain = reviews(reviews_dir, tfds_dir, reviews_opt, 13, 0)
  del config.demonstrations  # a config saved before the key has none
  older = pipeline.load_few_shot(config, reviews_opt, 13, "causal")
  for name in ("train", "dev", "test"):
    for key in ("input_ids", "attention_mask", "target_mask", "labels"):
      np.testing.assert_array_equal(getattr(getattr(plain, name), key), getattr(getattr(older, name), key))
  np.testing.assert_array_equal(a.train.input_ids, plain.train.input_ids)  # training rows get none


# --- left truncation -----------------------------------------------------------------------------------------


def mezo_truncated(tokenizer, text: str, length: int) -> list[int]:
  """MeZO's encode_prompt truncation (utils.py:167-168): the first (BOS) token and the last length - 1."""
  ids = tokenizer.encode(text).ids
  return ids[:1] + ids[1:][-(length - 1) :]


def test_left_truncation_keeps_bos_and_the_whole_row_and_candidate(icl_dir, tfds_dir, opt):
  config = config_for(icl_dir, tfds_dir, "rte", 3)
  config.data.max_length = 40
  data = pipeline.load_few_shot(config.data, opt, 0, "causal")
  demos = drawn(RTE_ANSWERED, 3, 0, "test", 0)
  for c, word in enumerate(RTE_WORDS):
    full = SEP.join(demos) + SEP + RTE_TEST_PROMPTS[0] + word
    ids, mask, target = (x[0, c] for x in (data.test.input_ids, data.test.attention_mask, data.test.target_mask))
    assert mask.sum() == 40 and len(opt.encode(full).ids) > 40  # truncated
    assert ids.tolist() == mezo_truncated(opt, full, 40)
    assert shown(opt, ids, mask).startswith("</s>") and shown(opt, ids, mask).endswith(RTE_TEST_PROMPTS[0] + word)
    assert opt.decode(ids[target == 1].tolist()) == word

  config = config_for(icl_dir, tfds_dir, "copa", 3)
  config.data.max_length = 30
  data = pipeline.load_few_shot(config.data, opt, 0, "causal")
  for c, candidate in enumerate(COPA_TEST_CANDIDATES):
    full = SEP.join(drawn(COPA_ANSWERED, 3, 0, "test", 0)) + SEP + candidate
    ids, mask = data.test.input_ids[0, c], data.test.attention_mask[0, c]
    assert ids.tolist() == mezo_truncated(opt, full, 30) and shown(opt, ids, mask).endswith(SEP + candidate)

  config = config_for(icl_dir, tfds_dir, "squad", 3)
  config.data.max_length = 80
  data = generation.load_generation(config.data, opt, seed=0, max_new_tokens=16)  # room for 16 answer tokens
  full = SEP.join(drawn(SQUAD_ANSWERED, 3, 0, "test", 0)) + SEP + SQUAD_TEST_PROMPT
  assert data.test.attention_mask.sum() == 64 and data.test.input_ids[0].tolist() == mezo_truncated(opt, full, 64)
  assert shown(opt, data.test.input_ids[0], data.test.attention_mask[0]).endswith(SEP + SQUAD_TEST_PROMPT)


# --- config --------------------------------------------------------------------------------------------------


def causal_config(**fields):
  config = fewshot_config.get_config("task=sst2,method=zero_shot,family=opt")
  for key, value in fields.items():
    section, name = key.split(".")
    config[section][name] = value
  return config


@pytest.mark.parametrize(
  "arg, fields, expected",
  [
    ("family=opt", {"data.demonstrations": -1}, r"config.data.demonstrations=-1 is invalid; valid: an integer >= 0"),
    ("family=roberta", {"data.demonstrations": 32}, r"=32 is invalid; valid: 0 for model.classifier='mlm'"),
    ("family=bert", {"data.demonstrations": 4}, r"=4 is invalid; valid: 0 for model.classifier='similarity'"),
    ("family=opt,method=full", {"data.demonstrations": 4}, r"=4 is invalid; valid: 0 for method='full'; in-context"),
    ("family=opt,method=mezo", {"data.demonstrations": 4}, r"valid: 0 for method='mezo'; .* method=zero_shot"),
  ],
)
def test_invalid_demonstrations_fail_at_start_up_naming_key_value_and_valid(arg, fields, expected):
  config = fewshot_config.get_config(f"task=sst2,method=zero_shot,{arg}")
  for key, value in fields.items():
    config.data[key.split(".")[1]] = value
  with pytest.raises(ConfigError, match=expected):
    pipeline.validate(config)


def test_zero_shot_on_a_causal_lm_takes_demonstrations_and_more_than_the_training_rows_fail(icl_dir, tfds_dir, opt):
  pipeline.validate(causal_config(**{"data.demonstrations": 32}))  # MeZO's ICL row
  with pytest.raises(ConfigError, match=r"config.data.demonstrations=4 is invalid; valid: at most the 3 training rows"):
    pipeline.load_few_shot(config_for(icl_dir, tfds_dir, "rte", 4).data, opt, 0, "causal")


# --- end to end ----------------------------------------------------------------------------------------------


@pytest.mark.quick_compile  # a tiny model, no training step: compiling is the cost
def test_zero_shot_with_demonstrations_runs_end_to_end_and_changes_the_logits(icl_dir, tfds_dir, tmp_path):
  tiny_opt = tiny.build("opt", str(tmp_path / "tiny-opt"), ALL_TEXTS * 20, vocab_size=600)
  results, logits = {}, {}
  for count in (0, 2):
    config = config_for(icl_dir, tfds_dir, "rte", count)
    config.model.checkpoint = tiny_opt
    config.train.eval_batch_size = 2
    results[count] = train.run(config, str(tmp_path / f"icl{count}"))
    model = models.load_for(config.model)
    data = pipeline.load_few_shot(config.data, model.tokenizer, config.seed, "causal")
    batch = {**pipeline.whole(data.test), **data.prompts}
    logits[count] = np.asarray(
      jax.jit(classifier.make_classifier(model.module, "causal").logits)({"model": model.params}, batch)
    )
  for count in (0, 2):
    assert results[count]["final"] and np.isfinite(results[count]["eval/loss"]) and logits[count].shape == (2, 2)
  assert np.abs(logits[2] - logits[0]).max() > 1e-3
  assert results[2]["eval/loss"] != results[0]["eval/loss"]
