"""fttpu.host_memory: the command lines restart with glibc's huge-page tunable, and it ends the page
faults of XLA's per-step temporary block."""

import os
import subprocess
import sys
from pathlib import Path


from fttpu import host_memory

REPO = Path(__file__).resolve().parents[1]

# A program with a 256 MiB temporary (a loop carrying a 64M-entry array), run three times: the minor page
# faults of each run after the first, printed.
FAULTS = """
import resource, jax, jax.numpy as jnp
loop = lambda x: jax.lax.fori_loop(0, 2, lambda i, y: y * 1.0001 + 1.0, x * 3.0).sum()
f = jax.jit(loop).lower(jnp.zeros(1 << 26)).compile()
assert f.memory_analysis().temp_size_in_bytes >= 256 << 20
x = jnp.ones(1 << 26)
f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
  f(x).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 3)
"""


def run_python(code: str, tunables: str | None, *args: str) -> str:
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  if tunables is not None:
    env["GLIBC_TUNABLES"] = tunables
  out = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=REPO, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout


def test_the_setting_is_added_to_the_users_tunables_unless_they_chose_one():
  assert host_memory.tunables_with_huge_pages("") == "glibc.malloc.hugetlb=1"
  assert host_memory.tunables_with_huge_pages("glibc.malloc.arena_max=2") == (
    "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  )
  assert host_memory.tunables_with_huge_pages("glibc.malloc.hugetlb=0") is None


def test_a_command_line_restarts_itself_once_with_the_setting_same_process_and_arguments():
  code = (
    "import os, sys; print('pid', os.getpid(), flush=True)\n"
    "from fttpu import cli\n"
    "cli.run(lambda argv: print('main', os.getpid(), os.environ['GLIBC_TUNABLES'], argv[1:]))"
  )
  lines = run_python(code, "glibc.malloc.arena_max=4", "--", "a", "b c").splitlines()
  assert len(lines) == 3, lines  # printed before the restart, after it, then main once
  pid = lines[0].split()[1]
  assert lines[1] == f"pid {pid}"
  assert lines[2] == f"main {pid} glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1 ['a', 'b c']"


def transparent_huge_pages() -> str:
  """The kernel's mode, the bracketed word of its setting: always, madvise or never."""
  text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
  return text[text.index("[") + 1 : text.index("]")]


def test_huge_pages_end_the_page_faults_of_each_runs_temporary_block():
  """Without the tunable every run faults its 256 MiB temporary block in again (65,536 pages of 4 KiB);
  with it, where the kernel gives huge pages on request, the block takes a few hundred faults."""
  without = int(run_python(FAULTS, "glibc.malloc.hugetlb=0"))
  with_huge_pages = int(run_python(FAULTS, "glibc.malloc.hugetlb=1"))
  assert without > 60_000, without
  if transparent_huge_pages() in ("always", "madvise"):
    assert with_huge_pages < without / 20, (with_huge_pages, without)
  else:  # huge pages off in this kernel: the tunable can change nothing
    assert with_huge_pages > 60_000


def resident_mib() -> float:
  """This process's resident set now (not its peak), from /proc."""
  pages = int(Path("/proc/self/statm").read_text().split()[1])
  return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_released_memory_leaves_the_resident_set():
  """200 MiB freed below a live block (so glibc's own trimming of the heap's top cannot return it) stays
  resident until release_free_memory hands it back."""
  blocks = [bytearray(1000) for _ in range(200_000)]
  live = [bytearray(1000) for _ in range(100)]  # allocated after the blocks: above them in the heap
  del blocks
  before = resident_mib()
  assert host_memory.release_free_memory()
  assert before - resident_mib() > 100, (before, resident_mib())
  assert len(live) == 100
