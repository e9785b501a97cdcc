#!/usr/bin/env bash
# One local run. Usage: launch/local.sh WORKDIR CONFIG_ARG [--config.x.y=... ...]
#   launch/local.sh workdirs/trec_full task=trec,method=full,k=16,seed=13 --config.train.steps=300
set -euo pipefail
workdir=$1; arg=$2; shift 2
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m fttpu.main --config="configs/fewshot.py:${arg}" \
  --config.data.dir="${DATA_DIR:-../shared/data}" --workdir="$workdir" "$@"
