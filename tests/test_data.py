"""Task data: strict TSV reading, the TFDS builder, the k-shot protocol, batching."""

import os

import numpy as np
import pytest

from fttpu import errors
from fttpu.data import fewshot, pipeline, tasks, tfds_local, tsv
from tests.conftest import data_dir


def write(path, text: bytes | str):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(text.encode() if isinstance(text, str) else text)


@pytest.mark.parametrize(
  "body, message",
  [
    (
      "sentence\tlabel\ngood film\t1\nbad\tfilm\t0\n",
      r"bad.tsv:3: expected 2 tab-separated columns \(sentence, label\), got 3",
    ),
    ("sentence\tlabel\ngood film\t1\nno label here\n", r"bad.tsv:3: expected 2 tab-separated columns"),
    ("sentence\tlabel\ngood film\t2\n", r"bad.tsv:2: label '2' is not an integer in 0..1"),
    ("sentence\tlabel\ngood film\tpositive\n", r"bad.tsv:2: label 'positive' is not an integer in 0..1"),
    ("text\tlabel\ngood film\t1\n", r"bad.tsv:1: expected the header"),
    (b"sentence\tlabel\ngood \xff film\t1\n", r"bad.tsv:2: not valid UTF-8"),
    ("", r"bad.tsv: empty file"),
    ("sentence\tlabel\n", r"bad.tsv: no rows after the header"),
  ],
)
def test_malformed_rows_name_file_line_and_expectation(tmp_path, body, message):
  write(tmp_path / "bad.tsv", body)
  with pytest.raises(errors.DataError, match=message):
    tsv.read_tsv(str(tmp_path / "bad.tsv"), num_classes=2)


def test_tfds_builder_gives_the_file_rows_in_order(tfds_dir):
  task = tasks.get_task("trec", data_dir())
  splits = tfds_local.load_splits(task, data_dir(), tfds_dir)
  for split in ("train", "test"):
    sentences, labels = tsv.read_tsv(f"{data_dir()}/trec/{split}.tsv", task.num_classes)
    assert splits[split][0] == sentences
    np.testing.assert_array_equal(splits[split][1], labels)
  # A process reads a split once; what a caller does to its copy does not reach the next read.
  splits["train"][0][0], splits["train"][1][0] = ("changed",), 99
  rows, labels = tfds_local.load_splits(task, data_dir(), tfds_dir)["train"]
  assert rows == tsv.read_tsv(f"{data_dir()}/trec/train.tsv", task.num_classes)[0]
  assert labels[0] != 99


def test_the_next_process_reads_the_decoded_copy_and_decodes_a_damaged_one_again(tmp_path, monkeypatch):
  write(tmp_path / "data/mytask/train.tsv", "sentence\tlabel\nfine \u00e9\t0\nfine too\t1\nthird\t1\n")
  write(tmp_path / "data/mytask/test.tsv", "sentence\tlabel\nfine\t0\n")
  task = tasks.get_task("mytask", str(tmp_path / "data"), label_descriptions=("no", "yes"))
  load = lambda: tfds_local.load_splits(task, str(tmp_path / "data"), str(tmp_path / "tfds"))
  decoded = load()
  assert decoded["train"][0] == [("fine \u00e9",), ("fine too",), ("third",)]
  [stored] = [p for p in (tmp_path / "tfds").rglob("fttpu-decoded-train-*.json")]

  def no_tfds(*_):
    raise AssertionError("decoded through TFDS again")

  tfds_local._read_all.cache_clear()  # as a new process starts
  with monkeypatch.context() as patch:
    patch.setattr(tfds_local, "_decode", no_tfds)
    again = load()
  assert again["train"][0] == decoded["train"][0] and np.array_equal(again["train"][1], decoded["train"][1])
  stored.write_text(stored.read_text()[:20])  # damaged: read through TFDS again, and rewritten
  tfds_local._read_all.cache_clear()
  assert load()["train"][0] == decoded["train"][0] and stored.read_text().endswith("}")


def test_malformed_row_fails_through_the_tfds_builder(tmp_path, tfds_dir):
  write(tmp_path / "mytask/train.tsv", "sentence\tlabel\nfine\t0\nfine too\t1\nbroken\t7\n")
  write(tmp_path / "mytask/test.tsv", "sentence\tlabel\nfine\t0\n")
  task = tasks.get_task("mytask", str(tmp_path), label_descriptions=("no", "yes"))
  with pytest.raises(errors.DataError, match=r"mytask/train.tsv:4: label '7' is not an integer in 0..1"):
    tfds_local.load_splits(task, str(tmp_path), tfds_dir)


def test_any_directory_in_the_format_is_a_task(tmp_path, tfds_dir):
  rows = [f"sentence {i}\t{i % 3}\n" for i in range(30)]
  write(tmp_path / "three/train.tsv", "sentence\tlabel\n" + "".join(rows))
  write(tmp_path / "three/test.tsv", "sentence\tlabel\n" + "".join(rows[:9]))
  task = tasks.get_task("three", str(tmp_path), label_descriptions=("a", "b", "c"))
  splits = tfds_local.load_splits(task, str(tmp_path), tfds_dir)
  assert len(splits["train"][0]) == 30 and splits["train"][0][4] == ("sentence 4",)
  assert len(splits["test"][0]) == 9
  with pytest.raises(ValueError, match="label_descriptions"):
    tasks.get_task("three", str(tmp_path))
  with pytest.raises(ValueError, match=r"6 classes .* 2 label descriptions"):
    tasks.get_task("trec", str(tmp_path), label_descriptions=("a", "b"))


def _load_after(barrier, task_name, data_dir_, cache_dir):
  barrier.wait()  # both processes prepare at once, as a sweep's workers do
  task = tasks.get_task(task_name, data_dir_, label_descriptions=("a", "b"))
  return tfds_local.load_splits(task, data_dir_, cache_dir)["train"][0][:3]


def test_processes_preparing_one_dataset_at_once_both_get_it(tmp_path):
  """Two sweep workers meeting an unprepared task: one prepares, the other waits and reuses it (without
  the lock the slower one failed on TFDS's rename: 'Destination ... already exists')."""
  import concurrent.futures
  import multiprocessing

  rows = "".join(f"sentence number {i}\t{i % 2}\n" for i in range(20_000))
  write(tmp_path / "big/train.tsv", "sentence\tlabel\n" + rows)
  write(tmp_path / "big/test.tsv", "sentence\tlabel\n" + rows[:200])
  context = multiprocessing.get_context("spawn")
  with context.Manager() as manager, concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
    barrier = manager.Barrier(2)
    futures = [pool.submit(_load_after, barrier, "big", str(tmp_path), str(tmp_path / "tfds")) for _ in range(2)]
    results = [f.result(timeout=300) for f in futures]
  assert results[0] == results[1] == [("sentence number 0",), ("sentence number 1",), ("sentence number 2",)]


def test_unknown_task_and_missing_data_say_where_to_point(tmp_path, tfds_dir, monkeypatch):
  with pytest.raises(
    ValueError,
    match=r"unknown task 'nope'.*registered: \['boolq', 'cb', 'mnli', 'multirc', 'rte', 'snli', 'sst2', 'sst5', 'trec', 'wic', 'wsc'\]",
  ):
    tasks.get_task("nope", str(tmp_path))
  # No local copy and no network: the TFDS catalog fallback fails at once and says what to do.
  import socket

  def offline(*args, **kwargs):
    raise socket.gaierror(-2, "Name or service not known")

  monkeypatch.setattr(socket, "getaddrinfo", offline)
  with pytest.raises(FileNotFoundError, match=r"no local copy at .*sst2.*'glue/sst2'.*--config.data.dir=DIR"):
    tfds_local.load_splits(tasks.get_task("sst2", str(tmp_path)), str(tmp_path), str(tmp_path / "tfds"))


def test_a_folder_in_the_working_directory_does_not_shadow_the_data(tmp_path, monkeypatch):
  (tmp_path / "trec").mkdir()
  monkeypatch.chdir(tmp_path)
  assert tasks.task_dir("trec", data_dir()) == os.path.join(data_dir(), "trec")


def test_changed_label_set_prepares_the_data_again(tmp_path, tfds_dir):
  write(tmp_path / "t/train.tsv", "sentence\tlabel\na\t0\nb\t1\nc\t2\n")
  write(tmp_path / "t/test.tsv", "sentence\tlabel\na\t0\n")
  three = tasks.get_task("t", str(tmp_path), label_descriptions=("x", "y", "z"))
  assert len(tfds_local.load_splits(three, str(tmp_path), tfds_dir)["train"][0]) == 3
  two = tasks.get_task("t", str(tmp_path), label_descriptions=("x", "y"))
  with pytest.raises(errors.DataError, match=r"t/train.tsv:4: label '2' is not an integer in 0..1"):
    tfds_local.load_splits(two, str(tmp_path), tfds_dir)


def test_label_descriptions_are_encoded_at_their_own_length(sst2_16shot):
  mask = sst2_16shot.prompts["label_attention_mask"]
  assert mask.shape[1] == mask.sum(1).max() < 16, "descriptions must not be padded to the tokenizer file's length"


def test_k_shot_is_deterministic_balanced_and_disjoint(tfds_dir):
  task = tasks.get_task("trec", data_dir())
  labels = tfds_local.load_splits(task, data_dir(), tfds_dir)["train"][1]
  train, dev = fewshot.sample_k_shot(labels, 16, 42, task.num_classes)
  again_train, again_dev = fewshot.sample_k_shot(labels, 16, 42, task.num_classes)
  np.testing.assert_array_equal(train, again_train)
  np.testing.assert_array_equal(dev, again_dev)
  for indices in (train, dev):
    assert np.bincount(labels[indices], minlength=6).tolist() == [16] * 6
  assert not set(train) & set(dev)
  samples = {seed: set(fewshot.sample_k_shot(labels, 16, seed, 6)[0]) for seed in fewshot.STANDARD_SEEDS}
  assert len({frozenset(s) for s in samples.values()}) == 5, "each standard seed draws a different sample"


def test_k_larger_than_a_class_fails_with_the_class_size():
  labels = np.array([0] * 50 + [1] * 5)
  with pytest.raises(ValueError, match=r"class 1 has 5 training rows; k=3 needs 6 \(k train \+ k dev\); lower data.k"):
    fewshot.sample_k_shot(labels, 3, 13, 2)


def test_train_batches_are_a_pure_function_of_step_and_cover_each_epoch(sst2_16shot):
  data = sst2_16shot.train
  first = pipeline.train_batch(data, 3, 8, seed=42)
  np.testing.assert_array_equal(first["input_ids"], pipeline.train_batch(data, 3, 8, seed=42)["input_ids"])
  epoch = np.concatenate([pipeline.train_batch(data, s, 8, seed=42)["input_ids"] for s in range(4)])
  assert sorted(map(bytes, epoch)) == sorted(map(bytes, data.input_ids))


def test_eval_batches_cover_every_example_once(sst2_16shot):
  batches = list(pipeline.eval_batches(sst2_16shot.test, 64))
  assert sum(b["weights"].sum() for b in batches) == len(sst2_16shot.test) == 872
  assert all(b["input_ids"].shape == (64, 64) for b in batches)


def test_splits_drop_only_columns_that_are_padding_in_every_example(sst2_config, sst2_16shot, minilm):
  config = sst2_config.data.copy_and_resolve_references()
  config.pad_to_multiple_of = 0
  padded = pipeline.load_few_shot(config, minilm.tokenizer, sst2_config.seed)
  for split in ("train", "dev", "test"):
    full, trimmed = getattr(padded, split), getattr(sst2_16shot, split)
    columns = trimmed.input_ids.shape[1]
    assert full.input_ids.shape[1] == config.max_length and columns % 16 == 0
    assert columns - 16 < full.lengths().max() <= columns, split  # the longest example rounded up to 16
    np.testing.assert_array_equal(trimmed.input_ids, full.input_ids[:, :columns])
    np.testing.assert_array_equal(trimmed.attention_mask, full.attention_mask[:, :columns])
    assert not full.attention_mask[:, columns:].any()
  assert sst2_16shot.train.input_ids.shape[1] < config.max_length  # SST-2's 16-shot sample is shorter


def test_bucketed_eval_batches_hold_every_example_once_and_its_every_token(sst2_16shot):
  test = sst2_16shot.test
  batches = list(pipeline.eval_batches(test, 64, multiple=16))
  assert {b["input_ids"].shape[1] for b in batches} == {16, 32, 48, 64}  # SST-2's test sentences: 3 to 55 tokens
  real = [
    (tuple(ids[mask == 1]), label)
    for b in batches
    for ids, mask, label, w in zip(b["input_ids"], b["attention_mask"], b["labels"], b["weights"])
    if w
  ]
  assert sorted(real) == sorted(
    (tuple(ids[mask == 1]), label) for ids, mask, label in zip(test.input_ids, test.attention_mask, test.labels)
  )
  assert sum(b["input_ids"].size for b in batches) < 0.6 * len(batches) * 64 * 64
