"""Inference liveness probe: is every instance of the served model still answering?

`/v2/health/ready` is not enough. A Python-backend instance whose stub process died (tritonserver
2.51 lets one malformed request do that, docs/bad_input.md) answers INTERNAL "Stub process ... is
not healthy" to every request routed to it, is never restarted, and the server and the model keep
reporting ready. This probe sends the served release's own example request (its config's
`example_request` parameter) over KServe v2 HTTP/JSON, `--requests` at once so that every
instance gets one, and fails only on what restarting the server would cure:

    an answer that is an internal error (HTTP 500) or a refusal of the release's own example
    (HTTP 400), or no server at all (connection refused)  -> exit 1, the reasons on stderr;
    every answer 200, or only timeouts / 503 (overload)   -> exit 0: a busy server is not dead.

Standard library, numpy and the client's contract only, so it runs in the Triton image::

    python3 -m oneranker_serving.probe --http 127.0.0.1:8000 [--model oneranker] [--requests 4]

The model-config API is restricted (README "Serving"): the key is read from $ONERANKER_ADMIN_KEY
(`--admin-key-env`), which the Triton container already holds.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import urllib.error
import urllib.request

from oneranker_client import contract, restricted_api
from oneranker_client.client import example_request_from_config
from oneranker_client.messages import request_arrays

# answers a restart cures: an internal error (a dead stub), or the release refusing its own example
FATAL_STATUSES = (400, 500)
# HTTP status for "no answer at all": connection refused or reset
NO_SERVER = -1
TIMEOUT = -2

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _call(url: str, body: bytes | None, headers: dict, timeout: float) -> tuple[int, str]:
    """-> (HTTP status, NO_SERVER or TIMEOUT; the body or the reason)."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body else "GET")
    try:
        with _OPENER.open(request, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except TimeoutError as e:
        return TIMEOUT, str(e)
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            return TIMEOUT, str(e.reason)
        return NO_SERVER, str(e.reason)
    except (ConnectionError, OSError) as e:
        return NO_SERVER, str(e)


def infer_body(config: dict, model: str) -> bytes:
    """The model config (JSON of `GET /v2/models/<m>/config`) -> the KServe v2 JSON body of its
    example request: every input the example sets, [1, n] with the contract's wire dtype."""
    arrays = request_arrays(example_request_from_config(config, model))
    specs = {s.name: s for s in contract.PUBLIC.inputs}
    inputs = [
        {"name": k, "shape": list(a.shape), "datatype": specs[k].wire_dtype, "data": a.ravel().tolist()}
        for k, a in arrays.items()
    ]
    return json.dumps({"inputs": inputs}).encode()


def probe(http_url: str, model: str, requests: int, admin_key: str | None, timeout: float) -> list[str]:
    """-> the reasons the server needs a restart ([] when it does not)."""
    base = f"http://{http_url}/v2/models/{model}"
    admin = restricted_api.http_headers(admin_key) if admin_key else {}
    status, text = _call(f"{base}/config", None, admin, timeout)
    if status == NO_SERVER:
        return [f"no server at {http_url}: {text}"]
    if status != 200:  # a busy server still answers its config; a refused key is a setup error
        return [] if status in (TIMEOUT, 503) else [f"GET {base}/config: HTTP {status}: {text[:300]}"]
    body = infer_body(json.loads(text), model)
    headers = {"Content-Type": "application/json"}
    with concurrent.futures.ThreadPoolExecutor(max_workers=requests) as pool:
        answers = list(pool.map(lambda _: _call(f"{base}/infer", body, headers, timeout), range(requests)))
    return [
        f"request {i}: " + ("no server" if s == NO_SERVER else f"HTTP {s}") + f": {t[:300]}"
        for i, (s, t) in enumerate(answers)
        if s in FATAL_STATUSES or s == NO_SERVER
    ]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m oneranker_serving.probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--http", default="127.0.0.1:8000", help="tritonserver HTTP address (host:port)")
    p.add_argument("--model", default=contract.PUBLIC_MODEL)
    p.add_argument("--requests", type=int, default=4, help="sent at once, so that every instance gets one")
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
