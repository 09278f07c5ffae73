"""Default network endpoints of a oneranker Triton server: one source of truth.

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

__all__ = [
    "DEFAULT_HTTP_PORT",
    "DEFAULT_GRPC_PORT",
    "DEFAULT_METRICS_PORT",
    "DEFAULT_HOST",
    "DEFAULT_GRPC_URL",
    "DEFAULT_HTTP_URL",
    "HEALTH_READY_PATH",
    "HEALTH_LIVE_PATH",
]
