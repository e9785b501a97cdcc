#!/usr/bin/env python3
"""Runs N processes of one command on this machine as one multi-host JAX job (what a pod does per host).

  python launch/multiprocess.py --processes=2 --devices_per_process=2 -- \\
      .venv/bin/python -m fttpu.main --config=configs/fewshot.py:method=lora --workdir=workdirs/mp

Each process gets JAX_COORDINATOR_ADDRESS (127.0.0.1 and a free port), JAX_NUM_PROCESSES and
JAX_PROCESS_ID, which fttpu.main passes to jax.distributed.initialize, and its own fake CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count). Output lines are prefixed with the process
index. The launcher waits for every process and exits with the first failure's code: it never
kills the others, so a process whose peer died must stop on its own (the runtime's heartbeat).
"""

import argparse
import os
import shlex
import socket
import subprocess
import sys
import threading


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(index: int, processes: int, port: int, devices: int) -> dict:
  """The environment of process `index`: the coordinator, its index, its fake CPU devices."""
  flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f)
  return {
    "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
    "JAX_NUM_PROCESSES": str(processes),
    "JAX_PROCESS_ID": str(index),
    "JAX_PLATFORMS": "cpu",
    "FTTPU_LOCAL_DEVICES": str(devices),
    "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}".strip(),
  }


def stream(index: int, pipe) -> None:
  for line in pipe:
    sys.stdout.write(f"[{index}] {line}")
    sys.stdout.flush()


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=1, help="fake CPU devices per process")
  parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
  parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
  parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command or args.processes < 1 or args.devices_per_process < 1:
    parser.error("give --processes >= 1, --devices_per_process >= 1 and a command after --")
  port = args.port or free_port()
  envs = [process_env(i, args.processes, port, args.devices_per_process) for i in range(args.processes)]
  for env in envs:
    print("+ " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(command), flush=True)
  if args.dry_run:
    return 0
  children = [
    subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for env in envs
  ]
  for index, child in enumerate(children):
    print(f"[launch] process {index}: pid {child.pid}", flush=True)
  threads = [threading.Thread(target=stream, args=(i, c.stdout), daemon=True) for i, c in enumerate(children)]
  for thread in threads:
    thread.start()
  try:
    codes = [child.wait() for child in children]
  except KeyboardInterrupt:
    for child in children:
      child.terminate()
    raise
  for thread in threads:
    thread.join()
  for index, code in enumerate(codes):
    print(f"[launch] process {index} exited with {code}", flush=True)
  return next((code for code in codes if code), 0)


if __name__ == "__main__":
  sys.exit(main())
