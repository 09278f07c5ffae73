"""Default network endpoints of a oneranker Triton server and the client's request lifecycle
defaults (deadline, retries, retry budget, admin-key header): one source of truth.

The client CLI, the perf suites (perf_analyzer, locust), `oneranker serve`, the
`python -m oneranker_serving.local_server` launcher, `docker-compose.yml` and the Kubernetes
manifests in `deploy/k8s/` all use these ports; `tests/deployment/test_deployment.py` checks that they
agree. They are Triton's own defaults (KServe v2 HTTP/REST, gRPC, Prometheus metrics).
"""

from __future__ import annotations

DEFAULT_HTTP_PORT = 8000  # HTTP/REST: /v2/health/ready, /v2/health/live, repository API
DEFAULT_GRPC_PORT = 8001  # gRPC inference (what the client and the perf suites use)
DEFAULT_METRICS_PORT = 8002  # Prometheus /metrics

DEFAULT_HOST = "localhost"
DEFAULT_GRPC_URL = f"{DEFAULT_HOST}:{DEFAULT_GRPC_PORT}"  # "localhost:8001"
DEFAULT_HTTP_URL = f"{DEFAULT_HOST}:{DEFAULT_HTTP_PORT}"  # "localhost:8000"

# Triton's health endpoints (HTTP port): liveness = the process answers, readiness = every
# model loaded and ready (with --strict-readiness=true, Triton's default).
HEALTH_READY_PATH = "/v2/health/ready"
HEALTH_LIVE_PATH = "/v2/health/live"

# ---------------------------------------------------------------------------------------------
# Request lifecycle of the client (oneranker_client.retries: "Deadline, retries, retry budget")
# ---------------------------------------------------------------------------------------------
# Deadline of one call, retries and backoff included: 1.0 s. Each attempt is sent with the time
# left as its gRPC deadline (tritonclient's client_timeout); the server cancels a request whose
# deadline passed. Why 1 s: the served latency is queue wait + model time, and on the 2-core
# reference host the model answers in 2.5 ms at concurrency 1 (p50) and in 10 ms at saturation
# (p99, 810 req/s; README "Serving"). A recommendation that has waited 100x that is stuck behind a
# queue that is not draining, and the page it was for has moved on: cancelling it frees the
# server. 1 s still covers the worst stall measured (Triton's batcher holding a batch for its
# 500 ms re-check, 0.50-0.53 s, README "No queue policy by default") and the retries below
# (ceilings 50 + 100 + 200 ms). It is shorter than the server's own queue timeout (2 s when
# `oneranker build --queue-policy` renders one), so the caller's deadline fires first.
DEFAULT_DEADLINE_S = 1.0
# Retries (UNAVAILABLE only, see retries.RETRYABLE_STATUSES) after the first attempt.
DEFAULT_RETRIES = 3
# Full-jitter backoff: the sleep before retry n (0-based) is uniform(0, min(cap, base * 2**n)).
DEFAULT_BACKOFF_S = 0.05
MAX_BACKOFF_S = 1.0
# Retry budget, one per client instance (token bucket, gRPC retry throttling style): starts with
# RETRY_BUDGET_TOKENS tokens, a retry spends one, a successful call deposits RETRY_BUDGET_RATIO
# (so sustained retries add at most 10% to the successful request rate), and RETRY_BUDGET_MIN_PER_S
# tokens trickle back per second (the floor: a quiet client can still retry a blip). Under
# overload the tokens run out and the client stops amplifying the load with retries.
RETRY_BUDGET_TOKENS = 10.0
RETRY_BUDGET_RATIO = 0.1
RETRY_BUDGET_MIN_PER_S = 1.0

__all__ = [
    "DEFAULT_HTTP_PORT",
    "DEFAULT_GRPC_PORT",
    "DEFAULT_METRICS_PORT",
    "DEFAULT_HOST",
    "DEFAULT_GRPC_URL",
    "DEFAULT_HTTP_URL",
    "HEALTH_READY_PATH",
    "HEALTH_LIVE_PATH",
    "DEFAULT_DEADLINE_S",
    "DEFAULT_RETRIES",
    "DEFAULT_BACKOFF_S",
    "MAX_BACKOFF_S",
    "RETRY_BUDGET_TOKENS",
    "RETRY_BUDGET_RATIO",
    "RETRY_BUDGET_MIN_PER_S",
]
