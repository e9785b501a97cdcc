"""Example batches of a config's task without its data: shaped as its training batches (fttpu.plan compiles them).

classification   pipeline.example_batch of the classifier style (causal: (n, classes, length))
multiple choice  row tasks COPA, ReCoRD: causal (n, choices, length) with choice_mask and gold_mask (n, choices);
                 choices: COPA's 2, or given (ReCoRD's vary per row, choice_tasks.batch_choices)
generation       row tasks SQuAD, DROP: generation.example_batch, teacher forcing (n, length) and the prompts
                 (n, length - data.max_new_tokens) with row_index, as generation.train_rows
"""

from fttpu.data import choice_tasks, generation, pipeline, row_tasks, tasks
from fttpu.errors import ConfigError, check


def _no_choices(task: str, choices: int, why: str) -> None:
  if choices:
    raise ConfigError(f"choices={choices} for task {task!r}, which {why}; only COPA and ReCoRD take it (0: none)")


def task_example(data_config, style: str, batch_size: int, choices: int = 0) -> tuple[str, dict]:
  """(the task's name, a batch of `batch_size` rows shaped as its training batches) for config.data under the
  classifier `style`; `choices`: candidates per row of a multiple-choice row task (0: the task's own count)."""
  d = data_config
  if d.task not in row_tasks.ROW_TASKS:
    _no_choices(d.task, choices, "has its own classes")
    task = tasks.task_of(d, style)
    return task.name, pipeline.example_batch(style, batch_size, d.max_length, task.num_classes)
  check(style == "causal", "model.classifier", style, f"'causal' for the row task {d.task!r}")
  if generation.is_generation_task(d.task):
    _no_choices(d.task, choices, "generates its answers (no candidates)")
    return d.task, generation.example_batch(batch_size, d.max_length, d.max_new_tokens)
  count = choice_tasks.batch_choices(d.task, choices)
  return d.task, pipeline.example_batch("causal", batch_size, d.max_length, count, row_choices=True)
