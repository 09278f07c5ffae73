"""The control plane closed by default: Triton's restricted APIs and the admin key that opens them.

tritonserver can require a request header on chosen API categories, separately for each
protocol (checked with 2.51, the nvidia-pytriton wheel's binary)::

    --http-restricted-api=<category>,<category>,...:<header>=<value>
    --grpc-restricted-protocol=<category>,<category>,...:<header>=<value>

(2.51's ``--help`` writes the separator before ``<header>`` as a comma; it is a colon, as in
Triton's protocol docs: tests/integration/test_restricted_api.py runs these flags.)

Over HTTP a client sends ``<header>: <value>``; over gRPC the metadata key is
``triton-grpc-protocol-<header>``. A request to a restricted category without it, or with another
value, is refused (HTTP 403; gRPC UNAVAILABLE, "This protocol is restricted, expecting header
..."); the other categories stay open. A category may belong to one group only.

``RESTRICTED_APIS`` is THE list of what this project closes: the model repository (load/unload,
which can also carry model files, i.e. code for the Python backend), model configuration,
shared-memory registration, trace and logging settings. Health, metadata, inference and
statistics stay open (probes, clients, perf_analyzer's server-side statistics). The same list is
used by the launcher (``TritonServer(admin_key=...)``, ``--admin-key-env`` of its CLI),
``docker-compose.yml`` and ``deploy/k8s/deployment.yaml``; ``tests/deployment/test_deployment.py``
checks that the files spell exactly the flags ``restricted_api_flags`` builds.

The key's value comes from the environment (``ONERANKER_ADMIN_KEY``: compose reads it from
``deploy/.env``, Kubernetes from a Secret); it is never written into a file of the repository.
Standard library only: imported by the launcher, the rollout tooling and the tests.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

__all__ = [
    "ADMIN_KEY_ENV",
    "ADMIN_KEY_HEADER",
    "GRPC_HEADER_PREFIX",
    "RESTRICTED_APIS",
    "TRITON_API_CATEGORIES",
    "admin_key_from_env",
    "grpc_headers",
    "http_headers",
    "parse_restricted_flag",
    "redact",
    "restricted_api_flags",
]

# Every category tritonserver 2.51 accepts (`tritonserver --help`, "Allowed APIs").
TRITON_API_CATEGORIES = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)
# What oneranker closes behind the admin key (see the module docstring).
RESTRICTED_APIS = ("model-repository", "model-config", "shared-memory", "trace", "logging")
ADMIN_KEY_HEADER = "oneranker-admin-key"  # HTTP header; gRPC: GRPC_HEADER_PREFIX + this
ADMIN_KEY_ENV = "ONERANKER_ADMIN_KEY"
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
HTTP_FLAG = "--http-restricted-api"
GRPC_FLAG = "--grpc-restricted-protocol"

# Header names: lower case (gRPC metadata keys must be). Key values: URL-safe characters only,
# so that neither Triton's `<categories>:<header>=<value>` parser nor a shell or YAML file
# needs quoting (`openssl rand -hex 32` gives one).
_HEADER_RE = re.compile(r"[a-z0-9][a-z0-9-]*")
_KEY_RE = re.compile(r"[A-Za-z0-9._~-]+")
MIN_KEY_LENGTH = 16


def _check(categories: Sequence[str], header: str, key: str) -> None:
    unknown = [c for c in categories if c not in TRITON_API_CATEGORIES]
    if not categories or unknown or len(set(categories)) != len(categories):
        raise ValueError(f"restricted categories must be distinct, from {TRITON_API_CATEGORIES}; got {categories}")
    if not _HEADER_RE.fullmatch(header):
        raise ValueError(f"header name {header!r}: lower-case letters, digits and '-' only")
    if not _KEY_RE.fullmatch(key or ""):
        raise ValueError("the admin key must be non-empty and use only A-Z a-z 0-9 . _ ~ - (e.g. openssl rand -hex 32)")
    if len(key) < MIN_KEY_LENGTH:
        raise ValueError(f"the admin key must have at least {MIN_KEY_LENGTH} characters (e.g. openssl rand -hex 32)")


def restricted_api_flags(
    key: str, categories: Sequence[str] = RESTRICTED_APIS, header: str = ADMIN_KEY_HEADER
) -> list[str]:
    """The two tritonserver flags closing `categories` over HTTP and gRPC behind `header: key`."""
    categories = tuple(categories)
    _check(categories, header, key)
    spec = f"{','.join(categories)}:{header}={key}"
    return [f"{HTTP_FLAG}={spec}", f"{GRPC_FLAG}={spec}"]


def parse_restricted_flag(value: str) -> tuple[tuple[str, ...], str, str]:
    """``"a,b:header=value"`` -> ``(("a", "b"), "header", "value")`` (the value of either flag)."""
    cats, sep, rest = value.partition(":")
    header, sep2, key = rest.partition("=")
    if not (sep and sep2 and cats and header and key):
        raise ValueError(f"not <categories>:<header>=<value>: {value!r}")
    return tuple(cats.split(",")), header, key


def http_headers(key: str, header: str = ADMIN_KEY_HEADER) -> dict[str, str]:
    """Headers an HTTP client sends to reach the restricted APIs."""
    return {header: key}


def grpc_headers(key: str, header: str = ADMIN_KEY_HEADER) -> dict[str, str]:
    """Metadata a gRPC client sends (tritonclient.grpc: ``headers=``) to reach the restricted APIs."""
    return {GRPC_HEADER_PREFIX + header: key}


def redact(text: str, key: str | None) -> str:
    """`text` with the key's value replaced by ``***`` (for logs and recorded commands)."""
    return text.replace(key, "***") if key else text


def admin_key_from_env(name: str = ADMIN_KEY_ENV, env: Mapping[str, str] | None = None) -> str | None:
    """The admin key held by environment variable `name` (None when unset or empty)."""
    value = (os.environ if env is None else env).get(name, "").strip()
    return value or None
