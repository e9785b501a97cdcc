"""Entry point: python -m fttpu.main --config=configs/fewshot.py:task=sst2,method=full --workdir=DIR"""
import json

from absl import app, flags, logging
from ml_collections import config_flags

from fttpu import train

config_flags.DEFINE_config_file("config", None, "Config file, optionally with :key=value,... arguments.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for config.json, metrics.jsonl, TensorBoard and checkpoints.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  result = train.run(flags.FLAGS.config, flags.FLAGS.workdir)
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
