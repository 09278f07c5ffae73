"""The inference liveness probe against a stand-in HTTP server (no tritonserver): what it sends
and which answers make it fail. The real failure it exists for (a dead Python stub behind a
server that still reports ready) is shown on a real server in
tests/integration/test_bad_input.py::test_tritonserver_2_51_does_not_survive_two_malformed_shapes."""

from __future__ import annotations

import http.server
import json
import threading
import time

import numpy as np
import pytest

from oneranker_client import contract, http_v2
from oneranker_serving import probe
from oneranker_serving.local_server import find_free_port

EXAMPLE = {
    "user_features": [1, 2],
    "item_ids": [100, 103],
    "actions": [3, 2],
    "timestamps": [0, 1],
    "request_time": 7,
}
CONFIG = {"name": "oneranker", "parameters": {"example_request": {"string_value": json.dumps(EXAMPLE)}}}


def _server(infer_status: int, config=CONFIG, delay_s: float = 0.0):
    """HTTP on a free port: GET .../config -> `config`; POST .../infer -> `infer_status` after
    `delay_s` (records each request's inputs: name -> (datatype, shape, values))."""
    sent = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, status, payload):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 (the http.server hook name)
            self._send(200, config)

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            end = int(self.headers[http_v2.HEADER_LENGTH])
            inputs, offset = {}, end
            for entry in json.loads(body[:end])["inputs"]:
                size = entry["parameters"]["binary_data_size"]
                values = np.frombuffer(body[offset : offset + size], http_v2.WIRE_TO_NUMPY[entry["datatype"]])
                inputs[entry["name"]] = (entry["datatype"], entry["shape"], values.tolist())
                offset += size
            sent.append(inputs)
            time.sleep(delay_s)
            if infer_status == 200:
                self._send(200, {"outputs": []})
            else:
                self._send(infer_status, {"error": "Stub process 'recommender_0_0' is not healthy."})

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", find_free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, sent


@pytest.mark.parametrize("status, fails", [(200, False), (503, False), (500, True), (400, True)])
def test_probe_fails_only_on_answers_a_restart_cures(status, fails):
    server, sent = _server(status)
    try:
        url = f"127.0.0.1:{server.server_address[1]}"
        failures = probe.probe(url, "oneranker", 3, None, 5.0)
        assert bool(failures) == fails and len(sent) == 3
        if fails:
            assert len(failures) == 3 and f"HTTP {status}" in failures[0] and "not healthy" in failures[0]
        assert probe.main(["--http", url, "--requests", "2"]) == int(fails)
    finally:
        server.shutdown()
    specs = {s.name: s for s in contract.PUBLIC.inputs}
    assert set(sent[0]) == set(EXAMPLE)
    for name, value in EXAMPLE.items():
        datatype, shape, values = sent[0][name]
        assert datatype == specs[name].wire_dtype
        assert values == (value if isinstance(value, list) else [value]) and shape == [1, len(values)]


def test_a_slow_server_is_busy_not_dead():
    server, sent = _server(200, delay_s=1.5)
    try:
        assert probe.probe(f"127.0.0.1:{server.server_address[1]}", "oneranker", 2, None, 0.5) == []
        assert len(sent) == 2
    finally:
        server.shutdown()


def test_a_config_without_an_example_is_a_warning_not_a_restart(capsys):
    server, sent = _server(500, config={"name": "oneranker", "parameters": {}})
    try:
        assert probe.probe(f"127.0.0.1:{server.server_address[1]}", "oneranker", 2, None, 5.0) == []
    finally:
        server.shutdown()
    assert sent == [] and "no usable example request" in capsys.readouterr().err


def test_probe_fails_when_no_server_answers():
    failures = probe.probe(f"127.0.0.1:{find_free_port()}", "oneranker", 2, None, 2.0)
    assert len(failures) == 1 and "no server" in failures[0]
