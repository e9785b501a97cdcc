"""Files that are either old or new: write to a temporary beside the target, fsync, rename."""
import contextlib
import os
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
