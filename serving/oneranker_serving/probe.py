"""Inference liveness probe: is every instance of the served model still answering?

`/v2/health/ready` is not enough. A Python-backend instance whose stub process died (tritonserver
2.51 lets one malformed request do that, docs/bad_input.md) answers INTERNAL "Stub process ... is
not healthy" to every request routed to it, is never restarted, and the server and the model keep
reporting ready. This probe sends the served release's own example request (its config's
`example_request` parameter) over KServe v2 HTTP, `--requests` at once, and fails only on what
restarting the server would cure. Sent at once, the requests can reach each instance of a model whose
instances take batches in turn (preprocess, the one Python model of the TensorRT repository the
Kubernetes manifests serve); an engine model rendered with one preferred instance gives its
spill-over instances only what arrives while the preferred one is busy, so there the probe is
sure to reach only the preferred one (README "One preferred instance"):

    an answer that is an internal error (HTTP 500) or a refusal of the release's own example
    (HTTP 400), or no server at all (connection refused)  -> exit 1, the reasons on stderr;
    every answer 200, or only timeouts / 503 (overload)   -> exit 0: a busy server is not dead;
    a config without a usable example request            -> exit 0 and a warning: a restart
                                                             cannot fix a repository.

Standard library, numpy and the client package only (no tritonclient), so it runs in the Triton
image::

    python3 -m oneranker_serving.probe --http 127.0.0.1:8000 [--model oneranker] [--requests 4]

The model-config API is restricted (README "Serving"): the key is read from $ONERANKER_ADMIN_KEY
(`--admin-key-env`), which the Triton container already holds.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import os
import sys

from oneranker_client import contract, restricted_api
from oneranker_client.client import example_request_from_config
from oneranker_client.http_v2 import HttpV2Client, InferError
from oneranker_client.messages import request_arrays
from oneranker_client.retries import OneRankerError

# answers a restart cures: an internal error (a dead stub), or the release refusing its own example
FATAL_STATUSES = (400, 500)


def _attempt(call) -> str | None:
    """Runs `call()` -> None (answered, or busy: timeout / 503), or the reason the server needs a
    restart (a fatal status, or no server)."""
    try:
        call()
        return None
    except InferError as e:
        return f"HTTP {e.status}: {str(e)[:300]}" if e.status in FATAL_STATUSES else None
    except TimeoutError:
        return None
    except (ConnectionError, http.client.HTTPException, OSError) as e:
        return f"no server: {e}"


def probe(http_url: str, model: str, requests: int, admin_key: str | None, timeout: float) -> list[str]:
    """-> the reasons the server needs a restart ([] when it does not)."""
    admin = restricted_api.http_headers(admin_key) if admin_key else {}
    client = HttpV2Client(http_url, timeout=timeout)
    config: dict = {}
    try:
        failure = _attempt(lambda: config.update(client.model_config(model, admin)))
    finally:
        client.close()
    if failure is not None:
        return [f"GET config of {model}: {failure}"]
    if not config:  # busy: nothing to judge by
        return []
    try:
        arrays = request_arrays(example_request_from_config(config, model))
    except (OneRankerError, ValueError, TypeError) as e:
        print(f"probe: warning: no usable example request, inference not probed: {e}", file=sys.stderr)
        return []

    def one(_) -> str | None:
        c = HttpV2Client(http_url, timeout=timeout)
        try:
            return _attempt(lambda: c.infer(model, arrays))
        finally:
            c.close()

    with concurrent.futures.ThreadPoolExecutor(max_workers=requests) as pool:
        answers = list(pool.map(one, range(requests)))
    return [f"request {i}: {a}" for i, a in enumerate(answers) if a is not None]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m oneranker_serving.probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--http", default="127.0.0.1:8000", help="tritonserver HTTP address (host:port)")
    p.add_argument("--model", default=contract.PUBLIC_MODEL)
    p.add_argument("--requests", type=int, default=4, help="sent at once, to reach more than one instance")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP call")
    p.add_argument("--admin-key-env", default=restricted_api.ADMIN_KEY_ENV, help="environment variable with the key")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    key = os.environ.get(args.admin_key_env, "").strip() or None
    failures = probe(args.http, args.model, max(1, args.requests), key, args.timeout)
    for line in failures:
        print(f"probe: {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
