"""Stage a Hugging Face model directory as fttpu loads it: config.json, safetensors weights
(model.safetensors, or shards with model.safetensors.index.json) and tokenizer.json.

  python -m fttpu.models.stage --from=DIR --to=OUT

Safetensors weights and tokenizer.json are copied as they are (a sharded index is kept). PyTorch
weights (pytorch_model.bin, or shards with pytorch_model.bin.index.json) are converted, shard by
shard, which needs `torch` on the staging machine; a tokenizer without tokenizer.json (vocab.json +
merges.txt, vocab.txt, tokenizer.model) is written as one by transformers' fast tokenizer, which
needs `transformers`. Neither is a dependency of fttpu itself. OUT is written beside itself and
renamed into place, so a failed staging leaves nothing half-written.
"""

import json
import os
import shutil

from absl import flags

from fttpu import files
from fttpu.errors import CheckpointError

flags.DEFINE_string("from", None, "A Hugging Face model directory (config.json, weights, tokenizer files).")
flags.DEFINE_string("to", None, "Where the staged directory goes (must not exist or be empty).")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _torch_shards(source: str) -> dict:
  """{bin file: safetensors file} of a PyTorch checkpoint (one file or an index of shards)."""
  index = os.path.join(source, "pytorch_model.bin.index.json")
  if os.path.isfile(index):
    with open(index) as f:
      names = sorted(set(json.load(f)["weight_map"].values()))
    return {name: name.replace("pytorch_model", "model").replace(".bin", ".safetensors") for name in names}
  if os.path.isfile(os.path.join(source, "pytorch_model.bin")):
    return {"pytorch_model.bin": "model.safetensors"}
  return {}


def stage_weights(source: str, out: str) -> list[str]:
  """Copies or converts the weights of `source` into `out`; returns the files written."""
  index = "model.safetensors.index.json"
  if os.path.isfile(os.path.join(source, "model.safetensors")):
    names = ["model.safetensors"]
  elif os.path.isfile(os.path.join(source, index)):
    with open(os.path.join(source, index)) as f:
      names = [index, *sorted(set(json.load(f)["weight_map"].values()))]
  else:
    shards = _torch_shards(source)
    if not shards:
      raise CheckpointError(
        f"{source} has no weights fttpu can stage: model.safetensors, "
        f"{index}, pytorch_model.bin or pytorch_model.bin.index.json"
      )
    return _convert_torch(source, out, shards)
  for name in names:
    shutil.copy(os.path.join(source, name), os.path.join(out, name))
  return names


def _convert_torch(source: str, out: str, shards: dict) -> list[str]:
  try:
    import torch
    from safetensors.torch import save_file
  except ImportError:
    raise CheckpointError(
      f"{source} holds PyTorch weights (.bin): converting them needs torch on this machine "
      "(pip install torch), or stage a safetensors copy"
    ) from None
  weight_map = {}
  for bin_name, safe_name in shards.items():
    tensors = torch.load(os.path.join(source, bin_name), map_location="cpu", weights_only=True)
    # safetensors refuses tensors that share storage (tied embeddings): each gets its own copy
    save_file(
      {k: v.contiguous().clone() for k, v in tensors.items()}, os.path.join(out, safe_name), metadata={"format": "pt"}
    )
    weight_map.update(dict.fromkeys(tensors, safe_name))
  written = list(shards.values())
  if len(shards) > 1:
    files.write_atomic(
      os.path.join(out, "model.safetensors.index.json"),
      json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2),
    )
    written.insert(0, "model.safetensors.index.json")
  return written


def stage_tokenizer(source: str, out: str) -> list[str]:
  """tokenizer.json (and the tokenizer's config files) into `out`; returns the files written."""
  if not os.path.isfile(os.path.join(source, "tokenizer.json")):
    try:
      import transformers
    except ImportError:
      raise CheckpointError(
        f"{source} has no tokenizer.json: writing one from its tokenizer files needs "
        "transformers on this machine (pip install transformers)"
      ) from None
    transformers.AutoTokenizer.from_pretrained(source, use_fast=True).save_pretrained(out)
    source = out
  written = []
  for name in TOKENIZER_FILES:
    if os.path.isfile(os.path.join(source, name)):
      if source != out:
        shutil.copy(os.path.join(source, name), os.path.join(out, name))
      written.append(name)
  return written


def stage(source: str, out: str) -> list[str]:
  """OUT as the module docstring says; returns its files."""
  if not os.path.isfile(os.path.join(source, "config.json")):
    raise CheckpointError(f"{source} is not a Hugging Face model directory: it has no config.json")
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise CheckpointError(f"--to={out} exists and is not an empty directory; choose a new one")

  def build(directory):
    shutil.copy(os.path.join(source, "config.json"), os.path.join(directory, "config.json"))
    stage_weights(source, directory)
    stage_tokenizer(source, directory)

  files.replace_directory(build, out)
  return sorted(os.listdir(out))


def main(argv):
  del argv
  f = flags.FLAGS
  if not f["from"].value or not f.to:
    raise CheckpointError("give --from=HF_DIR and --to=OUT")
  print(json.dumps({"to": f.to, "files": stage(f["from"].value, f.to)}))


if __name__ == "__main__":
  from fttpu import cli

  cli.run(main)
