"""MeZO's COPA, ReCoRD, SQuAD and DROP: answer metrics, templates, local and catalog rows, encodings,
row sampling and bad input. Hand-written rows only; no model runs."""

import dataclasses
import json
import os
import re

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import fewshot as fewshot_config
from fttpu import classifier
from fttpu.data import generation, pipeline, qa_metrics, row_tasks
from fttpu.data.choice_tasks import COPA, RECORD
from fttpu.data.qa_tasks import DROP, SQUAD, drop_catalog_answers
from fttpu.data.rows import Row, continued_text, prompt_text
from fttpu.errors import ConfigError, DataError
from fttpu.models import tiny

# One hand-written row per task and what MeZO's large_models/templates.py makes of it, written out by
# hand: the prompt (encode) and the prompt followed by each candidate or the first gold (verbalize).
COPA_CAUSE = {
  "premise": "My body cast a shadow over the grass.",
  "choice1": "The sun was rising.",
  "choice2": "The grass was cut.",
  "question": "cause",
  "label": 0,
}
COPA_EFFECT = {
  "premise": "The man turned on the faucet. ",
  "choice1": "The toilet filled with water.",
  "choice2": "I heard water flow from the spout.",
  "question": "effect",
  "label": 1,
}
RECORD_ROW = {
  "passage": "Heavy rain hit Houston on Monday.\n@highlight\nHouston floods\n@highlight\nTexas declares emergency",
  "query": "Officials in @placeholder closed the schools.",
  "entities": ("Houston", "Monday", "Texas"),
  "answers": ("Houston", "Texas"),
}
SQUAD_ROW = {
  "title": "Super_Bowl_50",
  "context": "Super Bowl 50 was won by the Denver Broncos.",
  "question": " Which team won Super Bowl 50? ",
  "answers": ("Denver Broncos", "the Broncos", "Denver Broncos"),
}
DROP_ROW = {
  "passage": "The Bears kicked a 32-yard field goal, then a 45-yard one.",
  "question": "How many field goals did the Bears kick?",
  "answers": ("2",),
}
EXPECTED = {
  "copa-cause": (
    COPA,
    COPA_CAUSE,
    "My body cast a shadow over the grass because",
    [
      "My body cast a shadow over the grass because the sun was rising.",
      "My body cast a shadow over the grass because the grass was cut.",
    ],
  ),
  "copa-effect": (
    COPA,
    COPA_EFFECT,
    "The man turned on the faucet so",
    [
      "The man turned on the faucet so the toilet filled with water.",
      "The man turned on the faucet so I heard water flow from the spout.",
    ],
  ),
  "record": (
    RECORD,
    RECORD_ROW,
    "Heavy rain hit Houston on Monday.\n- Houston floods\n- Texas declares emergency\n-",
    [
      f"Heavy rain hit Houston on Monday.\n- Houston floods\n- Texas declares emergency\n- Officials in {e} closed the schools."
      for e in ("Houston", "Monday", "Texas")
    ],
  ),
  "squad": (
    SQUAD,
    SQUAD_ROW,
    "Title: Super_Bowl_50\nContext: Super Bowl 50 was won by the Denver Broncos.\nQuestion: Which team won Super Bowl 50?\nAnswer:",
    [
      "Title: Super_Bowl_50\nContext: Super Bowl 50 was won by the Denver Broncos.\nQuestion: Which team won Super Bowl 50?\n"
      "Answer: Denver Broncos\n"
    ],
  ),
  "drop": (
    DROP,
    DROP_ROW,
    "Passage: The Bears kicked a 32-yard field goal, then a 45-yard one.\nQuestion: How many field goals did the Bears kick?\nAnswer:",
    [
      "Passage: The Bears kicked a 32-yard field goal, then a 45-yard one.\nQuestion: How many field goals did the Bears kick?\n"
      "Answer: 2\n"
    ],
  ),
}


@pytest.fixture(scope="module")
def opt():
  texts = [text for _, _, prompt, full in EXPECTED.values() for text in [prompt, *full]]
  return tiny.train_tokenizer(texts * 20, "opt", vocab_size=600)


def rows(task, *fields) -> list[Row]:
  return [Row(f, f"row {i}") for i, f in enumerate(fields)]


# --- answer metrics (MeZO's metrics.py) -------------------------------------------------------------


def test_normalisation_drops_case_punctuation_articles_and_extra_spaces():
  assert qa_metrics.normalize_answer("  The Denver-Broncos,  an  NFL team! ") == "denverbroncos nfl team"
  assert qa_metrics.normalize_answer("Theme of a thesis") == "theme of thesis"  # whole words only


@pytest.mark.parametrize(
  "prediction, golds, em, f1",
  [
    ("the Broncos.", ["Denver Broncos", "Broncos"], 1.0, 1.0),  # article and punctuation gone; the best gold
    ("Denver Broncos team", ["Broncos", "Denver Broncos"], 0.0, 0.8),  # P 2/3, R 1 against the second
    ("Carolina Panthers", ["Denver Broncos"], 0.0, 0.0),
    ("", ["Denver Broncos"], 0.0, 0.0),
    ("broncos broncos", ["Broncos"], 0.0, 2 * 0.5 / 1.5),  # a repeated token counts once in the overlap
    ("a", ["The"], 1.0, 0.0),  # both normalise to nothing: equal, but no token in common (MeZO's F1)
    ("no answer", ["CANNOTANSWER"], 0.0, 0.0),  # F1 is the exact match for a no-answer gold
    ("CANNOTANSWER", ["CANNOTANSWER", "x"], 1.0, 1.0),
    # DROP's golds as MeZO scores them: numbers are tokens, after punctuation is removed.
    ("1,000 yards", ["1000"], 0.0, 2 * 0.5 / 1.5),
    ("3.5", ["35"], 1.0, 1.0),
    ("four", ["4"], 0.0, 0.0),
    ("Jones", ["Smith", "Jones"], 1.0, 1.0),  # a multi-span answer's spans are separate golds
    ("May 1990", ["5 May 1990"], 0.0, 0.8),
  ],
)
def test_exact_match_and_f1_reference_values(prediction, golds, em, f1):
  assert qa_metrics.exact_match(prediction, golds) == em
  assert qa_metrics.token_f1(prediction, golds) == pytest.approx(f1)


def test_mean_score_averages_rows_and_rejects_mismatched_lengths():
  assert qa_metrics.mean_score("f1", ["Broncos", "four"], [["Denver Broncos"], ["4"]]) == pytest.approx(2 / 3 / 2)
  assert qa_metrics.mean_score("em", ["Broncos", "4"], [["Broncos"], ["4"]]) == 1.0
  with pytest.raises(ValueError, match="2 predictions for 1 rows"):
    qa_metrics.mean_score("f1", ["a", "b"], [["a"]])
  with pytest.raises(ValueError, match="unknown answer metric 'bleu'"):
    qa_metrics.mean_score("bleu", ["a"], [["a"]])
  assert (SQUAD.metric, DROP.metric, COPA.metric) == ("f1", "f1", "accuracy")


# --- templates, character for character ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_templates_render_as_mezo(name):
  task, fields, prompt, full = EXPECTED[name]
  assert prompt_text(task, fields) == prompt
  options = task.candidates(fields) if task.candidates else task.golds(fields)[:1]
  assert [continued_text(task, fields, option) for option in options] == full


def test_copa_lowercases_the_whole_first_word_unless_it_is_i():
  from fttpu.data.choice_tasks import copa_capitalize

  assert copa_capitalize("NASA launched it.") == "nasa launched it."
  assert copa_capitalize("I left.") == "I left."
  assert copa_capitalize("It's late.") == "it's late."


def test_golds_are_mezos_correct_candidates():
  assert COPA.golds(COPA_CAUSE) == ("The sun was rising.",) and COPA.golds(COPA_EFFECT) == (COPA_EFFECT["choice2"],)
  assert RECORD.golds(RECORD_ROW) == ("Houston", "Texas")
  assert SQUAD.golds(SQUAD_ROW)[0] == "Denver Broncos"


# --- local rows and the catalog ------------------------------------------------------------------------


def write_jsonl(path, records):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))


def as_json(fields: dict) -> dict:
  return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}


@pytest.mark.parametrize(
  "task, records",
  [
    (COPA, [COPA_CAUSE, COPA_EFFECT]),
    (RECORD, [RECORD_ROW, {**RECORD_ROW, "answers": ["Monday"]}]),
    # Hugging Face's exports: SQuAD's answers object, DROP's answers_spans.
    (SQUAD, [SQUAD_ROW, {**SQUAD_ROW, "answers": {"text": ["Broncos"], "answer_start": [30]}, "id": "x"}]),
    (
      DROP,
      [
        DROP_ROW,
        {
          **{k: DROP_ROW[k] for k in ("passage", "question")},
          "answers_spans": {"spans": ["2", "two"], "types": ["number", "span"]},
        },
      ],
    ),
  ],
  ids=lambda x: getattr(x, "name", ""),
)
def test_each_task_reads_its_own_fields_from_local_jsonl(task, records, tmp_path):
  for split in ("train", "test"):
    write_jsonl(tmp_path / task.name / f"{split}.jsonl", [as_json(r) for r in records])
  loaded = row_tasks.load_rows(task, str(tmp_path), str(tmp_path / "tfds"))
  assert sorted(loaded) == ["test", "train"]
  first, second = loaded["test"]
  assert first.fields == {c.name: records[0][c.name] for c in task.columns}
  assert first.origin == f"{tmp_path}/{task.name}/test.jsonl:1" and second.origin.endswith("test.jsonl:2")
  if task is SQUAD:
    assert second.fields["answers"] == ("Broncos",)
  if task is DROP:
    assert second.fields["answers"] == ("2", "two")


def test_copa_also_reads_its_own_tsv_columns_and_names_the_line(tmp_path):
  header = "premise\tchoice1\tchoice2\tquestion\tlabel\n"
  line = lambda r: "\t".join(str(r[k]) for k in ("premise", "choice1", "choice2", "question", "label")) + "\n"
  os.makedirs(tmp_path / "copa")
  (tmp_path / "copa" / "train.tsv").write_text(header + line(COPA_CAUSE) + "\n" + line(COPA_EFFECT))
  (tmp_path / "copa" / "test.tsv").write_text(header + line({**COPA_CAUSE, "question": "reason"}))
  train = row_tasks.read_local(COPA, str(tmp_path / "copa"), "train")
  assert [r.fields["question"] for r in train] == ["cause", "effect"] and train[1].fields["label"] == 1
  assert train[1].origin.endswith("train.tsv:4")  # after the blank line 3
  with pytest.raises(
    DataError, match=r"copa/test\.tsv:2: task 'copa': question 'reason' is not one of \['cause', 'effect'\]"
  ):
    row_tasks.read_local(COPA, str(tmp_path / "copa"), "test")


class FakeSquadCatalog(tfds.core.GeneratorBasedBuilder):
  """A catalog dataset shaped as TFDS's squad/v1.1 (registered as fake_squad_catalog), two rows per split."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    answers = tfds.features.Sequence({"text": tfds.features.Text(), "answer_start": np.int32})
    texts = {k: tfds.features.Text() for k in ("id", "title", "context", "question")}
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({**texts, "answers": answers}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples("t"), "validation": self._generate_examples("v")}

  def _generate_examples(self, prefix):
    for i, answers in enumerate((["Denver Broncos", "Broncos"], [])):  # the second row has no gold: left out
      example = {**{k: SQUAD_ROW[k] for k in ("title", "context", "question")}, "id": f"{prefix}{i}"}
      yield i, {**example, "answers": {"text": answers, "answer_start": [0] * len(answers)}}


def test_catalog_rows_are_decoded_into_the_tasks_fields(tmp_path):
  task = dataclasses.replace(SQUAD, catalog=dataclasses.replace(SQUAD.catalog, name="fake_squad_catalog", module=""))
  loaded = row_tasks.load_rows(task, str(tmp_path / "no-local-copy"), str(tmp_path / "tfds"))
  assert [len(loaded[s]) for s in ("train", "test")] == [1, 1]
  (row,) = loaded["test"]
  assert row.fields == {
    **{k: SQUAD_ROW[k] for k in ("title", "context", "question")},
    "answers": ("Denver Broncos", "Broncos"),
  }
  assert row.origin == "TFDS fake_squad_catalog split 'validation', row 0"


def test_tfds_drop_golds_follow_mezos_hugging_face_copy():
  assert drop_catalog_answers({"answer": "7", "validated_answers": ["7", "seven", "7", ""]}) == ("7", "seven")
  assert drop_catalog_answers({"answer": "Smith", "validated_answers": []}) == ("Smith",)
  assert drop_catalog_answers({"answer": "", "validated_answers": []}) == ()


def test_a_catalog_that_cannot_load_says_what_to_install_and_which_files_to_give(tmp_path, monkeypatch):
  monkeypatch.setattr(row_tasks, "tensorflow_installed", lambda: False)
  missing = dataclasses.replace(COPA.catalog, name="no_such_catalog_dataset", module="")
  with pytest.raises(
    FileNotFoundError,
    match=r"task 'copa': no local copy at .*TFDS builds no_such_catalog_dataset only with TensorFlow "
    r"\(pip install tensorflow\)\. Point fttpu at the data: --config\.data\.dir=DIR where DIR/copa/ has "
    r"train\.jsonl or train\.tsv and test\.jsonl or test\.tsv",
  ):
    row_tasks.load_rows(dataclasses.replace(COPA, catalog=missing), str(tmp_path), str(tmp_path / "tfds"))
  # super_glue's builder info uses tf.int32 and TFDS extracts zips with tf.io.gfile; squad downloads plain JSON.
  assert [t.catalog.needs_tensorflow for t in (COPA, RECORD, SQUAD, DROP)] == [True, True, False, True]


# --- encodings ---------------------------------------------------------------------------------------------


def decoded(tokenizer, ids, mask) -> str:
  return tokenizer.decode(np.asarray(ids)[np.asarray(mask) == 1].tolist(), skip_special_tokens=False)


def test_copa_candidates_follow_the_rows_connective(opt):
  encoded = pipeline.encode_choices(opt, COPA, rows(COPA, COPA_CAUSE, COPA_EFFECT), 64, 2)
  assert encoded.input_ids.shape == encoded.target_mask.shape == (2, 2, 64)
  assert encoded.labels.tolist() == [0, 1] and encoded.gold_mask.tolist() == [[1, 0], [0, 1]]
  assert encoded.choice_mask.tolist() == [[1, 1], [1, 1]]
  for r, (_, _, prompt, full) in enumerate((EXPECTED["copa-cause"], EXPECTED["copa-effect"])):
    for c, text in enumerate(full):
      ids, mask, target = encoded.input_ids[r, c], encoded.attention_mask[r, c], encoded.target_mask[r, c]
      assert decoded(opt, ids, mask) == "</s>" + text  # OPT's BOS, then MeZO's verbalized text
      assert opt.decode(ids[target == 1].tolist()) == text[len(prompt) :]  # " the sun was rising."
  assert " because " in EXPECTED["copa-cause"][3][0] and " so " in EXPECTED["copa-effect"][3][0]


def test_record_rows_are_padded_to_the_most_candidates_and_count_every_gold(opt):
  short = {**RECORD_ROW, "entities": ("Houston", "Texas"), "answers": ("Texas",)}
  encoded = pipeline.encode_choices(opt, RECORD, rows(RECORD, RECORD_ROW, short), 96, 3)
  assert encoded.input_ids.shape == (2, 3, 96)
  assert encoded.choice_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
  assert encoded.gold_mask.tolist() == [[1, 0, 1], [0, 1, 0]]
  assert encoded.labels.tolist() == [0, 1]  # the first gold
  np.testing.assert_array_equal(encoded.input_ids[1, 2], encoded.input_ids[1, 0])  # padding repeats the first
  _, _, prompt, full = EXPECTED["record"]
  for c, text in enumerate(full):
    ids, target = encoded.input_ids[0, c], encoded.target_mask[0, c]
    assert opt.decode(ids[target == 1].tolist()) == text[len(prompt) :]  # the filled query


def test_padding_candidates_never_win_and_any_gold_is_right():
  batch = {
    "labels": jnp.asarray([0, 0, 1]),
    "weights": jnp.ones(3),
    "choice_mask": jnp.asarray([[1, 1, 0], [1, 1, 1], [1, 1, 0]]),
    "gold_mask": jnp.asarray([[1, 0, 0], [1, 0, 1], [0, 1, 0]]),
  }
  # Row 0: its padding candidate scores best; row 1: its second gold wins; row 2: a wrong candidate wins.
  logits = jnp.asarray([[-2.0, -3.0, 0.0], [-3.0, -2.0, -1.0], [-1.0, -2.0, 0.0]])
  sums = classifier.weighted_sums(logits, batch)
  assert float(sums["correct"]) == 2.0 and float(sums["count"]) == 3.0
  row0 = classifier.weighted_sums(logits[:1], {k: v[:1] for k, v in batch.items()})
  assert float(row0["loss_sum"]) == pytest.approx(np.log1p(np.exp(-1.0)), rel=1e-6)  # over its 2 real candidates


def test_generation_trains_on_the_first_gold_and_its_newline(opt):
  encoded = generation.encode_teacher_forced(opt, SQUAD, rows(SQUAD, SQUAD_ROW), 96)
  ids, mask, target = encoded.input_ids[0], encoded.attention_mask[0], encoded.target_mask[0]
  assert encoded.input_ids.shape == encoded.target_mask.shape == (1, 96) and encoded.labels.tolist() == [0]
  _, _, prompt, (full,) = EXPECTED["squad"]
  assert decoded(opt, ids, mask) == "</s>" + full
  assert opt.decode(ids[target == 1].tolist()) == " Denver Broncos\n"  # exactly the answer and the newline
  assert np.flatnonzero(target)[-1] == mask.sum() - 1 and (target <= mask).all()
  batch = pipeline.train_batch(encoded, 0, 1, seed=0)
  assert sorted(batch) == ["attention_mask", "input_ids", "labels", "target_mask", "weights"]


def test_generation_prompts_are_left_padded_and_left_truncated(opt):
  long = {**DROP_ROW, "passage": " ".join(["The Bears kicked a field goal."] * 40)}
  prompts = generation.encode_prompts(opt, DROP, rows(DROP, DROP_ROW, long), 96, max_new_tokens=50)
  assert prompts.input_ids.shape == (2, 46) and prompts.answers == (("2",), ("2",))
  mask = prompts.attention_mask
  assert mask[0, -1] == 1 and mask[0, 0] == 0 and mask[1].all()  # short row padded on the left; long row fills
  assert decoded(opt, prompts.input_ids[0], mask[0]) == "</s>" + EXPECTED["drop"][2]
  assert decoded(opt, prompts.input_ids[1], mask[1]).startswith("</s>")  # BOS survives truncation
  assert decoded(opt, prompts.input_ids[1], mask[1]).endswith(
    "\nQuestion: How many field goals did the Bears kick?\nAnswer:"
  )
  assert prompts.take([1]).answers == (("2",),)


def test_decoded_answers_stop_at_the_newline_and_are_scored_against_every_gold(opt):
  new = opt.encode(" Denver Broncos\nQuestion: next", add_special_tokens=False).ids
  assert generation.answer_text(opt, new) == "Denver Broncos"
  assert set(generation.stop_ids(opt)) == {opt.encode("\n", add_special_tokens=False).ids[-1], opt.token_to_id("</s>")}
  prompts = generation.encode_prompts(opt, SQUAD, rows(SQUAD, SQUAD_ROW, SQUAD_ROW), 96, 50)
  assert generation.score(SQUAD, ["Broncos", "Carolina"], prompts) == pytest.approx(0.5)


# --- sampling and loading ---------------------------------------------------------------------------


def many(n: int, split: str) -> list[Row]:
  return [Row({**DROP_ROW, "question": f"{split} {i}"}, f"{split}:{i}") for i in range(n)]


def test_mezo_samples_1000_train_500_dev_1000_test_rows():
  splits = {"train": many(3000, "train"), "test": many(1500, "test")}
  by_seed = {seed: row_tasks.sample_splits(splits, *row_tasks.MEZO_ROWS["drop"], seed) for seed in (0, 1)}
  for sample in by_seed.values():
    assert [len(sample[s]) for s in ("train", "dev", "test")] == [1000, 500, 1000]
    assert not {r.origin for r in sample["train"]} & {r.origin for r in sample["dev"]}
  assert by_seed[0]["test"] == by_seed[1]["test"] and by_seed[0]["train"] != by_seed[1]["train"]
  copa = row_tasks.sample_splits(
    {"train": many(400, "train"), "test": many(100, "test")}, *row_tasks.MEZO_ROWS["copa"], 0
  )
  assert [len(copa[s]) for s in ("train", "dev", "test")] == [300, 100, 100]  # all of COPA's validation rows
  with pytest.raises(ConfigError, match=r"data.num_train=1000 \+ data.num_dev=500 is more than the 400 training rows"):
    row_tasks.sample_splits({"train": many(400, "train"), "test": many(100, "test")}, 1000, 500, 1000, 0)


def data_config(tmp_path, task: str, **sizes) -> ml_collections.ConfigDict:
  fields = dict(
    task=task, dir=str(tmp_path), cache_dir=str(tmp_path / "tfds"), max_length=128, num_train=2, num_dev=1, num_test=0
  )
  return ml_collections.ConfigDict({**fields, **sizes})


def test_record_loads_through_load_few_shot_with_one_candidate_count_for_all_splits(opt, tmp_path):
  wide = {**RECORD_ROW, "entities": ["Houston", "Monday", "Texas", "Officials"]}
  write_jsonl(tmp_path / "record" / "train.jsonl", [as_json(RECORD_ROW)] * 2 + [as_json(wide)])
  write_jsonl(tmp_path / "record" / "test.jsonl", [as_json({**RECORD_ROW, "entities": ["Houston", "Texas"]})])
  data = pipeline.load_few_shot(data_config(tmp_path, "record"), opt, seed=0, style="causal")
  assert (len(data.train), len(data.dev), len(data.test)) == (2, 1, 1) and data.task is RECORD
  assert {s.input_ids.shape[1] for s in (data.train, data.dev, data.test)} == {4}
  assert data.test.choice_mask.tolist() == [[1, 1, 0, 0]] and data.test.gold_mask.tolist() == [[1, 1, 0, 0]]
  batch = next(pipeline.eval_batches(data.test, 2))
  assert batch["gold_mask"].shape == batch["choice_mask"].shape == (2, 4) and batch["weights"].tolist() == [1, 0]
  micro, _ = pipeline.micro_batches(pipeline.train_batch(data.train, 0, 2, 0), 2)
  assert micro["gold_mask"].shape == (2, 1, 4)


def test_squad_loads_for_decoding(opt, tmp_path):
  write_jsonl(tmp_path / "squad" / "train.jsonl", [as_json(SQUAD_ROW)] * 4)
  write_jsonl(tmp_path / "squad" / "test.jsonl", [as_json(SQUAD_ROW)] * 3)
  data = generation.load_generation(data_config(tmp_path, "squad", num_test=2), opt, seed=0, max_new_tokens=32)
  assert (len(data.train), len(data.train_prompts), len(data.dev), len(data.test)) == (2, 2, 1, 2)
  assert data.test.input_ids.shape == (2, 96) and data.train.input_ids.shape == (2, 128)
  with pytest.raises(ConfigError, match="task 'squad' is a generation task"):
    pipeline.load_few_shot(data_config(tmp_path, "squad"), opt, seed=0, style="causal")


# --- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "task, record, expected",
  [
    (
      SQUAD,
      {**as_json(SQUAD_ROW), "answers": []},
      r"task 'squad': no gold answer: a generation row needs at least one reference answer",
    ),
    (DROP, {**as_json(DROP_ROW), "answers": {"spans": []}}, r"task 'drop': no gold answer"),
    (
      RECORD,
      {**as_json(RECORD_ROW), "answers": ["Dallas"]},
      r"task 'record': gold 'Dallas' is not among the row's candidates \['Houston', 'Monday', 'Texas'\]; each gold must be one of them",
    ),
    (RECORD, {**as_json(RECORD_ROW), "query": "Officials closed the schools."}, r"has no '@placeholder'"),
    (
      COPA,
      {**COPA_CAUSE, "question": "Cause"},
      r"task 'copa': question 'Cause' is not one of \['cause', 'effect'\] \(the premise's cause, joined by 'because', or its effect, joined by 'so'\)",
    ),
    (COPA, {**COPA_CAUSE, "label": 2}, r"label 2 is not 0 \(choice1\) or 1 \(choice2\)"),
    (
      SQUAD,
      {k: v for k, v in as_json(SQUAD_ROW).items() if k != "title"},
      r"missing field 'title'; each line needs 'title' \(a string\)",
    ),
    (DROP, {**as_json(DROP_ROW), "answers": "2"}, r"field 'answers' must be a list of strings"),
    (COPA, {**COPA_CAUSE, "label": "0"}, r"field 'label' must be an integer, got '0'"),
    (COPA, '{"premise": "x",', r"not valid JSON \(.*\); each line is one object with 'premise' \(a string\)"),
    (COPA, "[1, 2]", r"expected a JSON object with 'premise' \(a string\).*got list"),
  ],
  ids=lambda x: getattr(x, "name", None) if hasattr(x, "columns") else None,
)
def test_a_bad_row_fails_naming_its_file_its_line_and_what_is_valid(task, record, expected, tmp_path):
  good = as_json({"copa": COPA_CAUSE, "record": RECORD_ROW, "squad": SQUAD_ROW, "drop": DROP_ROW}[task.name])
  write_jsonl(tmp_path / task.name / "train.jsonl", [good, good])
  write_jsonl(tmp_path / task.name / "test.jsonl", [good, "", record])  # the bad row is on line 3
  with pytest.raises(DataError, match=rf"^{re.escape(str(tmp_path))}/{task.name}/test\.jsonl:3: .*{expected}"):
    row_tasks.load_rows(task, str(tmp_path), str(tmp_path / "tfds"))


def test_a_folder_without_the_tasks_files_names_what_it_reads(tmp_path):
  os.makedirs(tmp_path / "drop")
  with pytest.raises(
    DataError,
    match=r"drop: no train\.jsonl; task 'drop' reads train\.jsonl and test\.jsonl, one row per line with 'passage'",
  ):
    row_tasks.load_rows(DROP, str(tmp_path), str(tmp_path / "tfds"))


@pytest.mark.parametrize("task", ["squad", "drop", "copa", "record"])
@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_row_tasks_on_an_encoder_family_fail_naming_task_family_and_the_valid_ones(task, family):
  config = fewshot_config.get_config(f"task={task},method=full,family={family}")
  config.data.num_train, config.data.num_dev = 1000, 500
  expected = rf"config.model.family='{family}' is invalid; valid: 'opt' or 'llama' \(task '{task}' (generates|scores)"
  with pytest.raises(ConfigError, match=expected + rf".* the encoder family '{family}' has none\)"):
    pipeline.validate(config)


def test_row_tasks_on_a_decoder_need_the_causal_style_and_row_sampling():
  config = fewshot_config.get_config("task=squad,method=full,family=opt")
  with pytest.raises(
    ConfigError, match=r"data.num_train=0 is invalid; valid: an integer > 0: task 'squad' samples rows"
  ):
    pipeline.validate(config)
  config.data.num_train, config.data.num_dev = 1000, 500
  pipeline.validate(config)
  config.model.classifier = "similarity"
  with pytest.raises(
    ConfigError, match=r"model.classifier='similarity' is invalid; valid: 'causal' for the generation task 'squad'"
  ):
    pipeline.validate(config)
