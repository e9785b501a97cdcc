"""MeZO's generation tasks: SQuAD (v1.1) and DROP, answered by greedy decoding and scored by token F1.

Templates are MeZO's large_models/templates.py, quoted in each function's comment. MeZO's verbalize
follows the prompt with the row's first gold answer and a newline ("Answer: {answer}\\n"): that is what
training predicts, and decoding stops at the newline. Local rows are <split>.jsonl in the fields of
Hugging Face's exports (SQuAD: title, context, question, answers; DROP: passage, question, answers, or
answers_spans as Hugging Face's drop names it); the TFDS catalog has both.
"""

from typing import Mapping

from fttpu.data.rows import TEXTS, Catalog, Column, RowTask


# MeZO SQuADv2Template (its SQuADDataset's template):
#   encode: f"Title: {title}\nContext: {context}\nQuestion: {question}\nAnswer:" with question = .strip()
#   verbalize: f"Title: {title}\nContext: {context}\nQuestion: {question}\nAnswer: {answer}\n", answer = answers[0]
def squad_prompt(fields: Mapping) -> str:
  return f"Title: {fields['title']}\nContext: {fields['context']}\nQuestion: {fields['question'].strip()}\nAnswer:"


def answer_after(prompt: str, answer: str) -> str:
  """MeZO's verbalize of both tasks: the prompt, a space, the answer and a newline."""
  return f"{prompt} {answer}\n"


SQUAD = RowTask(
  name="squad",
  columns=(Column("title"), Column("context"), Column("question"), Column("answers", TEXTS)),
  prompt=squad_prompt,
  verbalize=lambda fields, answer: answer_after(squad_prompt(fields), answer),
  golds=lambda fields: tuple(fields["answers"]),  # MeZO: example['answers']['text']
  metric="f1",
  catalog=Catalog(
    "squad/v1.1",
    "tensorflow_datasets.datasets.squad.squad_dataset_builder",
    (("train", "train"), ("test", "validation")),
    lambda example: {
      **{k: example[k] for k in ("title", "context", "question")},
      "answers": tuple(example["answers"]["text"]),
    },
    needs_tensorflow=False,  # plain JSON downloads, read with etils
  ),
)


# MeZO DROPTemplate (context is the row's passage):
#   encode: f"Passage: {context}\nQuestion: {question}\nAnswer:" with question = .strip()
#   verbalize: f"Passage: {context}\nQuestion: {question}\nAnswer: {answer}\n", answer = answers[0]
def drop_prompt(fields: Mapping) -> str:
  return f"Passage: {fields['passage']}\nQuestion: {fields['question'].strip()}\nAnswer:"


def drop_catalog_answers(example: Mapping) -> tuple[str, ...]:
  """TFDS drop's golds as MeZO's Hugging Face copy gives them: the validated answers where a row has some
  (the validation split), else its answer (train); TFDS writes "" for an answer it cannot render (a date
  without a day), which is no gold. (TFDS keeps a multi-span answer's first span only and writes dates
  as year-month-day, where Hugging Face's drop lists every span and writes "day month year".)"""
  validated = tuple(a for a in example["validated_answers"] if a)
  return tuple(dict.fromkeys(validated or tuple(a for a in (example["answer"],) if a)))


DROP = RowTask(
  name="drop",
  columns=(Column("passage"), Column("question"), Column("answers", TEXTS, aliases=("answers_spans",))),
  prompt=drop_prompt,
  verbalize=lambda fields, answer: answer_after(drop_prompt(fields), answer),
  golds=lambda fields: tuple(fields["answers"]),  # MeZO: example['answers_spans']['spans']
  metric="f1",  # MeZO's DROPDataset: the SQuAD token F1 over the golds (fttpu.data.qa_metrics)
  catalog=Catalog(
    "drop",
    "tensorflow_datasets.text.drop",
    (("train", "train"), ("test", "dev")),
    lambda example: {
      "passage": example["passage"],
      "question": example["question"],
      "answers": drop_catalog_answers(example),
    },
    needs_tensorflow=True,  # TFDS extracts the zip with tf.io.gfile
  ),
)
