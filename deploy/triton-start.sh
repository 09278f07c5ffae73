#!/usr/bin/env bash
# Entrypoint of the oneranker Triton image: refuse a repository whose TensorRT plans were built
# by another TensorRT / NGC release (they would fail to load with a serialization-version
# error, model by model), then exec tritonserver with the given arguments, plus the rate limiter
# flag when a model config sets instance priorities (the onnxruntime / torch repositories: one
# preferred instance per engine model; the rule of oneranker_serving.local_server.scheduling_flags).
#
#   triton-start.sh --model-repository=/models [tritonserver flags...]
#
# deploy/builder.sh writes <repository>/.ngc_tag and .tensorrt_version next to the plans.
set -euo pipefail

repo=/models
for arg in "$@"; do
  case "$arg" in --model-repository=*) repo="${arg#--model-repository=}" ;; esac
done

fail() {
  echo "error: $repo holds TensorRT plans built by $1, this server has $2: TensorRT plans only" \
    "load in the release that built them. Rebuild them with the same NGC_TAG" \
    "(docs/deployment.md, 'Changing NGC_TAG')." >&2
  exit 1
}

if [ -f "$repo/.ngc_tag" ]; then
  built="$(cat "$repo/.ngc_tag")"
  [ "$built" = "${ONERANKER_NGC_TAG:-}" ] || fail "NGC release $built" "NGC release ${ONERANKER_NGC_TAG:-unknown}"
fi
if [ -f "$repo/.tensorrt_version" ]; then
  built="$(cat "$repo/.tensorrt_version")"
  # this image's TensorRT (libnvinfer), recorded by deploy/triton.Dockerfile
  here="$(cat "${ONERANKER_TRT_VERSION_FILE:-/opt/oneranker/tensorrt_version}" 2>/dev/null || echo none)"
  # same major.minor.patch: the plan serialization version
  [ "$(echo "$built" | cut -d. -f1-3)" = "$(echo "$here" | cut -d. -f1-3)" ] \
    || fail "TensorRT $built" "TensorRT $here"
fi

scheduling=()
if grep -qs rate_limiter "$repo"/*/config.pbtxt && [[ " $* " != *" --rate-limit="* ]]; then
  scheduling=(--rate-limit=execution_count)
fi

exec tritonserver "$@" ${scheduling[@]+"${scheduling[@]}"}
