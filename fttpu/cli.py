"""What every command line does with a user's mistake: one line naming it and the way out, no
traceback. `cli.run(main)` in place of absl's `app.run(main)`; it first restarts the process with huge
pages for XLA's per-step blocks (fttpu.host_memory)."""

import errno
import sys

from absl import app

from fttpu import host_memory
from fttpu.errors import USER_ERRORS

OS_HINTS = {
  errno.ENOSPC: "free space there and run again (a run resumes from its last checkpoint)",
  errno.EACCES: "check its permissions",
  errno.EPERM: "check its permissions",
  errno.EROFS: "it is on a read-only file system; choose another path",
  errno.EEXIST: "a file is in the way; remove it or choose another path",
  errno.ENOTDIR: "a file is in the way where a directory is expected; choose another path",
  errno.EISDIR: "a directory is where a file is expected; choose another path",
  errno.ENOENT: "it does not exist; check the path",
}


def describe(error: BaseException) -> str:
  """The one line a user sees for one of USER_ERRORS."""
  if isinstance(error, OSError):
    where = f"{error.filename}: " if error.filename else ""
    hint = OS_HINTS.get(error.errno, "")
    return f"{where}{error.strerror or error}" + (f"; {hint}" if hint else "")
  return str(error)


def guarded(main):
  """main(argv), with USER_ERRORS exiting with status 1 and `error: <what and the way out>`."""

  def wrapped(argv):
    try:
      return main(argv)
    except USER_ERRORS as e:
      sys.exit(f"error: {describe(e)}")

  return wrapped


def run(main) -> None:
  host_memory.restart_with_huge_pages()
  app.run(guarded(main))
