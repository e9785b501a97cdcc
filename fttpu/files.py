"""Files and directories that are either old or new: written beside the target, then renamed over it."""
import contextlib
import os
import shutil
import tempfile


def write_atomic(path: str, content: str | bytes) -> None:
  """`path` holds the old content or all of `content`, never a part of it (a crash or a full disk
  leaves the previous file); fails with an OSError naming `path`."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(content.encode() if isinstance(content, str) else content)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except BaseException as e:
    with contextlib.suppress(OSError):
      os.unlink(temporary)
    if isinstance(e, OSError) and e.filename is None:
      raise OSError(e.errno, e.strerror, path) from None  # name the file, not the temporary
    raise


def replace_directory(build, out_dir: str) -> None:
  """`build(tmp)` writes the new contents; they then take OUT's place whole (the old OUT, if any, is
  removed only once the new one is complete)."""
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
