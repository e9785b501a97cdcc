"""The host allocator under XLA's CPU runtime: huge pages for the block each step allocates, and the
memory compiling freed handed back before the steps run.

XLA's CPU client allocates each execution's temporaries as one block (posix_memalign) and frees it at
the end. glibc maps a block that large afresh (mmap) and unmaps it on free, so every training step
faults its whole temporary block in again, 4 KiB at a time: 138,000 minor faults and 0.35 s of system
time per MiniLM full step (539 MiB of temporaries), a fifth of the step. glibc's tunable
`glibc.malloc.hugetlb=1` advises the kernel to back such blocks with 2 MiB pages (where transparent huge
pages are enabled, as `madvise` or `always`): 634 faults a step, 0.08 s of system time. (Keeping the
block instead, mallopt with no mmap and no trimming, also ends the faults, but the heap fragments: the
full step then peaked at 2.4 GiB of RSS instead of 1.65.)

A tunable is read when a process starts, so the command lines restart themselves with it once
(`restart_with_huge_pages`: the same process id and arguments); the processes they start inherit it.
A GLIBC_TUNABLES that already sets glibc.malloc.hugetlb (0 turns it off) is left as it is.

Compiling a step allocates and frees hundreds of MiB in the compiler's threads; glibc keeps that
memory resident in their arenas, under the step's blocks, which come on top. `release_free_memory`
(malloc_trim) after compiling hands it back: MiniLM's full step peaked at 1.31 GiB of RSS instead of 1.66.
"""

import ctypes
import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
SETTING = f"{TUNABLE}=1"


def is_glibc() -> bool:
  return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def tunables_with_huge_pages(tunables: str) -> str | None:
  """GLIBC_TUNABLES with hugetlb=1 added, or None when it already says something about hugetlb."""
  settings = [s for s in tunables.split(":") if s]
  if any(s.split("=")[0] == TUNABLE for s in settings):
    return None
  return ":".join(settings + [SETTING])


def restart_with_huge_pages() -> None:
  """Replaces this process by itself with glibc's huge-page tunable set, unless it is set or this is not
  glibc on Linux. Call it first thing in a command line's main, before anything slow has run."""
  if not is_glibc():
    return
  tunables = tunables_with_huge_pages(os.environ.get("GLIBC_TUNABLES", ""))
  if tunables is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, {**os.environ, "GLIBC_TUNABLES": tunables})


def release_free_memory() -> bool:
  """Hands the free pages of every malloc arena back to the system (glibc's malloc_trim(0)); False
  without glibc."""
  if not is_glibc():
    return False
  ctypes.CDLL("libc.so.6").malloc_trim(0)
  return True
