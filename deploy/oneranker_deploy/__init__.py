"""Deployment helpers: shared-memory sizing, model version rollout (promote, retire, load).

python -m oneranker_deploy shm | promote | retire | latest | load   (--help on each)
"""

# The oldest NGC release (YY.MM) the repository runs on. NGC 24.06 (Triton 2.47) is the first
# whose Python backend takes an answer sent through a request's response sender in its default
# (non-decoupled) mode: the fused model answers a lone request that way, before its counters' IPC.
OLDEST_NGC_RELEASE = "24.06"
# The oldest NGC release the deployment ships on (deploy/.env.example's NGC_TAG is at least this).
# NGC 26.04 (Triton 2.68) is the first whose Triton answers, with INVALID_ARG, both malformed
# shapes that crash tritonserver 2.51 (docs/bad_input.md): triton-inference-server/core's safe
# byte-size check (#475, release branches r26.03 on) refuses an INT64 shape whose byte count
# wraps to 0, before any backend sees it; the HTTP frontend refuses a JSON input whose shape
# exceeds --http-max-input-size (default 64 MiB) before allocating it (server #8174, 2.59 on) and
# checks JSON sizes for overflow (#8676, 2.68 on). Read in those projects' sources, not run here:
# the only tritonserver these machines have is 2.51.
OLDEST_HARDENED_NGC_RELEASE = "26.04"
