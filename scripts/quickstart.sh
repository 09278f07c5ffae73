#!/usr/bin/env bash
# The main job on a fresh CPU machine: set up the venv, train the `small` model, evaluate it,
# export ONNX, render the Triton repository, start tritonserver, answer a query over gRPC and
# print it next to the in-process PyTorch reference. Extra arguments go to `oneranker quickstart`
# (e.g. --keep-serving, --retrain, --preset tiny).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-2}"
# In a terminal the job ends with the server up (Ctrl-C stops it); in scripts and CI it stops it.
KEEP=()
if [ -t 0 ] && [ -t 1 ]; then KEEP=(--keep-serving); fi
exec "${ONERANKER_VENV:-.venv}/bin/oneranker" quickstart "${KEEP[@]}" "$@"
