#!/usr/bin/env bash
# Builder entrypoint (docker-compose services `builder` / `builder-cpu`): train or take a given
# run, export ONNX, compile TensorRT plans, render the Triton repository, and put it in the live
# repository as a new version; then write the perf inputs (artifacts/deploy/perf-inputs:
# requests.jsonl for locust, perf_data.json for perf_analyzer). Runs in the builder image
# (deploy/builder.Dockerfile).
#
#   deploy/builder.sh ensure      # `docker compose up`: build only if the live repository is empty
#   deploy/builder.sh release     # rollout: always build and promote the next version
#   deploy/builder.sh render DIR  # Kubernetes: render an immutable release into DIR/<engine>
#                                 # (deploy/k8s/build-job.yaml); no live repository involved
#
# Environment (docker-compose.yml passes them from deploy/.env):
#   ONERANKER_ENGINE      tensorrt | onnxruntime            (required)
#   ONERANKER_PRESET      config preset to train            (default paper)
#   ONERANKER_RUN_DIR     run to serve; trained there when it holds no manifest.json
#                         (default $ONERANKER_DEPLOY_DIR/runs/$ONERANKER_PRESET)
#   ONERANKER_TRAIN_ARGS  extra `oneranker train` arguments, e.g. "--steps 20000"
#   ONERANKER_DEPLOY_DIR  the mounted artifacts folder      (default /artifacts)
#   ONERANKER_NGC_TAG     NGC release of this image (set by the Dockerfile). With the TensorRT
#                         version it is recorded as <repository>/.ngc_tag and .tensorrt_version:
#                         deploy/triton-start.sh refuses plans of another release
set -euo pipefail

mode="${1:-ensure}"
case "$mode" in
  ensure|release) ;;
  render) out="${2:?usage: $0 render DIR}" ;;
  *) echo "usage: $0 [ensure|release|render DIR]" >&2; exit 2 ;;
esac

engine="${ONERANKER_ENGINE:?set ONERANKER_ENGINE (tensorrt or onnxruntime)}"
preset="${ONERANKER_PRESET:-paper}"
deploy_dir="${ONERANKER_DEPLOY_DIR:-/artifacts}"
run_dir="${ONERANKER_RUN_DIR:-$deploy_dir/runs/$preset}"
live="$deploy_dir/repository/$engine"

latest="$(python -m oneranker_deploy latest --repository "$live")"
if [ "$mode" = render ] && [ -e "$out/$engine" ]; then
  echo "[builder] $out/$engine exists: releases are immutable, pick a new release name" >&2
  exit 1
fi
if [ "$mode" = ensure ] && [ "$latest" != 0 ]; then
  echo "[builder] $live already serves version $latest; nothing to build (rollout: deploy/builder.sh release)"
  exit 0
fi

if [ -f "$run_dir/manifest.json" ]; then
  echo "[builder] using the trained run $run_dir"
else
  echo "[builder] no checkpoint in $run_dir: training preset $preset"
  # shellcheck disable=SC2086  # ONERANKER_TRAIN_ARGS is a list of arguments
  oneranker train --preset "$preset" --run-dir "$run_dir" ${ONERANKER_TRAIN_ARGS:-}
fi

# TensorRT timing caches, one per TensorRT version and GPU: kept outside the build folders (a new
# one each build) so the next build reads them; it prints whether it did
cache_dir="$deploy_dir/cache/tensorrt-timing-cache"

ngc_tag="${ONERANKER_NGC_TAG:?the builder image sets ONERANKER_NGC_TAG}"
stamp() {  # what built the plans of repository $1 (read by deploy/triton-start.sh)
  [ "$engine" = tensorrt ] || return 0
  printf '%s\n' "$ngc_tag" >"$1/.ngc_tag"
  python -c "import tensorrt; print(tensorrt.__version__)" >"$1/.tensorrt_version"
}

if [ "$mode" = render ]; then
  echo "[builder] oneranker build --engine $engine -> $out"
  oneranker build --run-dir "$run_dir" --engine "$engine" --out "$out" --timing-cache-dir "$cache_dir"
  stamp "$out/$engine"
  echo "[builder] release ready: $out/$engine"
  exit 0
fi

stage="$deploy_dir/staging/$(date -u +%Y%m%dT%H%M%SZ)"
echo "[builder] oneranker build --engine $engine -> $stage"
oneranker build --run-dir "$run_dir" --engine "$engine" --out "$stage" --timing-cache-dir "$cache_dir"

python -m oneranker_deploy promote --staging "$stage/$engine" --repository "$live"
stamp "$live"
echo "[builder] $live now holds version $(python -m oneranker_deploy latest --repository "$live")"

# Load for the perf and locust services, from the served run's own dataset (needs torch: here).
python -m oneranker_perf.make_inputs --run-dir "$run_dir" --n 256 --out-dir "$deploy_dir/perf-inputs"
