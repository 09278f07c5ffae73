"""The tritonserver launcher's readiness wait, against stand-in HTTP endpoints (no tritonserver):
tritonserver reports ready on its HTTP port tens of milliseconds before its metrics port listens,
so `wait_ready` must wait for both."""

from __future__ import annotations

import http.server
import threading
import time

from oneranker_serving.local_server import TritonServer, find_free_port


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the http.server hook name)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


class _Running:
    """A process that never exits (poll() is None)."""

    pid = 0

    def poll(self):
        return None


def _serve(port: int) -> http.server.HTTPServer:
    server = http.server.HTTPServer(("127.0.0.1", port), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_wait_ready_returns_only_once_the_metrics_endpoint_answers(tmp_path):
    http_port = find_free_port()
    metrics_port = find_free_port(exclude=[http_port])
    server = TritonServer(tmp_path, http_port=http_port, metrics_port=metrics_port, log_file=tmp_path / "log")
    server.process = _Running()
    health = _serve(http_port)  # ready at once
    opened = {}

    def open_metrics():
        opened["at"] = time.monotonic()
        opened["server"] = _serve(metrics_port)

    timer = threading.Timer(0.5, open_metrics)
    timer.start()
    try:
        server.wait_ready(timeout=10)
        returned = time.monotonic()
    finally:
        timer.cancel()
        health.shutdown()
        if "server" in opened:
            opened["server"].shutdown()
    assert "at" in opened and returned >= opened["at"], "ready was reported before the metrics endpoint listened"


def test_the_stubs_get_one_openmp_and_blas_thread_whatever_the_caller_exports(monkeypatch):
    """The benchmarks export OMP_NUM_THREADS=2 for their own process; the server's stubs must
    still run one OpenMP / BLAS thread each (their engine threads come from the model config),
    and an explicit `env=` override still wins."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    env = TritonServer("/nonexistent").build_env()
    assert {k: env[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")} == {
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    assert TritonServer("/nonexistent", env={"OMP_NUM_THREADS": "3"}).build_env()["OMP_NUM_THREADS"] == "3"
