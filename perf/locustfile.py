"""Locust load test of the public OneRanker model over gRPC.

    ONERANKER_REQUESTS=artifacts/perf/requests.jsonl \\
        locust -f perf/locustfile.py --headless --host 127.0.0.1:8001 -u 4 -r 4 --run-time 30s

(or ``python -m oneranker_perf.locust_run``, which adds CSV/HTML reports, a hard timeout and a
failure summary). ``--host`` is the gRPC ``host:port`` (no scheme). Each user has its own gRPC
channel and cycles through the requests of ``ONERANKER_REQUESTS`` (one RecommendRequest JSON a
line, see ``oneranker_perf.make_inputs``), starting at a random offset; every call is reported
as request type ``grpc``, name ``oneranker.recommend``.

Environment: ``ONERANKER_REQUESTS`` (default artifacts/perf/requests.jsonl), ``ONERANKER_MODEL``
(default the contract's public model), ``ONERANKER_TIMEOUT_S`` (default 30), ``ONERANKER_RETRIES``
(default 0: an overload shows up as a failure instead of being retried away),
``ONERANKER_WAIT_S`` (think time between requests of a user, default 0).

gevent traps (shared/docs/platform.md): gRPC must be made gevent-aware before the first channel
(``init_gevent``) or users block each other; and with it locust may hang after "Shutting down",
so an ``events.quit`` listener ends the process with ``os._exit``.
"""

from __future__ import annotations

import csv
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
_CLIENT_DIR = _HERE.parent / "client"  # run from a checkout without installing the client
if (_CLIENT_DIR / "oneranker_client").is_dir() and str(_CLIENT_DIR) not in sys.path:
    sys.path.append(str(_CLIENT_DIR))

from oneranker_client import contract  # noqa: E402
from oneranker_client.client import OneRankerClient, OneRankerError, RecommendRequest, build_inputs  # noqa: E402
from oneranker_client.defaults import DEFAULT_GRPC_URL  # noqa: E402

REQUEST_NAME = "oneranker.recommend"
REQUESTS_PATH = Path(os.environ.get("ONERANKER_REQUESTS", _HERE.parent / "artifacts" / "perf" / "requests.jsonl"))
MODEL = os.environ.get("ONERANKER_MODEL", contract.PUBLIC_MODEL)
TIMEOUT_S = float(os.environ.get("ONERANKER_TIMEOUT_S", "30"))
RETRIES = int(os.environ.get("ONERANKER_RETRIES", "0"))
WAIT_S = float(os.environ.get("ONERANKER_WAIT_S", "0"))

_INPUTS: list | None = None  # built once per process, shared (read-only) by all users
_ENV = None  # the locust Environment (set at init), for the final CSV at quit


class RecommendFailure(Exception):
    """A failed call as locust reports it: "[STATUS] server message"."""

    def __repr__(self) -> str:
        return str(self)


def load_inputs(path: Path = REQUESTS_PATH) -> list:
    """The requests of the JSONL file as ready gRPC inputs (built once)."""
    global _INPUTS
    if _INPUTS is None:
        if not path.is_file():
            raise FileNotFoundError(
                f"ONERANKER_REQUESTS={path} does not exist (make it with python -m oneranker_perf.make_inputs)"
            )
        reqs = []
        for line in path.read_text().splitlines():
            if line.strip():
                obj = json.loads(line)
                obj.pop("id", None)
                reqs.append(RecommendRequest.from_json(obj))
        if not reqs:
            raise ValueError(f"{path} holds no requests")
        _INPUTS = [build_inputs(r) for r in reqs]
    return _INPUTS


@events.init.add_listener
def _on_init(environment, **_kw):
    global _ENV
    _ENV = environment
    load_inputs()  # fail at start-up, not in every user, when the file is missing or bad


def write_final_csv(environment) -> None:
    """Rewrite ``<csv prefix>_{stats,failures,exceptions}.csv`` from the final statistics.

    locust's CSV writer refreshes these files once a second and flushes them every 5 s; its final
    flush runs only after the quit event, which ``os._exit`` below skips."""
    prefix = getattr(getattr(environment, "parsed_options", None), "csv_prefix", None)
    if not prefix or environment.stats is None:
        return
    from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    for suffix, write in (
        ("stats", writer.requests_csv),
        ("failures", writer.failures_csv),
        ("exceptions", writer.exceptions_csv),
    ):
        with open(f"{prefix}_{suffix}.csv", "w", newline="") as f:
            write(csv.writer(f))


@events.quit.add_listener
def _on_quit(exit_code, **_kw):
    # locust + init_gevent may hang after "Shutting down" (shared/docs/platform.md): the runner
    # has stopped and the stats are final here; write the CSVs and leave.
    try:
        if _ENV is not None:
            write_final_csv(_ENV)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)


class OneRankerUser(User):
    host = DEFAULT_GRPC_URL  # --host overrides
    wait_time = constant(WAIT_S)

    def on_start(self) -> None:
        host = (self.host or "").replace("grpc://", "").replace("http://", "").rstrip("/")
        self.client = OneRankerClient(host, model=MODEL, timeout_s=TIMEOUT_S, retries=RETRIES)
        self.inputs = load_inputs()
        self.next = random.randrange(len(self.inputs))

    def on_stop(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass

    @task
    def recommend(self) -> None:
        inputs = self.inputs[self.next]
        self.next = (self.next + 1) % len(self.inputs)
        t0 = time.perf_counter()
        exc, length = None, 0
        try:
            rec = self.client.recommend_inputs(inputs)
            length = len(rec)
            if length == 0:
                exc = RecommendFailure("empty recommendation")
        except OneRankerError as err:
            exc = RecommendFailure(f"[{err.status}] {err.message}")
        self.environment.events.request.fire(
            request_type="grpc",
            name=REQUEST_NAME,
            response_time=(time.perf_counter() - t0) * 1e3,
            response_length=length,
            exception=exc,
            context={},
        )
