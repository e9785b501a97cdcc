"""Bucket workdirs, checkpoints and data: gs:// paths through a local GCS server (gcp-storage-emulator,
the JSON API that gcsfs and tensorstore speak), so the code under test is the code a pod runs:
epath + gcsfs for fttpu's files, orbax + tensorstore's GCS driver for the arrays. Tiny random
RoBERTa, real SST-2 rows."""

import json
import logging
import os
import socket
import time

import jax
import numpy as np
import pytest

from fttpu import checkpoint, export, files, metrics, train, workdir as workdir_lib
from fttpu.models import hf
from tests.conftest import REPO, data_dir
from tests.test_bad_input import make_config

BUCKET = "fttpu-test"


def _send_generations(objects, handlers) -> None:
  """Real GCS names an object's generation in every download's x-goog-generation header, and
  tensorstore's OCDBT (orbax's array store) reads it; gcp-storage-emulator leaves it out, so it is added."""
  download = objects.download

  def download_with_generation(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    if response.status.value in (200, 206):
      params = request.params
      response["x-goog-generation"] = storage.get_file_obj(params["bucket_name"], params["object_id"])["generation"]

  objects.download = download_with_generation  # objects.get (alt=media) calls it by name
  for _, routes in handlers:
    for method, handler in routes.items():
      if handler is download:
        routes[method] = download_with_generation


@pytest.fixture(scope="module")
def bucket():
  """gs://fttpu-test on a GCS server in this process (in memory), for this module's tests."""
  from gcp_storage_emulator import server as emulator
  from gcp_storage_emulator.handlers import objects
  from gcp_storage_emulator.server import create_server

  _send_generations(objects, emulator.HANDLERS)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
  server.start()
  url = f"http://127.0.0.1:{port}"
  env = {
    "STORAGE_EMULATOR_HOST": url,  # gcsfs (epath's gs:// backend without TensorFlow)
    "TENSORSTORE_GCS_HTTP_URL": url,
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
  }  # orbax's arrays
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    yield f"gs://{BUCKET}"
  finally:
    server.stop()
    for key, value in saved.items():
      os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


def test_a_uri_is_never_made_a_local_folder_and_local_paths_become_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert files.resolve("gs://b/runs/x/") == "gs://b/runs/x"
  assert files.resolve("runs/x") == str(tmp_path / "runs" / "x")
  assert files.resolve("file:///tmp/x") == "/tmp/x"
  assert files.is_remote("s3://b/x") and not files.is_remote("/tmp/gs://x") and not files.is_remote("file:///x")
  assert str(checkpoint.make_manager("runs/x", keep=1).directory) == str(tmp_path / "runs" / "x" / "checkpoints")


@pytest.mark.slow  # 38 s here: make test-all; make test checks the remote paths above
def test_a_run_in_a_bucket_trains_as_a_local_one_and_resumes_past_a_damaged_checkpoint(
  bucket, tiny_roberta, tmp_path, caplog, monkeypatch
):
  monkeypatch.setattr(hf, "MODEL_CACHE", str(tmp_path / "model-cache"))
  model, data = f"{bucket}/models/tiny-roberta", f"{bucket}/data"
  files.copy_tree(tiny_roberta, model)
  files.copy_tree(os.path.join(data_dir(), "sst2"), f"{data}/sst2")
  settings = {"train.steps": 6, "train.checkpoint_every": 2, "train.log_every": 1, "train.keep_checkpoints": 3}
  local = train.run(make_config(tiny_roberta, **settings), str(tmp_path / "local"))
  workdir = f"{bucket}/runs/full"
  config = make_config(tiny_roberta, **settings, **{"model.checkpoint": model, "data.dir": data})
  record = train.run(config, workdir + "/")  # a trailing '/' names the same workdir
  for key in ("eval/accuracy", "eval/loss", "examples"):
    assert record[key] == local[key], key  # the same weights and rows, read from the bucket
  assert [l["train/loss"] for l in metrics.read_metrics(workdir) if "train/loss" in l] == [
    l["train/loss"] for l in metrics.read_metrics(str(tmp_path / "local")) if "train/loss" in l
  ]
  assert not os.path.exists(REPO / "gs:") and not os.path.exists("gs:"), "nothing became a local gs: folder"
  copied = tmp_path / "model-cache" / "gs" / BUCKET / "models" / "tiny-roberta"
  assert sorted(os.listdir(copied)) == sorted(os.listdir(tiny_roberta)), "the weights are read from a local copy"
  assert {"config.json", "metrics.jsonl", "checkpoints", "tensorboard"} <= set(files.listdir(workdir))
  assert workdir_lib.LEASE not in files.listdir(workdir), "the lease is given back when the run ends"
  assert any(name.startswith("events.out.tfevents") for name in files.listdir(f"{workdir}/tensorboard"))
  manager = checkpoint.make_manager(workdir, keep=3)
  assert str(manager.directory) == f"{workdir}/checkpoints" and manager.all_steps() == [2, 4, 6]
  saved = [np.asarray(x) for x in jax.tree_util.tree_leaves(checkpoint.restore_untyped(manager, 6))]

  newest = f"{workdir}/checkpoints/6/state"
  victim = sorted(name for name in files.file_sizes(newest) if "ocdbt" in name or name.startswith("d/"))[0]
  files.write_atomic(f"{newest}/{victim}", b"")  # truncated, as a preempted upload leaves it
  caplog.set_level(logging.WARNING)
  again = train.run(config, workdir)
  assert f"checkpoint {workdir}/checkpoints/6 is damaged: 1 file(s) of the wrong size" in caplog.text
  assert [name.split("-")[0] for name in files.listdir(f"{workdir}/damaged")] == ["6"], "moved aside, not deleted"
  resumed = [
    np.asarray(x)
    for x in jax.tree_util.tree_leaves(checkpoint.restore_untyped(checkpoint.make_manager(workdir, keep=3), 6))
  ]
  assert all(np.array_equal(a, b) for a, b in zip(saved, resumed, strict=True)), "resumed from 4 to the same step 6"
  assert again["eval/accuracy"] == record["eval/accuracy"]
  lines = metrics.read_metrics(workdir)
  assert [l["step"] for l in lines if "train/loss" in l] == [1, 2, 3, 4, 5, 6], "one uninterrupted run in the file"
  assert sum(bool(l.get("final")) for l in lines) == 1

  out = tmp_path / "export"
  exported = export.export_workdir(workdir, str(out))
  assert exported["step"] == 6 and "model.safetensors" in exported["files"]


def lease_renewed(workdir) -> float:
  """When the lease was last renewed. The emulator can serve an object while its holder's thread rewrites
  it (GCS swaps objects whole): a torn read is read again."""
  for _ in range(50):
    try:
      return json.loads(files.read_text(f"{workdir}/{workdir_lib.LEASE}"))["renewed"]
    except json.JSONDecodeError:
      time.sleep(0.01)
  raise AssertionError("the lease never read whole")


def test_a_bucket_workdir_is_held_by_a_lease_that_a_killed_run_gives_up_when_it_lapses(bucket, caplog):
  workdir = f"{bucket}/runs/leased"
  fast = dict(renew_seconds=0.2, settle_seconds=0.05)
  first = workdir_lib.BucketLease(workdir, **fast)
  assert first.acquire() == ""
  renewed = lease_renewed(workdir)
  time.sleep(0.6)
  assert lease_renewed(workdir) > renewed, "the holder renews it"
  second = workdir_lib.BucketLease(workdir, **fast)
  assert second.acquire().startswith(
    f"workdir {workdir} is in use by another run (process {os.getpid()} on host "
    f"{socket.gethostname()}, its lease {workdir}/{workdir_lib.LEASE} renewed"
  )
  first.release()
  assert not files.exists(f"{workdir}/{workdir_lib.LEASE}")
  assert second.acquire() == "", "free once released"
  second._stop.set()  # the holder is killed: nothing renews the lease any more
  second._renewer.join()
  caplog.set_level(logging.WARNING)
  third = workdir_lib.BucketLease(workdir, lease_seconds=0.5, **fast)
  assert third.acquire().startswith(f"workdir {workdir} is in use"), "not before the lease lapses"
  time.sleep(0.6)
  assert third.acquire() == "" and "taking over" in caplog.text
  third.release()
  with workdir_lib.exclusive(workdir):  # the context manager takes the bucket lease for a gs:// workdir
    assert files.exists(f"{workdir}/{workdir_lib.LEASE}")
    with pytest.raises(workdir_lib.WorkdirBusy, match="use another --workdir"):
      with workdir_lib.exclusive(workdir):
        pass
  assert not files.exists(f"{workdir}/{workdir_lib.LEASE}")


def test_a_sweep_finds_finished_cells_in_a_bucket_and_uploads_each_cells_log(bucket, monkeypatch):
  from experiments import sweeps
  from experiments.mezo_opt13b import grid

  root = f"{bucket}/sweep"
  done, todo = sweeps.cells(grid.ROWS, ["sst2"], [13, 42])[:2]
  files.makedirs(done.workdir(root))
  files.write_atomic(
    files.join(done.workdir(root), "metrics.jsonl"),
    json.dumps({"step": 1, "train/loss": 0.7}) + "\n" + json.dumps({"step": 1, "final": True}) + "\n",
  )
  assert sweeps.finished(done, root) and not sweeps.finished(todo, root)

  def fake_run(config, workdir):
    logging.getLogger().warning("cell trained in %s", workdir)

  monkeypatch.setattr(train, "run", fake_run)
  assert sweeps.run_cell(todo, root, "", data_dir()) is None
  assert f"cell trained in {todo.workdir(root)}" in files.read_text(files.join(todo.workdir(root), "run.log"))
