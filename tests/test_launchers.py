"""The multi-host launchers: launch/tpu_pod.sh and launch/slurm.sh, run under bash with fake gcloud,
sbatch, srun, scontrol and python on PATH (no network, nothing real is started)."""

import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TPU = REPO / "launch" / "tpu_pod.sh"
SLURM = REPO / "launch" / "slurm.sh"
CONFIG = "task=sst2,method=full,k=16,seed=42"
TEMPLATE = "--config.data.template=it's {sentence}"  # a space and a quote: the quoting must survive

# Each fake appends its argv to $FAKE_DIR/NAME.calls: arguments NUL-terminated, calls \x1e-terminated.
RECORD = (
  'printf "%s\\0" "$@" >> "$FAKE_DIR/$(basename "$0").calls"; printf "\\036" >> "$FAKE_DIR/$(basename "$0").calls"\n'
)
FAKES = {
  # gcloud: scp keeps a copy of what it sends; ssh with FAKE_HOME set runs --command there like a worker.
  "gcloud": RECORD
  + """
if [ "$4" = scp ]; then cp "$5" "$FAKE_DIR/scp_src"; fi
if [ "$4" = ssh ] && [ -n "${FAKE_HOME:-}" ]; then
  for a in "$@"; do case $a in --command=*) cd "$FAKE_HOME" && exec bash -c "${a#--command=}";; esac; done
fi
echo "fake gcloud $4 done"
""",
  "sbatch": RECORD + 'cp "$1" "$FAKE_DIR/job.sh"; echo "Submitted batch job 4242"\n',
  "scontrol": RECORD + '[ "$1 $2" = "show hostnames" ] && printf "gpu07\\ngpu08\\n"\n',
  # srun: skip its options, then run the task once per process the way SLURM would (2 tasks).
  "srun": RECORD + 'while [ "${1#-}" != "$1" ]; do shift; done\n'
  'for i in 0 1; do SLURM_PROCID=$i SLURM_NTASKS=2 "$@" || exit; done\n',
  # python: what each task (or TPU worker) would run; one file per process id.
  # Written whole (temporary, then renamed): a test polls for the file while the detached run writes it.
  "python": 'out="$FAKE_DIR/python.${SLURM_PROCID:-worker}"; printf "%s\\n" "$@" > "$out.$$"; mv "$out.$$" "$out"\n',
}
LAUNCHER_ENV = (
  "TPU_NAME",
  "ZONE",
  "PROJECT",
  "ACCELERATOR_TYPE",
  "TPU_VERSION",
  "WORKDIR",
  "DATA_DIR",
  "LOG",
  "PYTHON",
  "FAKE_HOME",
)


@pytest.fixture
def fake(tmp_path):
  """(env, calls): env has the fakes first on PATH; calls(name) lists the argv of each call to a fake."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, body in FAKES.items():
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)
  env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV and not k.startswith("SLURM_")}
  env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_DIR=str(tmp_path), TMPDIR=str(tmp_path))

  def calls(name):
    path = tmp_path / f"{name}.calls"
    if not path.exists():
      return []
    return [record.split("\0")[:-1] for record in path.read_text().split("\x1e")[:-1]]

  return env, calls


def launch(script, *args, env, cwd=None, check=True):
  result = subprocess.run(["bash", str(script), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=30)
  if check:
    assert result.returncode == 0, result.stderr
  return result


def printed(result, command):
  """The `+ gcloud ...`-style lines of a launcher's output that start with `command`."""
  return [line for line in result.stdout.splitlines() if line.startswith(f"+ {command}")]


# ------------------------------------------------------------------ tpu_pod.sh

POD = ("--name=ft-pod", "--zone=us-central2-b")


def test_tpu_dry_run_prints_every_step_and_runs_nothing(fake, tmp_path):
  env, calls = fake
  create = launch(TPU, "create", *POD, "--project=my-proj", "--dry-run", env=env)
  assert printed(create, "gcloud") == [
    "+ gcloud compute tpus tpu-vm create ft-pod --zone=us-central2-b --project=my-proj "
    "--accelerator-type=v4-16 --version=tpu-ubuntu2204-base"
  ]
  delete = launch(TPU, "delete", *POD, "--dry-run", env=env)
  assert printed(delete, "gcloud") == ["+ gcloud compute tpus tpu-vm delete ft-pod --zone=us-central2-b --quiet"]

  setup = launch(TPU, "setup", *POD, "--dry-run", env=env)
  assert printed(setup, "git archive")
  scp, ssh = printed(setup, "gcloud")
  assert scp.startswith("+ gcloud compute tpus tpu-vm scp ") and scp.endswith(
    " ft-pod:fttpu.tar.gz --zone=us-central2-b --worker=all"
  )
  assert ssh.startswith("+ gcloud compute tpus tpu-vm ssh ft-pod --zone=us-central2-b --worker=all ")
  assert "tar -xzf" in setup.stdout and "-m venv .venv" in setup.stdout
  assert "pip install" in setup.stdout and "jax[tpu]" in setup.stdout

  run = launch(
    TPU, "run", *POD, "--workdir=/mnt/nfs/sst2", "--dry-run", "--", CONFIG, "--config.train.steps=7", env=env
  )
  (line,) = printed(run, "gcloud")
  assert line.startswith("+ gcloud compute tpus tpu-vm ssh ft-pod --zone=us-central2-b --worker=all ")
  assert (
    f"nohup bash logs/run.sh .venv/bin/python -m fttpu.main --config=configs/fewshot.py:{CONFIG} "
    "--workdir=/mnt/nfs/sst2 --config.train.steps=7 >> logs/run.log" in run.stdout
  )

  assert calls("gcloud") == []  # nothing ran
  assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]  # no tarball or log left behind


@pytest.mark.parametrize(
  "accelerator, version",
  [
    ("v4-16", "tpu-ubuntu2204-base"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-64", "v2-alpha-tpuv5"),
    ("v6e-16", "v2-alpha-tpuv6e"),
  ],
)
def test_tpu_runtime_version_follows_the_accelerator_generation(fake, accelerator, version):
  """tpu-ubuntu2204-base is v4's runtime only: a v5e or v5p pod created with it fails (Cloud TPU docs)."""
  env, _ = fake
  result = launch(TPU, "create", *POD, f"--accelerator-type={accelerator}", "--dry-run", env=env)
  assert printed(result, "gcloud") == [
    f"+ gcloud compute tpus tpu-vm create ft-pod --zone=us-central2-b "
    f"--accelerator-type={accelerator} --version={version}"
  ]


def worker_home(tmp_path, env):
  """A fake worker's home with ~/fttpu/.venv/bin/python (the recording fake); the fake gcloud runs there."""
  home = tmp_path / "worker_home"
  (home / "fttpu" / ".venv" / "bin").mkdir(parents=True)
  (home / "fttpu" / ".venv" / "bin" / "python").symlink_to(tmp_path / "bin" / "python")
  env["FAKE_HOME"] = str(home)
  return home / "fttpu"


def test_tpu_run_detaches_appends_the_workers_log_refuses_a_busy_worker_and_stop_sends_sigterm(fake, tmp_path):
  """The run outlives the launching shell (nohup, pid file), each run appends to the worker's log, a
  worker still running refuses a second run, and `stop` SIGTERMs the run (fttpu's checkpointing path)."""
  env, calls = fake
  remote = worker_home(tmp_path, env)
  for _ in range(2):
    (tmp_path / "python.worker").unlink(missing_ok=True)
    result = launch(TPU, "run", *POD, "--workdir=/mnt/nfs/run", "--", CONFIG, env=env)
    assert "started on " in result.stdout and "(pid " in result.stdout
    for _ in range(600):  # the detached fake python records its arguments (30 s at most)
      if (tmp_path / "python.worker").exists():
        break
      time.sleep(0.05)
    assert (tmp_path / "python.worker").read_text().splitlines()[:2] == ["-m", "fttpu.main"]
    pid = int((remote / "logs" / "run.pid").read_text())
    for _ in range(600):  # and ends (a zombie here: this container's init does not reap)
      if not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
        break
      time.sleep(0.05)
  assert (remote / "logs" / "run.log").read_text().count(": a new run") == 2  # appended, not overwritten
  sleeper = subprocess.Popen(["bash", "-c", "exec -a fttpu.main sleep 60"])  # what ps shows of a run
  (remote / "logs" / "run.pid").write_text(f"{sleeper.pid}\n")
  busy = launch(TPU, "run", *POD, "--workdir=/mnt/nfs/run", "--", CONFIG, env=env, check=False)
  assert busy.returncode != 0 and f"run {sleeper.pid} is still going: launch/tpu_pod.sh stop first" in busy.stderr
  stop = launch(TPU, "stop", *POD, env=env)
  assert f"stopping run {sleeper.pid}" in stop.stdout
  assert sleeper.wait(timeout=10) == -signal.SIGTERM


def wait_for_exit_code(remote) -> str:
  for _ in range(600):
    if (remote / "logs" / "run.exit").exists() and (remote / "logs" / "run.exit").read_text().strip():
      return (remote / "logs" / "run.exit").read_text().strip()
    time.sleep(0.05)
  pytest.fail("the detached run wrote no exit code")


def test_tpu_status_reports_a_failed_run_and_offers_delete_and_fetch_copies_every_workers_log(fake, tmp_path):
  env, calls = fake
  remote = worker_home(tmp_path, env)
  failing = tmp_path / "bin" / "failing-python"
  failing.write_text("#!/usr/bin/env bash\necho 'Traceback: out of memory' >&2\nexit 3\n")
  failing.chmod(0o755)
  (remote / ".venv" / "bin" / "python").unlink()
  (remote / ".venv" / "bin" / "python").symlink_to(failing)
  launch(TPU, "run", *POD, "--workdir=gs://bucket/run", "--", CONFIG, env=env)
  assert wait_for_exit_code(remote) == "3"
  status = launch(TPU, "status", *POD, env=env, check=False)
  assert status.returncode == 1 and ": failed (exit 3); tail of logs/run.log:" in status.stdout
  assert "Traceback: out of memory" in status.stdout and "the run failed (exit 3)" in status.stdout
  assert (
    "the pod bills until it is deleted: launch/tpu_pod.sh delete --name=ft-pod --zone=us-central2-b" in status.stderr
  )

  (remote / ".venv" / "bin" / "python").unlink()
  (remote / ".venv" / "bin" / "python").symlink_to(tmp_path / "bin" / "python")
  launch(TPU, "run", *POD, "--workdir=gs://bucket/run", "--", CONFIG, env=env)
  assert wait_for_exit_code(remote) == "0"
  assert ": finished (exit 0)" in launch(TPU, "status", *POD, env=env).stdout

  fetch = launch(TPU, "fetch", *POD, "--workers=2", f"--log-dir={tmp_path / 'fetched'}", "--dry-run", env=env)
  assert printed(fetch, "gcloud") == [
    f"+ gcloud compute tpus tpu-vm scp ft-pod:fttpu/logs/run.log {tmp_path}/fetched/worker-{w}.log "
    f"--zone=us-central2-b --worker={w}"
    for w in (0, 1)
  ]
  counted = launch(TPU, "fetch", *POD, "--dry-run", env=env)
  assert printed(counted, "gcloud")[0] == (
    "+ gcloud compute tpus tpu-vm describe ft-pod --zone=us-central2-b '--format=value(networkEndpoints.len())'"
  )


def test_tpu_stop_reaches_the_detached_run_through_its_wrapper(fake, tmp_path):
  """`stop` signals logs/run.pid, the wrapper that keeps the exit code: it passes SIGTERM on to the run."""
  env, _ = fake
  remote = worker_home(tmp_path, env)
  trapping = tmp_path / "bin" / "trapping-python"
  trapping.write_text(
    "#!/usr/bin/env bash\ntrap 'echo checkpointed on SIGTERM; exit 0' TERM\n"
    "echo started > \"$FAKE_DIR/trapping.started\"\nsleep 60 & wait\n"
  )
  trapping.chmod(0o755)
  (remote / ".venv" / "bin" / "python").unlink()
  (remote / ".venv" / "bin" / "python").symlink_to(trapping)
  launch(TPU, "run", *POD, "--workdir=gs://bucket/run", "--", CONFIG, env=env)
  for _ in range(600):
    if (tmp_path / "trapping.started").exists():
      break
    time.sleep(0.05)
  assert "running (pid" in launch(TPU, "status", *POD, env=env).stdout
  assert "stopping run" in launch(TPU, "stop", *POD, env=env).stdout
  assert wait_for_exit_code(remote) == "0"
  assert "checkpointed on SIGTERM" in (remote / "logs" / "run.log").read_text()


def test_tpu_queued_resources_for_spot_capacity(fake):
  env, _ = fake
  create = launch(TPU, "create", *POD, "--accelerator-type=v5p-64", "--queued", "--dry-run", "--", "--spot", env=env)
  assert printed(create, "gcloud") == [
    "+ gcloud compute tpus queued-resources create ft-pod --node-id=ft-pod --zone=us-central2-b "
    "--accelerator-type=v5p-64 --runtime-version=v2-alpha-tpuv5 --spot"
  ]
  delete = launch(TPU, "delete", *POD, "--queued", "--dry-run", env=env)
  assert printed(delete, "gcloud") == [
    "+ gcloud compute tpus queued-resources delete ft-pod --zone=us-central2-b --force --quiet"
  ]


def test_tpu_options_from_environment(fake):
  env, _ = fake
  env.update(TPU_NAME="pod2", ZONE="europe-west4-a", ACCELERATOR_TYPE="v5litepod-16", TPU_VERSION="v2-alpha-tpuv5-lite")
  result = launch(TPU, "create", "--dry-run", "--", "--spot", env=env)
  assert printed(result, "gcloud") == [
    "+ gcloud compute tpus tpu-vm create pod2 --zone=europe-west4-a --accelerator-type=v5litepod-16 "
    "--version=v2-alpha-tpuv5-lite --spot"
  ]


def test_tpu_create_setup_delete_call_gcloud(fake):
  env, calls = fake
  launch(TPU, "create", "--name", "ft-pod", "--zone", "us-central2-b", "--accelerator-type=v4-64", env=env)
  launch(TPU, "setup", *POD, env=env)
  launch(TPU, "delete", *POD, env=env)
  create, scp, ssh, delete = calls("gcloud")
  assert create == [
    "compute",
    "tpus",
    "tpu-vm",
    "create",
    "ft-pod",
    "--zone=us-central2-b",
    "--accelerator-type=v4-64",
    "--version=tpu-ubuntu2204-base",
  ]
  assert scp[:4] == ["compute", "tpus", "tpu-vm", "scp"]
  assert scp[5:] == ["ft-pod:fttpu.tar.gz", "--zone=us-central2-b", "--worker=all"]
  assert not Path(scp[4]).exists()  # the temporary tarball is removed afterwards
  with tarfile.open(Path(env["FAKE_DIR"]) / "scp_src") as tar:  # what was sent: the repository's HEAD
    assert {"setup.py", "fttpu/main.py", "configs/fewshot.py"} <= set(tar.getnames())
  assert ssh[:7] == ["compute", "tpus", "tpu-vm", "ssh", "ft-pod", "--zone=us-central2-b", "--worker=all"]
  assert ssh[7].startswith("--command=") and "'jax[tpu]'" in ssh[7] and "tar -xzf ~/fttpu.tar.gz" in ssh[7]
  assert delete == ["compute", "tpus", "tpu-vm", "delete", "ft-pod", "--zone=us-central2-b", "--quiet"]


def test_tpu_run_streams_to_a_log_and_each_worker_gets_the_exact_arguments(fake, tmp_path):
  env, calls = fake
  home = tmp_path / "worker_home"  # the fake gcloud runs the --command here, as a worker's shell would
  (home / "fttpu" / ".venv" / "bin").mkdir(parents=True)
  (home / "fttpu" / ".venv" / "bin" / "python").symlink_to(tmp_path / "bin" / "python")
  env["FAKE_HOME"] = str(home)
  log = tmp_path / "logs" / "run.log"
  result = launch(
    TPU,
    "run",
    *POD,
    "--project=p",
    "--workdir=/mnt/nfs/run 1",
    "--data-dir=/mnt/data",
    f"--log={log}",
    "--attach",
    "--",
    CONFIG,
    TEMPLATE,
    env=env,
  )
  ((*gcloud, command),) = calls("gcloud")
  assert gcloud == ["compute", "tpus", "tpu-vm", "ssh", "ft-pod", "--zone=us-central2-b", "--project=p", "--worker=all"]
  assert "fttpu.main" in command
  expected = [
    "-m",
    "fttpu.main",
    f"--config=configs/fewshot.py:{CONFIG}",
    "--config.data.dir=/mnt/data",
    "--workdir=/mnt/nfs/run 1",
    TEMPLATE,
  ]
  assert (tmp_path / "python.worker").read_text().splitlines() == expected
  assert (home / "fttpu" / "logs" / "run.log").exists()  # the worker's own log
  assert "+ gcloud compute tpus tpu-vm ssh ft-pod" in log.read_text()  # the local log: command and output
  assert result.stdout.splitlines()[0] == f"log: {log}"


@pytest.mark.parametrize(
  "args, message",
  [
    (("run", *POD, "--", CONFIG), "--workdir"),
    (("run", *POD, "--workdir=/w"), "config argument"),
    (("create", "--zone=z"), "TPU name"),
    (("create", "--name=n"), "zone"),
    (("launch", *POD), "unknown command"),
    (("create", *POD, "--bogus"), "unknown option --bogus"),
    (("delete", *POD, "--", "x"), "no arguments"),
    (("create", "--name"), "needs a value"),
    (("create", *POD, "--accelerator-type=v3-8"), "no default --version for --accelerator-type=v3-8"),
  ],
)
def test_tpu_bad_usage(fake, args, message):
  env, calls = fake
  result = launch(TPU, *args, env=env, check=False)
  assert result.returncode != 0 and message in result.stderr
  assert calls("gcloud") == []


def test_tpu_help(fake):
  result = launch(TPU, "--help", env=fake[0])
  for word in ("create", "setup", "run", "logs", "delete", "--dry-run", "shared mount", "TPU_NAME"):
    assert word in result.stdout


# ------------------------------------------------------------------ slurm.sh


def test_slurm_dry_run_prints_the_batch_script(fake, tmp_path):
  env, calls = fake
  workdir = tmp_path / "runs" / "sst2"
  result = launch(
    SLURM,
    "--nodes=3",
    "--gpus-per-node",
    "4",
    "--partition=gpu",
    "--time=01:00:00",
    f"--workdir={workdir}",
    "--sbatch=--account=abc",
    "--dry-run",
    "--",
    CONFIG,
    "--config.train.steps=7",
    env=env,
  )
  out = result.stdout
  for line in (
    "#SBATCH --nodes=3",
    "#SBATCH --ntasks-per-node=1",
    "#SBATCH --gpus-per-node=4",
    "#SBATCH --partition=gpu",
    "#SBATCH --time=01:00:00",
    f"#SBATCH --output={workdir}/slurm-%j.out",
    "#SBATCH --account=abc",
  ):
    assert line in out.splitlines()
  (srun,) = [line for line in out.splitlines() if line.startswith("srun ")]
  assert "'exec \"$@\" --num_processes=$SLURM_NTASKS --process_id=$SLURM_PROCID'" in srun  # single-quoted
  assert f"-m fttpu.main --config=configs/fewshot.py:{CONFIG} --workdir={workdir} --config.train.steps=7" in out
  assert "scontrol show hostnames" in out and "SLURM_JOB_ID % 4096" in out
  assert any(l.startswith("export FTTPU_LOCAL_DEVICES=4 ") for l in out.splitlines())  # fttpu checks it sees 4
  assert "#SBATCH --signal=TERM@300" in out.splitlines() and "#SBATCH --requeue" in out.splitlines()
  other = launch(
    SLURM, "--gpus-per-node=8", "--gres", "--signal-seconds=900", "--no-requeue", "--dry-run", "--", CONFIG, env=env
  ).stdout.splitlines()
  assert "#SBATCH --gres=gpu:8" in other and not any("--gpus-per-node" in l or "--requeue" in l for l in other)
  assert "#SBATCH --signal=TERM@900" in other
  assert printed(result, "sbatch")[0].startswith(f"+ sbatch {workdir}/sbatch-")
  assert calls("sbatch") == [] and not workdir.exists()  # nothing written or submitted


def test_slurm_keeps_a_bucket_workdir_a_uri_and_its_job_files_local(fake, tmp_path):
  env, _ = fake
  result = launch(
    SLURM, "--workdir=gs://b/runs/x", "--data-dir=gs://b/data", "--dry-run", "--", CONFIG, env=env, cwd=tmp_path
  )
  out = result.stdout.splitlines()
  assert any("--workdir=gs://b/runs/x" in l and "--config.data.dir=gs://b/data" in l for l in out)
  assert f"#SBATCH --output={tmp_path}/workdirs/slurm/b/runs/x/slurm-%j.out" in out
  assert "#SBATCH --open-mode=append" in out  # a requeued job (same id) appends to its output
  assert not any("/gs:" in l for l in out)


def test_a_2_x_8_gpu_slurm_job_asks_for_every_gpu_and_checks_each_process_sees_8(fake, tmp_path):
  """The issue's 2 x 8 job: 2 nodes, 1 task each driving 8 GPUs (FTTPU_LOCAL_DEVICES=8), explicit
  coordinates, SIGTERM 300 s before the limit, requeued when preempted."""
  env, _ = fake
  out = launch(
    SLURM, "--nodes=2", "--gpus-per-node=8", f"--workdir={tmp_path}/w", "--dry-run", "--", CONFIG, env=env
  ).stdout.splitlines()
  for line in (
    "#SBATCH --nodes=2",
    "#SBATCH --ntasks-per-node=1",
    "#SBATCH --gpus-per-node=8",
    "#SBATCH --signal=TERM@300",
    "#SBATCH --requeue",
  ):
    assert line in out
  assert any(l.startswith("export FTTPU_LOCAL_DEVICES=8 ") for l in out)
  assert any(l.startswith("  --coordinator_address=") for l in out)


def test_slurm_job_runs_one_process_per_node_with_its_own_id(fake, tmp_path):
  env, calls = fake
  env["PYTHON"] = "python"  # the fake on PATH
  result = launch(
    SLURM, "--workdir=runs/a", "--data-dir=/data", "--cpus-per-task=16", "--", CONFIG, TEMPLATE, env=env, cwd=tmp_path
  )
  assert "Submitted batch job 4242" in result.stdout
  workdir = tmp_path / "runs" / "a"  # relative to where slurm.sh ran, made absolute for the job
  ((submitted,),) = calls("sbatch")
  assert Path(submitted).parent == workdir and Path(submitted).read_text() == (tmp_path / "job.sh").read_text()

  # Run the batch script as SLURM would on the first node; the fake srun starts tasks 0 and 1.
  job_env = dict(
    env,
    SLURM_JOB_NODELIST="gpu[07-08]",
    SLURM_JOB_ID="4242",
    SLURM_JOB_NUM_NODES="2",
    SLURM_NTASKS="2",
    SLURM_PROCID="0",
  )
  job = subprocess.run(["bash", submitted], env=job_env, capture_output=True, text=True, timeout=30)
  assert job.returncode == 0, job.stderr
  assert calls("scontrol") == [["show", "hostnames", "gpu[07-08]"]]
  assert calls("srun")[0][:2] == ["--kill-on-bad-exit=1", "--cpus-per-task=16"]
  port = 65535 - 4095 + 4242 % 4096
  for process in (0, 1):
    assert (tmp_path / f"python.{process}").read_text().splitlines() == [
      "-m",
      "fttpu.main",
      f"--config=configs/fewshot.py:{CONFIG}",
      "--config.data.dir=/data",
      f"--workdir={workdir}",
      TEMPLATE,
      f"--coordinator_address=gpu07:{port}",
      "--num_processes=2",
      f"--process_id={process}",
    ]


def test_slurm_port_flag(fake):
  result = launch(SLURM, "--port=23456", "--dry-run", "--", CONFIG, env=fake[0])
  assert "port=23456" in result.stdout.splitlines()


@pytest.mark.parametrize(
  "args, message",
  [
    (("--bogus", "--", CONFIG), "unknown option --bogus"),
    (("--nodes=2",), "no config argument"),
    (("--", "--config.train.steps=7"), "config argument"),
    ((CONFIG,), "after --"),
    (("--nodes=0", "--", CONFIG), "positive integer"),
    (("--gpus-per-node=x", "--", CONFIG), "positive integer"),
  ],
)
def test_slurm_bad_usage(fake, args, message):
  env, calls = fake
  result = launch(SLURM, *args, env=env, check=False)
  assert result.returncode != 0 and message in result.stderr
  assert calls("sbatch") == []


def test_slurm_help(fake):
  result = launch(SLURM, "--help", env=fake[0])
  for word in ("--nodes", "--gpus-per-node", "--partition", "--time", "--workdir", "--dry-run", "SLURM_PROCID"):
    assert word in result.stdout
