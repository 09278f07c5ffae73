"""The control plane closed by default, on the real CPU tritonserver 2.51 (nvidia-pytriton wheel).

One server, started by the project's launcher exactly as docker-compose.yml starts Triton:
explicit model control, ``--load-model=*`` and the restricted-API flags of
``oneranker_client.restricted_api`` with an admin key. A one-model repository: Python model
``add_one`` (FP32 [-1], +1). Checked: every restricted category refuses a request without the key
(HTTP 403, gRPC UNAVAILABLE) and serves it with the key; inference, health, metadata and
statistics need no key; the rollout tool (`oneranker_deploy load`) and the perf_analyzer suite get
through with the key from the environment and fail without it; the launcher's CLI closes the
server from ``--admin-key-env`` and never writes the key into its log.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import read_until, require_tritonserver

from oneranker_client import restricted_api as ra
from oneranker_deploy import rollout
from oneranker_serving import local_server as ts

pytestmark = pytest.mark.triton

ROOT = Path(__file__).resolve().parents[2]
MODEL = "add_one"
KEY = secrets.token_hex(16)
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

_MODEL_PY = textwrap.dedent(
    """
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            out = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", (x + 1.0).astype(np.float32))]))
            return out
    """
)
_CONFIG = f"""\
name: "{MODEL}"
backend: "python"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""

# One request per restricted category (HTTP method, path); the test below asks that it covers
# RESTRICTED_APIS exactly, so a category added there needs an endpoint here.
HTTP_ENDPOINTS = {
    "model-repository": ("POST", "/v2/repository/index"),
    "model-config": ("GET", f"/v2/models/{MODEL}/config"),
    "shared-memory": ("GET", "/v2/systemsharedmemory/status"),
    "trace": ("GET", "/v2/trace/setting"),
    "logging": ("GET", "/v2/logging"),
}
OPEN_ENDPOINTS = {
    "health": ("GET", "/v2/health/ready"),
    "metadata": ("GET", f"/v2/models/{MODEL}"),
    "statistics": ("GET", f"/v2/models/{MODEL}/stats"),
}


def compose_triton_flags(key: str) -> list[str]:
    """docker-compose.yml's tritonserver flags (x-triton-command) with `key` as ONERANKER_ADMIN_KEY."""
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["x-triton-command"]
    var = re.compile(r"\$\{" + ra.ADMIN_KEY_ENV + r"(:\?[^}]*)?\}")
    return [var.sub(key, str(t)) for t in raw[1:]]  # [0] is triton-start.sh


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("restricted_repository")
    (root / MODEL / "1").mkdir(parents=True)
    (root / MODEL / "config.pbtxt").write_text(_CONFIG)
    (root / MODEL / "1" / "model.py").write_text(_MODEL_PY)
    return root


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory):
    require_tritonserver()
    logdir = tmp_path_factory.mktemp("restricted_logs")
    flags = {t.split("=", 1)[0]: t.split("=", 1)[1] for t in compose_triton_flags(KEY) if "=" in t}
    srv = ts.TritonServer(
        repository,
        log_file=logdir / "tritonserver.log",
        backend_dir=logdir / "backends",
        model_control_mode=flags["--model-control-mode"],  # explicit, as compose
        load_models=[flags["--load-model"]],  # "*"
        admin_key=KEY,
        ready_timeout=60,
    )
    srv.start()
    try:
        srv.wait_ready(60)
        yield srv
    finally:
        srv.close()


def http(server, method: str, path: str, headers: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(
        f"http://{server.http_url}{path}", method=method, data=b"" if method == "POST" else None, headers=headers or {}
    )
    try:
        with OPENER.open(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_launcher_passes_the_compose_flags(server):
    compose = compose_triton_flags(KEY)
    restricted = [t for t in compose if t.split("=", 1)[0] in (ra.HTTP_FLAG, ra.GRPC_FLAG)]
    assert len(restricted) == 2
    cmd = server.build_command()
    assert [t for t in cmd if t.split("=", 1)[0] in (ra.HTTP_FLAG, ra.GRPC_FLAG)] == restricted
    for flag in ("--model-control-mode=explicit", "--load-model=*"):
        assert flag in compose and flag in cmd
    assert KEY not in Path(server.log_file).read_text(), "the key must not reach the log"


def test_repository_index_over_http_needs_the_key(server):
    status, body = http(server, "POST", "/v2/repository/index")
    assert status == 403, (status, body)
    assert json.loads(body) == {"error": f"This API is restricted, expecting header '{ra.ADMIN_KEY_HEADER}'"}
    assert http(server, "POST", "/v2/repository/index", {ra.ADMIN_KEY_HEADER: KEY[::-1]})[0] == 403
    status, body = http(server, "POST", "/v2/repository/index", server.admin_http_headers)
    assert status == 200, body
    assert {"name": MODEL, "version": "1", "state": "READY"} in json.loads(body)


def test_repository_index_over_grpc_needs_the_key(server):
    import grpc
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(server.grpc_url)
    for headers in (None, ra.http_headers(KEY)):  # none, or the HTTP spelling: refused
        with pytest.raises(InferenceServerException) as err:
            client.get_model_repository_index(headers=headers)
        assert err.value.status() == str(grpc.StatusCode.UNAVAILABLE)
        assert f"expecting header '{ra.GRPC_HEADER_PREFIX}{ra.ADMIN_KEY_HEADER}'" in err.value.message()
    index = client.get_model_repository_index(headers=server.admin_grpc_headers, as_json=True)
    assert {"name": MODEL, "version": "1", "state": "READY"} in index["models"]
    with pytest.raises(InferenceServerException):
        client.get_model_config(MODEL)
    assert client.get_model_config(MODEL, headers=server.admin_grpc_headers).config.name == MODEL


def test_every_restricted_category_is_closed_and_the_rest_open(server):
    assert set(HTTP_ENDPOINTS) == set(ra.RESTRICTED_APIS)
    for category, (method, path) in HTTP_ENDPOINTS.items():
        status, body = http(server, method, path)
        assert status == 403 and ra.ADMIN_KEY_HEADER in body, (category, status, body)
        status, body = http(server, method, path, server.admin_http_headers)
        assert status == 200, (category, status, body)
    for category, (method, path) in OPEN_ENDPOINTS.items():
        assert http(server, method, path)[0] == 200, category


def test_inference_needs_no_key(server):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    x = np.array([[1.0, -2.5, 3.0]], dtype=np.float32)
    for mod, url in ((grpcclient, server.grpc_url), (httpclient, server.http_url)):
        inp = mod.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        y = mod.InferenceServerClient(url).infer(MODEL, [inp]).as_numpy("OUTPUT0")
        np.testing.assert_array_equal(y, x + 1.0)


def test_model_load_needs_the_key_and_the_rollout_tool_sends_it(server):
    # a load request (which could carry model files: code) is refused without the key
    status, body = http(server, "POST", f"/v2/repository/models/{MODEL}/load")
    assert status == 403, body
    with pytest.raises(RuntimeError, match="HTTP 403"):
        rollout.load_models(server.http_url, [MODEL], timeout=60)
    rollout.load_models(server.http_url, [MODEL], timeout=60, admin_key=KEY)  # reloads, checks ready
    assert server.is_live()
    server.wait_model_ready(MODEL, timeout=30)


def test_perf_analyzer_suite_sends_the_key(server, tmp_path, monkeypatch):
    """perf_analyzer reads the model config (restricted) before measuring: the suite must send the
    key, and must not write it into its reports."""
    from oneranker_perf import perf_analyzer_bin, perf_analyzer_suite

    try:
        perf_analyzer_bin.perf_analyzer_command()
    except RuntimeError as e:
        pytest.skip(str(e))
    data = tmp_path / "input.json"
    data.write_text(json.dumps({"data": [{"INPUT0": {"content": [1.0, 2.0], "shape": [2]}}]}))
    argv = ["--url", server.grpc_url, "--model", MODEL, "--input-data", str(data), "--concurrency", "1"]
    argv += ["--measurement-interval", "500", "--stability-percentage", "100", "--max-trials", "5"]
    argv += ["--retry-unstable", "0", "--level-timeout", "60"]
    monkeypatch.delenv(ra.ADMIN_KEY_ENV, raising=False)
    assert perf_analyzer_suite.main([*argv, "--out", str(tmp_path / "nokey")]) == 1
    assert "restricted" in (tmp_path / "nokey" / "raw" / "c1.log").read_text()
    monkeypatch.setenv(ra.ADMIN_KEY_ENV, KEY)
    out = tmp_path / "key"
    assert perf_analyzer_suite.main([*argv, "--out", str(out)]) == 0
    written = "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file() and p.suffix != ".png")
    assert KEY not in written and f"{ra.GRPC_HEADER_PREFIX}{ra.ADMIN_KEY_HEADER}:***" in written


def test_cli_closes_the_server_from_the_environment(repository, tmp_path):
    require_tritonserver()
    log = tmp_path / "cli.log"
    env = {**os.environ, "MY_TRITON_KEY": KEY}
    argv = [sys.executable, "-m", "oneranker_serving.local_server", "--model-repository", str(repository)]
    argv += ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0", "--log-file", str(log)]
    bad = subprocess.run([*argv, "--admin-key-env", "UNSET_KEY_VAR"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "holds no key" in bad.stderr
    proc = subprocess.Popen(
        [*argv, "--admin-key-env", "MY_TRITON_KEY"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = read_until(proc, "restricted")
        out = "".join(lines)
        assert lines and lines[-1].startswith("restricted") and "MY_TRITON_KEY" in lines[-1], out + ts._tail(log)
        http_url = re.search(r"http=(127\.0\.0\.1:\d+)", out).group(1)
        req = urllib.request.Request(f"http://{http_url}/v2/repository/index", method="POST", data=b"")
        with pytest.raises(urllib.error.HTTPError) as err:
            OPENER.open(req, timeout=10)
        assert err.value.code == 403
        req.add_header(ra.ADMIN_KEY_HEADER, KEY)
        with OPENER.open(req, timeout=10) as r:
            assert r.status == 200
        assert KEY not in out and KEY not in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
