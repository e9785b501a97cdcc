"""The user errors: bad input or a failed run, not a bug in fttpu. Every CLI shows them as one line.

A leaf module: everything may import it, it imports nothing of fttpu.
"""

import re


class ConfigError(ValueError):
  """A config value that fttpu cannot run with."""


class DataError(ValueError):
  """A data file that does not follow the task format; the message names file and line."""


class CheckpointError(ValueError):
  """A checkpoint directory that cannot be read into the model, or cannot be resumed."""


# What the CLIs catch and show as `error: <message>` (fttpu.cli), no traceback.
USER_ERRORS = (ConfigError, DataError, CheckpointError, OSError, FloatingPointError)


def check(condition: bool, key: str, value, valid: str) -> None:
  """Raises ConfigError naming config.`key`, its value and what is valid, unless `condition`."""
  if not condition:
    raise ConfigError(f"config.{key}={value!r} is invalid; valid: {valid}")


def check_regex(pattern: str, key: str) -> None:
  try:
    re.compile(pattern)
  except re.error as e:
    raise ConfigError(f"config.{key}={pattern!r} is not a valid regular expression: {e}") from None
