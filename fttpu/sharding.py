"""Device mesh from config.mesh and the shardings of state and batches.

For now parameters are replicated and batches split over the `data` axis; the model's
logical axis rules (FSDP, tensor parallelism) plug in here.
"""
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fttpu.config import ConfigError


def make_mesh(axes: dict) -> Mesh:
  """{'data': -1} -> a Mesh over all devices; at most one axis may be -1."""
  names, sizes = list(axes), list(axes.values())
  devices = jax.devices()
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh {dict(axes)}: at most one axis may be -1")
  known = math.prod(s for s in sizes if s != -1)
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh {dict(axes)} needs {math.prod(sizes)} devices; {len(devices)} are available")
  return Mesh(np.asarray(devices).reshape(sizes), names)


def check_batch_sizes(mesh: Mesh, *batch_sizes: int) -> None:
  """Batches split over the `data` axis: every batch size must divide by its size."""
  size = dict(zip(mesh.axis_names, mesh.devices.shape)).get("data", 1)
  for batch_size in batch_sizes:
    if batch_size % size:
      raise ConfigError(f"batch size {batch_size} does not divide over the mesh's data axis of {size} devices; "
                        f"use a multiple of {size} (train.batch_size, train.eval_batch_size)")


SHARED_KEYS = ("label_input_ids", "label_attention_mask", "verbalizer_ids", "mask_token_id")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_shardings(mesh: Mesh, batch: dict) -> dict:
  """Examples split over `data`; what every example shares (label descriptions, verbalizer ids) replicated."""
  split = NamedSharding(mesh, P("data")) if "data" in mesh.axis_names else replicated(mesh)
  return {k: replicated(mesh) if k in SHARED_KEYS else split for k in batch}


def put_batch(mesh: Mesh, batch: dict) -> dict:
  return jax.device_put(batch, batch_shardings(mesh, batch))
