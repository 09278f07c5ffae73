"""Deployment helpers: shared-memory sizing, model version rollout (promote, retire, load).

python -m oneranker_deploy shm | promote | retire | latest | load   (--help on each)
"""

# The oldest NGC release (YY.MM) the repository is written for: NGC 24.06 (Triton 2.47). The
# Python backend features the models use are older (custom metrics; request cancellation, in the
# 23.10 branch; model threads, which the counter sender is), but nothing before 24.06 is claimed.
OLDEST_NGC_RELEASE = "24.06"
# The oldest NGC release the deployment ships on (deploy/.env.example's NGC_TAG is at least this),
# for two upstream fixes to what tritonserver 2.51 gets wrong here (docs/bad_input.md):
# - from NGC 26.03 (Triton 2.67) Triton answers both malformed shapes that crash 2.51 with
#   INVALID_ARG: triton-inference-server/core #475 (release branch r26.03) checks an input's byte
#   count for overflow before any backend sees the request (an INT64 shape [1, 2**61] no longer
#   wraps to 0 bytes); the HTTP frontend checks a JSON input's element count for overflow (server
#   #8182, 2.58) and its byte size against --http-max-input-size, 64 MiB by default, before
#   allocating it (#8174, 2.59);
# - from NGC 26.04 (Triton 2.68), with --strict-readiness (compose and k8s set it),
#   /v2/health/ready turns false once a Python stub process has exited (core #473, r26.04), so
#   Kubernetes takes such a pod out of its Service.
# Read in those projects' sources and release branches, not run here: the only tritonserver these
# machines have is 2.51.
OLDEST_HARDENED_NGC_RELEASE = "26.04"
