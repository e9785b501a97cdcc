#!/usr/bin/env bash
# Multi-node GPU runs on SLURM: writes an sbatch script (one fttpu process per node) and submits it.
# launch/slurm.sh --help for everything.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/slurm.sh [OPTIONS] -- CONFIG_ARG [--config.x.y=V ...]

Writes WORKDIR/sbatch-YYYYmmdd-HHMMSS.sh and submits it with sbatch. The job runs one task per node;
each runs python -m fttpu.main --config=configs/fewshot.py:CONFIG_ARG ... with
--coordinator_address=FIRST_NODE:PORT --num_processes=$SLURM_NTASKS --process_id=$SLURM_PROCID
(expanded in each task), and its output goes to WORKDIR/slurm-JOBID.out.
This repository (with its .venv: `make install`, then `.venv/bin/pip install 'jax[cuda12]'`), the
workdir and the data dir must be on a filesystem every node sees.

Options (--opt=V or --opt V; the environment variable in brackets is the default):
  --nodes=N              nodes, one process each (default 2)
  --gpus-per-node=N      GPUs per node (default 8); each process drives all GPUs of its node, and fttpu
                         stops if it sees another number (FTTPU_LOCAL_DEVICES)
  --gres                 ask for the GPUs as --gres=gpu:N (clusters without --gpus-per-node support)
  --signal-seconds=N     SIGTERM every task N seconds before the time limit (--signal=TERM@N, default 300):
                         fttpu checkpoints at the next step and exits 0, so save time must fit in N
  --no-requeue           do not requeue the job when it is preempted (default: --requeue; the requeued
                         job resumes from the workdir's newest checkpoint)
  --cpus-per-task=N      CPUs per process (default: the cluster's, often 1; tokenization and XLA
                         compilation want more, e.g. 16)
  --partition=P          SLURM partition (default: the cluster's)
  --time=HH:MM:SS        time limit (default: the partition's)
  --port=N               coordinator port (default 65535 - 4095 + SLURM_JOB_ID % 4096, as JAX picks)
  --workdir=DIR          [WORKDIR] default workdirs/slurm_CONFIG_ARG (relative paths: from here)
  --data-dir=DIR         --config.data.dir [DATA_DIR]; default: the config's
  --job-name=NAME        (default fttpu)
  --sbatch=OPTION        one more #SBATCH line, repeatable: --sbatch=--account=abc --sbatch=--qos=high
  --dry-run              print the sbatch script and the sbatch command; write and submit nothing
  -h, --help             this help
PYTHON (default .venv/bin/python, from the repository root) is the interpreter on the nodes.

Example:
  launch/slurm.sh --nodes=2 --gpus-per-node=8 --partition=gpu --time=02:00:00 \
    --workdir=/shared/runs/sst2_full -- task=sst2,method=full,k=16,seed=42 --config.train.steps=1000
EOF
}

# q (shell quoting) and die (usage errors)
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

nodes=2 gpus=8 cpus="" partition="" time_limit="" port="" job_name=fttpu gres=0 signal_seconds=300 requeue=1
workdir=${WORKDIR:-} data_dir=${DATA_DIR:-} dry_run=0 extra=() args=()
while (($#)); do
  case $1 in
    --nodes|--gpus-per-node|--cpus-per-task|--partition|--time|--port|--workdir|--data-dir|--job-name|--sbatch|--signal-seconds)
      (($# >= 2)) || die "$1 needs a value"
      set -- "$1=$2" "${@:3}"; continue ;;
    --nodes=*) nodes=${1#*=} ;;
    --gpus-per-node=*) gpus=${1#*=} ;;
    --cpus-per-task=*) cpus=${1#*=} ;;
    --partition=*) partition=${1#*=} ;;
    --time=*) time_limit=${1#*=} ;;
    --port=*) port=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --data-dir=*) data_dir=${1#*=} ;;
    --job-name=*) job_name=${1#*=} ;;
    --sbatch=*) extra+=("${1#*=}") ;;
    --signal-seconds=*) signal_seconds=${1#*=} ;;
    --gres) gres=1 ;;
    --no-requeue) requeue=0 ;;
    --dry-run) dry_run=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; args=("$@"); break ;;
    -*) die "unknown option $1" ;;
    *) die "unexpected argument $1: the config argument goes after --" ;;
  esac
  shift
done

((${#args[@]} >= 1)) || die "no config argument: launch/slurm.sh [OPTIONS] -- task=sst2,method=full [--config.x=V ...]"
[[ -n ${args[0]} && ${args[0]} != -* ]] || die "the first argument after -- is the config argument (task=...), not '${args[0]}'"
for n in "$nodes" "$gpus" "$signal_seconds" ${cpus:+"$cpus"} ${port:+"$port"}; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "expected a positive integer, got '$n'"
done

repo=$(cd "$(dirname "$0")/.." && pwd)
workdir=${workdir:-workdirs/slurm_${args[0]//[^A-Za-z0-9._=-]/_}}
[[ $workdir == /* || $workdir == *://* ]] || workdir=$PWD/$workdir  # the job starts in the repository root
if [[ -n $data_dir && $data_dir != /* && $data_dir != *://* ]]; then data_dir=$PWD/$data_dir; fi
# The batch script and SLURM's output file are local files: beside a bucket workdir they go to workdirs/slurm/.
jobdir=$workdir
if [[ $workdir == *://* ]]; then jobdir=$PWD/workdirs/slurm/${workdir#*://}; fi

main=("${PYTHON:-.venv/bin/python}" -m fttpu.main "--config=configs/fewshot.py:${args[0]}")
if [[ -n $data_dir ]]; then main+=("--config.data.dir=$data_dir"); fi
main+=("--workdir=$workdir" "${args[@]:1}")
srun=(srun --kill-on-bad-exit=1)
if [[ -n $cpus ]]; then srun+=("--cpus-per-task=$cpus"); fi  # srun does not inherit it from sbatch

# shellcheck disable=SC2016  # the $VARs below belong to the batch script
script=$(
  echo "#!/usr/bin/env bash"
  echo "#SBATCH --job-name=$(q "$job_name")"
  echo "#SBATCH --nodes=$nodes"
  echo "#SBATCH --ntasks-per-node=1"
  if ((gres)); then echo "#SBATCH --gres=gpu:$gpus"; else echo "#SBATCH --gpus-per-node=$gpus"; fi
  echo "#SBATCH --signal=TERM@$signal_seconds"  # to every task (no B:): fttpu's SIGTERM path checkpoints
  if ((requeue)); then echo "#SBATCH --requeue"; fi
  if [[ -n $cpus ]]; then echo "#SBATCH --cpus-per-task=$cpus"; fi
  if [[ -n $partition ]]; then echo "#SBATCH --partition=$(q "$partition")"; fi
  if [[ -n $time_limit ]]; then echo "#SBATCH --time=$(q "$time_limit")"; fi
  echo "#SBATCH --output=$(q "$jobdir/slurm-%j.out")"
  echo "#SBATCH --open-mode=append"  # a requeued job keeps its id: append, do not overwrite
  for opt in ${extra[@]+"${extra[@]}"}; do echo "#SBATCH $opt"; done
  echo "# Written by launch/slurm.sh. Task 0 runs on the first node, which hosts the jax.distributed coordinator."
  echo "set -euo pipefail"
  echo "cd $(q "$repo")"
  echo 'coordinator=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)'
  echo "port=${port:-\$((65535 - 4095 + SLURM_JOB_ID % 4096))}"
  echo "export FTTPU_LOCAL_DEVICES=$gpus  # each process drives every GPU of its node; fttpu checks it sees them"
  echo 'echo "job $SLURM_JOB_ID: $SLURM_JOB_NUM_NODES nodes, coordinator $coordinator:$port"'
  echo '# Single quotes: each task expands its own $SLURM_PROCID (and $SLURM_NTASKS).'
  echo "$(q "${srun[@]}") bash -c 'exec \"\$@\" --num_processes=\$SLURM_NTASKS --process_id=\$SLURM_PROCID' fttpu \\"
  echo "  $(q "${main[@]}") \\"
  echo '  --coordinator_address="$coordinator:$port"'
)

file=$jobdir/sbatch-$(date +%Y%m%d-%H%M%S).sh
if ((dry_run)); then
  printf "%s\n" "$script"
  echo "+ sbatch $(q "$file")"
  echo "(dry run: nothing written or submitted)"
  exit 0
fi
mkdir -p "$jobdir"  # sbatch does not create the --output folder
printf "%s\n" "$script" > "$file"
echo "+ sbatch $(q "$file")"
sbatch "$file"
echo "output: $jobdir/slurm-<job id>.out"
