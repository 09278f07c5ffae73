"""Soak traffic for ``python -m oneranker_perf.soak``: good and malformed requests over gRPC and
KServe v2 HTTP/JSON, mixed, from every locust user.

Each call picks a protocol (half gRPC, half HTTP) and, with probability ``ONERANKER_SOAK_BAD_SHARE``,
sends the next case of the bad-request catalogue (``oneranker_perf.bad_requests``: raw protobuf
or raw HTTP body, as written) instead of the next good request. Reported to locust as request
type ``grpc`` / ``http``, name ``good`` / ``bad``:

* good: a failure unless the answer is the expected one (``ONERANKER_SOAK_EXPECTED``, written by
  the soak before the load: item ids equal, scores within 1e-5);
* bad: a failure unless the answer is the case's recorded one (status, words, layer).

At quit the statistics go to ``ONERANKER_SOAK_STATS`` (JSON: per row requests, failures,
latency percentiles; the failure messages with their counts).

Environment: ``ONERANKER_REQUESTS`` (request JSONL), ``ONERANKER_SOAK_EXPECTED``,
``ONERANKER_SOAK_STATS``, ``ONERANKER_SOAK_HTTP`` (HTTP host:port; ``--host`` is the gRPC one),
``ONERANKER_SOAK_LIMITS`` (JSON of ``bad_requests.Limits``), ``ONERANKER_SOAK_BAD_SHARE`` (default
0.3), ``ONERANKER_SOAK_SABOTAGE`` (comma list, to prove the harness counts failures:
``expected`` corrupts the expected answer of the first request, ``bad-as-good`` sends a bad
request as if it were the last good one, ``good-as-bad`` sends the first good request as if it
were the first bad case), ``ONERANKER_TIMEOUT_S`` (default 30).

gevent: gRPC is made gevent-aware before the first channel, and an ``events.quit`` listener
ends the process with ``os._exit`` (locust may hang after "Shutting down"; as perf/locustfile.py).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import sys
import time
from pathlib import Path

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # before any channel exists

from locust import User, constant, events, task  # noqa: E402

_HERE = Path(__file__).resolve().parent
for _dir in (_HERE, _HERE.parent / "client"):  # run from a checkout without installing
    if str(_dir) not in sys.path:
        sys.path.append(str(_dir))

import numpy as np  # noqa: E402

from oneranker_client import contract  # noqa: E402
from oneranker_perf import bad_requests as br  # noqa: E402

HTTP_URL = os.environ.get("ONERANKER_SOAK_HTTP", "127.0.0.1:8000")
BAD_SHARE = float(os.environ.get("ONERANKER_SOAK_BAD_SHARE", "0.3"))
SABOTAGE = {s for s in os.environ.get("ONERANKER_SOAK_SABOTAGE", "").split(",") if s}
TIMEOUT_S = float(os.environ.get("ONERANKER_TIMEOUT_S", "30"))
MODEL = contract.PUBLIC_MODEL


class Failure(Exception):
    def __repr__(self) -> str:
        return str(self)


class Traffic:
    """Everything prebuilt once per process (read-only, shared by the users)."""

    def __init__(self):
        lines = Path(os.environ["ONERANKER_REQUESTS"]).read_text().splitlines()
        requests = [{k: v for k, v in json.loads(line).items() if k != "id"} for line in lines if line.strip()]
        expected = json.loads(Path(os.environ["ONERANKER_SOAK_EXPECTED"]).read_text())
        self.expected = [(np.asarray(e["rec_item_ids"]), np.asarray(e["rec_scores"])) for e in expected]
        if "expected" in SABOTAGE:
            self.expected[0] = (self.expected[0][0][::-1].copy() + 1, self.expected[0][1])
        tensors = [br.good_tensors(r) for r in requests]
        self.good_grpc = [br.grpc_request(MODEL, t) for t in tensors]
        self.good_http = [br.http_request(t) for t in tensors]
        limits = br.Limits(**json.loads(os.environ.get("ONERANKER_SOAK_LIMITS", "{}")))
        cases = br.bad_cases(requests[0], limits)
        self.bad = {
            p: [(c, c.grpc_request() if p == "grpc" else c.http_request()) for c in cases if c.expect(p) is not None]
            for p in ("grpc", "http")
        }
        if "bad-as-good" in SABOTAGE:  # a refused request sent as the last good one: must fail
            wrong = next(c for c in cases if c.name == "negative top_k")
            self.good_grpc[-1], self.good_http[-1] = wrong.grpc_request(), wrong.http_request()
        if "good-as-bad" in SABOTAGE:  # a good request sent as the first bad case: must fail
            for protocol, good in (("grpc", self.good_grpc[0]), ("http", self.good_http[0])):
                self.bad[protocol][0] = (self.bad[protocol][0][0], good)


_TRAFFIC: Traffic | None = None
_ENV = None


def traffic() -> Traffic:
    global _TRAFFIC
    if _TRAFFIC is None:
        _TRAFFIC = Traffic()
    return _TRAFFIC


@events.init.add_listener
def _on_init(environment, **_kw):
    global _ENV
    _ENV = environment
    traffic()  # fail at start-up when a file is missing or bad


def stats_json(environment) -> dict:
    rows = []
    for (name, method), entry in sorted(environment.stats.entries.items()):
        rows.append(
            {
                "protocol": method,
                "traffic": name,
                "requests": entry.num_requests,
                "failures": entry.num_failures,
                "avg_ms": entry.avg_response_time,
                **{f"p{int(q * 100)}_ms": entry.get_response_time_percentile(q) for q in (0.5, 0.9, 0.99)},
                "max_ms": entry.max_response_time,
            }
        )
    errors = [
        {"protocol": e.method, "traffic": e.name, "error": str(e.error), "occurrences": e.occurrences}
        for e in environment.stats.errors.values()
    ]
    total = environment.stats.total
    return {
        "rows": rows,
        "errors": sorted(errors, key=lambda e: -e["occurrences"]),
        "start_time": total.start_time,
        "last_request_time": total.last_request_timestamp,
    }


@events.quit.add_listener
def _on_quit(exit_code, **_kw):
    try:
        path = os.environ.get("ONERANKER_SOAK_STATS")
        if path and _ENV is not None and _ENV.stats is not None:
            Path(path).write_text(json.dumps(stats_json(_ENV), indent=1) + "\n")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)


class SoakUser(User):
    wait_time = constant(0)

    def on_start(self) -> None:
        host = (self.host or "").replace("grpc://", "").replace("http://", "").rstrip("/")
        self.channel, self.stub = br.grpc_stub(host)
        self.conn = None
        t = traffic()
        self.next_good = random.randrange(len(t.good_grpc))
        self.next_bad = {p: random.randrange(len(cases)) for p, cases in t.bad.items()}

    def on_stop(self) -> None:
        self.channel.close()
        if self.conn is not None:
            self.conn.close()

    def http(self, model: str, body: bytes, headers: dict):
        if self.conn is None:
            host, _, port = HTTP_URL.partition(":")
            self.conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
        try:
            return br.send_http(HTTP_URL, model, body, headers, conn=self.conn)
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise

    def good(self, protocol: str) -> str | None:
        t = traffic()
        i = self.next_good
        self.next_good = (i + 1) % len(t.good_grpc)
        if protocol == "grpc":
            status, out = br.send_grpc(self.channel, self.stub, t.good_grpc[i], TIMEOUT_S)
            ok = status == br.GRPC_OK
        else:
            status, out = self.http(MODEL, *t.good_http[i])
            ok = status == 200
        if not ok:
            return f"request {i}: {status} {str(out)[:300]}"
        ids, scores = out["rec_item_ids"][0], out["rec_scores"][0]
        want_ids, want_scores = t.expected[i]
        if ids.tolist() != want_ids.tolist() or not np.allclose(scores, want_scores, atol=1e-5):
            return f"request {i}: answer changed: {ids.tolist()} (expected {want_ids.tolist()})"
        return None

    def bad(self, protocol: str) -> str | None:
        cases = traffic().bad[protocol]
        k = self.next_bad[protocol]
        self.next_bad[protocol] = (k + 1) % len(cases)
        case, request = cases[k]
        if protocol == "grpc":
            status, message = br.send_grpc(self.channel, self.stub, request, TIMEOUT_S)
        else:
            status, message = self.http(case.model, *request)
        return br.check_answer(case, protocol, status, message if isinstance(message, str) else "(outputs)")

    @task
    def step(self) -> None:
        protocol = random.choice(("grpc", "http"))
        kind = "bad" if random.random() < BAD_SHARE else "good"
        t0 = time.perf_counter()
        try:
            problem = self.good(protocol) if kind == "good" else self.bad(protocol)
        except Exception as err:  # noqa: BLE001 -- a broken connection is a failure of this call
            problem = f"{type(err).__name__}: {err}"
        self.environment.events.request.fire(
            request_type=protocol,
            name=kind,
            response_time=(time.perf_counter() - t0) * 1e3,
            response_length=0,
            exception=None if problem is None else Failure(problem),
            context={},
        )
