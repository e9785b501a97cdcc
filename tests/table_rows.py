"""Small hand-written rows of every task of the OPT-13B table, each in its task's real local format.

SST-2 and the SuperGLUE tasks as TSV in their own headers (experiments/mezo_opt13b/README.md "Data"),
COPA, ReCoRD, SQuAD and DROP as JSON lines in their fields (fttpu/data/row_tasks.py). Row i varies a
name, a number and a colour with i, so the rows differ and every label occurs.
"""

import json
import os

NAMES = ("Anna", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gus", "Hana")
COLOURS = ("red", "blue", "green", "black", "white", "pink", "gold", "gray")


def tsv_rows(task: str, i: int) -> tuple[tuple[str, ...], tuple]:
  """(header, values) of row i of an SST-2 or SuperGLUE task, the label last."""
  name, colour, other = NAMES[i % 8], COLOURS[i % 8], NAMES[(i + 3) % 8]
  return {
    "sst2": (("sentence", "label"), (f"{name} found the {colour} film {'great' if i % 2 else 'dull'} .", i % 2)),
    "rte": (
      ("sentence1", "sentence2", "label"),
      (f"{name} painted the house {colour}.", f"The house is {colour}.", i % 2),
    ),
    "cb": (
      ("sentence1", "sentence2", "label"),
      (f"{name} said the car might be {colour}.", f"the car is {colour}", i % 3),
    ),
    "boolq": (("passage", "question", "label"), (f"{name} owns a {colour} bike.", f"does {name} own a bike", i % 2)),
    "wsc": (("text", "span1", "span2", "label"), (f"{name} told {other} he was late.", other, "he", i % 2)),
    "wic": (
      ("word", "sentence1", "sentence2", "label"),
      ("bank", f"{name} sat on the {colour} bank.", f"The bank lent {name} money.", i % 2),
    ),
    "multirc": (
      ("paragraph", "question", "answer", "label"),
      (f"{name} bought {i + 2} {colour} apples.", f"What did {name} buy?", f"{colour} apples", i % 2),
    ),
  }[task]


def json_row(task: str, i: int) -> dict:
  """Row i of a row task in its JSON-lines fields."""
  name, colour, other = NAMES[i % 8], COLOURS[i % 8], NAMES[(i + 3) % 8]
  return {
    "copa": {
      "premise": f"{name} dropped the {colour} glass.",
      "choice1": "The glass broke.",
      "choice2": f"{name} went to sleep.",
      "question": ("cause", "effect")[i % 2],
      "label": i % 2,
    },
    "record": {
      "passage": f"{name} met {other} in Paris.\n@highlight\n{name} travels\n@highlight\nParis hosts {other}",
      "query": f"@placeholder greeted {other} in the {colour} hall.",
      "entities": [name, other, "Paris"],
      "answers": [name],
    },
    "squad": {
      "title": "Toy",
      "context": f"{name} painted the door {colour}.",
      "question": f"What colour is the door {name} painted?",
      "answers": [colour, f"{colour} door"],
    },
    "drop": {
      "passage": f"{name} scored {i + 1} goals and {other} scored {i + 3}.",
      "question": f"How many more goals did {other} score than {name}?",
      "answers": ["2", "two"],
    },
  }[task]


TSV_TASKS = ("sst2", "rte", "cb", "boolq", "wsc", "wic", "multirc")
JSONL_TASKS = ("copa", "record", "squad", "drop")


def write_task_folders(root: str, train_rows: int = 16, test_rows: int = 8) -> list[str]:
  """DATA_DIR/<task>/{train,test}.{tsv,jsonl} for every table task; returns every row's text (for a tokenizer)."""
  texts = []
  for task in TSV_TASKS + JSONL_TASKS:
    os.makedirs(os.path.join(root, task), exist_ok=True)
    for split, count in (("train", train_rows), ("test", test_rows)):
      if task in TSV_TASKS:
        header = tsv_rows(task, 0)[0]
        lines = ["\t".join(header)] + ["\t".join(map(str, tsv_rows(task, i)[1])) for i in range(count)]
        texts += lines[1:]
        path = os.path.join(root, task, f"{split}.tsv")
      else:
        lines = [json.dumps(json_row(task, i)) for i in range(count)]
        texts += [" ".join(str(v) for v in json_row(task, i).values()) for i in range(count)]
        path = os.path.join(root, task, f"{split}.jsonl")
      with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
  return texts
