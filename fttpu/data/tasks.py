"""Task definitions: label names, prompt template and label descriptions, where the data lives.

A task is a directory of `train.tsv` and `test.tsv` (header `sentence<TAB>label`, integer
labels). Registered tasks carry their prompts; any other directory works when the config
gives `data.label_descriptions` (and optionally `data.label_names`).
"""
import dataclasses
import os
from typing import Optional

from fttpu.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  label_names: tuple[str, ...]
  label_descriptions: tuple[str, ...]
  template: str = "{sentence}"
  # TFDS catalog entry used when no local copy exists, and its split names for train/test.
  tfds_name: Optional[str] = None
  tfds_module: Optional[str] = None  # the module that registers tfds_name (TFDS imports catalog modules lazily)
  tfds_splits: tuple[tuple[str, str], ...] = ()

  @property
  def num_classes(self) -> int:
    return len(self.label_names)


TASKS = {
    "sst2": Task(
        name="sst2",
        label_names=("negative", "positive"),
        label_descriptions=("It was terrible.", "It was great."),
        tfds_name="glue/sst2",
        tfds_module="tensorflow_datasets.text.glue",
        # GLUE's test labels are hidden: the few-shot literature tests on the validation split.
        tfds_splits=(("train", "train"), ("test", "validation")),
    ),
    "trec": Task(
        name="trec",
        label_names=("description", "entity", "abbreviation", "human", "location", "number"),
        label_descriptions=(
            "A question asking for a description or definition.",
            "A question asking about a thing or an object.",
            "A question asking what an abbreviation stands for.",
            "A question asking about a person.",
            "A question asking about a place or location.",
            "A question asking for a number, a date or an amount.",
        ),
    ),
}


def task_dir(name: str, data_dir: str) -> Optional[str]:
  """DATA_DIR/name, or `name` itself when it is an absolute path; None when neither is a directory."""
  for candidate in (os.path.join(data_dir, name), name if os.path.isabs(name) else None):
    if candidate and os.path.isdir(candidate):
      return candidate
  return None


def _checked_template(template: str) -> str:
  """`template` if it formats with exactly the field {sentence}."""
  try:
    template.format(sentence="")
  except (KeyError, IndexError, ValueError):
    raise ConfigError(f"data.template={template!r} must contain {{sentence}} and no other {{...}} field") from None
  if "{sentence}" not in template:
    raise ConfigError(f"data.template={template!r} must contain {{sentence}}")
  return template


def get_task(name: str, data_dir: str, template: str = "", label_descriptions=(), label_names=()) -> Task:
  """The registered task `name`, or a task for the directory DATA_DIR/name, with config overrides."""
  if name in TASKS:
    task = TASKS[name]
  elif task_dir(name, data_dir):
    if not label_descriptions:
      raise ConfigError(f"task {name!r} is not registered (registered: {sorted(TASKS)}); for a task directory "
                       "give its prompts with --config.data.label_descriptions='(\"desc of 0\", \"desc of 1\", ...)'")
    task = Task(name=name, label_names=tuple(label_names) or tuple(str(i) for i in range(len(label_descriptions))),
                label_descriptions=tuple(label_descriptions))
  else:
    raise ConfigError(f"unknown task {name!r}: not registered (registered: {sorted(TASKS)}) and no directory "
                     f"{os.path.join(data_dir, name)!r}")
  overrides = {}
  if template:
    overrides["template"] = _checked_template(template)
  if label_descriptions:
    overrides["label_descriptions"] = tuple(label_descriptions)
  if label_names:
    overrides["label_names"] = tuple(label_names)
  task = dataclasses.replace(task, **overrides)
  if len(task.label_descriptions) != task.num_classes:
    raise ConfigError(f"task {name!r} has {task.num_classes} classes {list(task.label_names)} but "
                     f"{len(task.label_descriptions)} label descriptions")
  return task
