"""The one path layer: local paths and bucket URIs (gs://, s3://, through etils.epath) read and written
the same way. Local files are old or new, never half written (written beside the target, then renamed
over it); a bucket object is replaced whole by its upload, which is atomic on GCS and S3.

A URI is never made absolute (`os.path.abspath("gs://b/x")` is the local folder `gs:/b/x`): `resolve`
keeps it and makes only local paths absolute. Objects cannot be appended to, so `append_text` rewrites
a remote file whole (fine for the small files fttpu appends: metrics lines).
"""

import contextlib
import os
import re
import shutil
import tempfile

from etils import epath

_URI = re.compile(r"^[a-z][a-z0-9+.-]*://")


def is_remote(path) -> bool:
  """True for a bucket URI (gs://b/x, s3://b/x), False for a local path (file:// counts as local)."""
  return bool(_URI.match(str(path))) and not str(path).startswith("file://")


def resolve(path) -> str:
  """An absolute local path, or the URI as given (without a trailing '/')."""
  path = str(path)
  if path.startswith("file://"):
    path = path[len("file://") :]
  if is_remote(path):
    return path.rstrip("/")
  return os.path.abspath(os.path.expanduser(path))


def join(path, *parts) -> str:
  return os.path.join(str(path), *parts)  # posix joining suits URIs too


def as_path(path) -> epath.Path:
  return epath.Path(str(path))


def exists(path) -> bool:
  return as_path(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path) -> bool:
  return as_path(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path) -> bool:
  return as_path(path).is_file() if is_remote(path) else os.path.isfile(path)


def listdir(path) -> list[str]:
  """The names in a directory (FileNotFoundError when there is none)."""
  if is_remote(path):
    if not as_path(path).is_dir():
      raise FileNotFoundError(2, "No such directory", str(path))
    return sorted(child.name for child in as_path(path).iterdir())
  return sorted(os.listdir(path))


def makedirs(path) -> None:
  as_path(path).mkdir(parents=True, exist_ok=True) if is_remote(path) else os.makedirs(path, exist_ok=True)


def read_bytes(path) -> bytes:
  """The file's bytes; FileNotFoundError naming `path` when it is missing."""
  if is_remote(path):
    if not as_path(path).is_file():
      raise FileNotFoundError(2, "No such file", str(path))
    return as_path(path).read_bytes()
  with open(path, "rb") as f:
    return f.read()


def read_text(path) -> str:
  return read_bytes(path).decode("utf-8")


def file_sizes(directory) -> dict[str, int]:
  """{path relative to `directory`: bytes} of every file below it."""
  if is_remote(directory):
    sizes = {}  # iterdir level by level: gcsfs refuses rglob's '**', and epath's walk drops the scheme
    for child in as_path(directory).iterdir():
      if child.is_dir():
        sizes.update({f"{child.name}/{name}": n for name, n in file_sizes(str(child)).items()})
      else:
        sizes[child.name] = child.stat().length
    return sizes
  sizes = {}
  for parent, _, names in os.walk(directory):
    for name in names:
      full = os.path.join(parent, name)
      sizes[os.path.relpath(full, directory)] = os.path.getsize(full)
  return sizes


def size(path) -> int:
  return as_path(path).stat().length if is_remote(path) else os.path.getsize(path)


def write_atomic(path, content: str | bytes) -> None:
  """`path` holds the old content or all of `content`, never a part of it (a crash or a full disk
  leaves the previous file); fails with an OSError naming `path`."""
  data = content.encode() if isinstance(content, str) else content
  if is_remote(path):
    as_path(path).write_bytes(data)  # an object upload replaces the object whole, or not at all
    return
  _replace_local(path, lambda f: f.write(data))


def _replace_local(path, write) -> None:
  """`write(file)` fills a temporary beside local `path`, which is then renamed over it (fsynced first)."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except BaseException as e:
    with contextlib.suppress(OSError):
      os.unlink(temporary)
    if isinstance(e, OSError) and e.filename is None:
      raise OSError(e.errno, e.strerror, path) from None  # name the file, not the temporary
    raise


def append_text(path, text: str) -> None:
  """Adds `text` to the end of `path` (creating it): one write locally, a rewrite of the object remotely."""
  if is_remote(path):
    old = read_bytes(path) if exists(path) else b""
    write_atomic(path, old + text.encode())
    return
  with open(path, "a") as f:
    f.write(text)  # one write: a line is torn only by a crash or a full disk


def remove(path) -> None:
  """Deletes a file or a whole directory; nothing when it is not there."""
  if is_remote(path):
    if as_path(path).is_dir():
      as_path(path).rmtree()
    elif as_path(path).exists():
      as_path(path).unlink()
  elif os.path.isdir(path):
    shutil.rmtree(path, ignore_errors=True)
  elif os.path.exists(path):
    os.unlink(path)


def copy_tree(source, destination) -> None:
  """Copies a file, or a directory and everything below it, between any two places."""
  if not is_remote(source) and not is_remote(destination):
    (
      shutil.copytree(source, destination, dirs_exist_ok=True)
      if os.path.isdir(source)
      else shutil.copy(source, destination)
    )
    return
  if not isdir(source):
    target = join(destination, os.path.basename(str(source))) if isdir(destination) else destination
    if is_remote(source) and is_remote(destination):
      as_path(source).copy(target, overwrite=True)  # inside the store: no bytes through this host
    else:
      write_atomic(target, read_bytes(source))
    return
  makedirs(destination)
  for name in listdir(source):
    copy_tree(join(source, name), join(destination, name))


def move(source, destination) -> None:
  """Moves a file or directory (a copy and a delete between buckets, where nothing renames)."""
  if not is_remote(source) and not is_remote(destination):
    shutil.move(source, destination)
    return
  copy_tree(source, destination)
  remove(source)


def replace_directory(build, out_dir) -> None:
  """`build(tmp)` writes the new contents; they then take OUT's place whole (the old OUT, if any, is
  removed only once the new one is complete). A bucket OUT is built locally, then uploaded over it."""
  if is_remote(out_dir):
    with tempfile.TemporaryDirectory(prefix="fttpu-upload-") as local:
      build(local)
      remove(out_dir)
      copy_tree(local, out_dir)
    return
  parent = os.path.dirname(os.path.abspath(out_dir)) or "."
  os.makedirs(parent, exist_ok=True)
  new = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}.new-")
  try:
    build(new)
  except BaseException:
    shutil.rmtree(new, ignore_errors=True)
    raise
  old = None
  if os.path.exists(out_dir):
    old = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}.old-")
    os.replace(out_dir, os.path.join(old, "out"))
  os.replace(new, out_dir)
  if old:
    shutil.rmtree(old, ignore_errors=True)


def local_copy(path, cache_dir) -> str:
  """`path` itself when it is local; else a copy of the remote directory under CACHE_DIR/<scheme>/<bucket
  path>, downloaded once (files of the right size are kept) under a lock, so processes of one host
  share it. For readers that need a local file (safetensors memory-maps its shards)."""
  if not is_remote(path):
    return path
  import filelock

  scheme, rest = str(path).split("://", 1)
  local = os.path.join(resolve(cache_dir), scheme, rest.rstrip("/"))
  os.makedirs(local, exist_ok=True)
  with filelock.FileLock(local + ".lock"):
    for name, length in file_sizes(path).items():
      target = os.path.join(local, name)
      if not (os.path.isfile(target) and os.path.getsize(target) == length):
        _download(join(path, name), target)
  return local


def _download(uri, target) -> None:
  """Streams an object to a local file (a 10 GB shard never sits in memory), renamed into place whole."""
  os.makedirs(os.path.dirname(target), exist_ok=True)

  def stream(out):
    with as_path(uri).open("rb") as source:
      shutil.copyfileobj(source, out, length=64 << 20)

  _replace_local(target, stream)
