"""The real CPU tritonserver (nvidia-pytriton wheel) + perf_analyzer, end to end, on free ports.

A tiny repository: ensemble ``double_add_one`` = Python model ``double`` (x*2) then Python model
``add_one`` (+1), FP32 [-1], max_batch_size 8, dynamic batching. The Python models check at load
time that the stub imported numpy<2 from *this* venv (what TritonServer's PATH set-up is for).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import read_until, require_tritonserver

from oneranker_perf.perf_analyzer_bin import perf_analyzer_command
from oneranker_serving import local_server as ts

pytestmark = pytest.mark.triton

ENSEMBLE = "double_add_one"

_PY_MODEL = textwrap.dedent(
    """
    import os
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            import json
            params = json.loads(args["model_config"]).get("parameters", {})
            want = params["expected_prefix"]["string_value"]
            got = os.path.realpath(np.__file__)
            if not got.startswith(os.path.realpath(want) + os.sep):
                raise RuntimeError(f"stub imported numpy from {got}, expected under {want}")
            if int(np.__version__.split(".")[0]) >= 2:
                raise RuntimeError(f"numpy {np.__version__} corrupts tensors in this backend")

        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                y = np.asarray(OP(x), dtype=np.float32)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", y)]))
            return responses
    """
)

_PY_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: 200 }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
parameters {{ key: "expected_prefix" value: {{ string_value: "{prefix}" }} }}
"""

_ENSEMBLE_CONFIG = f"""\
name: "{ENSEMBLE}"
platform: "ensemble"
max_batch_size: 8
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ -1 ] }} ]
ensemble_scheduling {{
  step [
    {{
      model_name: "double"
      model_version: -1
      input_map {{ key: "INPUT0" value: "INPUT" }}
      output_map {{ key: "OUTPUT0" value: "doubled" }}
    }},
    {{
      model_name: "add_one"
      model_version: -1
      input_map {{ key: "INPUT0" value: "doubled" }}
      output_map {{ key: "OUTPUT0" value: "OUTPUT" }}
    }}
  ]
}}
"""


def _write_repository(root: Path) -> Path:
    ops = {"double": "lambda x: x * 2.0", "add_one": "lambda x: x + 1.0"}
    for name, op in ops.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(_PY_CONFIG.format(name=name, prefix=sys.prefix))
        (root / name / "1" / "model.py").write_text(_PY_MODEL + f"\nOP = {op}\n")
    (root / ENSEMBLE / "1").mkdir(parents=True)
    (root / ENSEMBLE / "config.pbtxt").write_text(_ENSEMBLE_CONFIG)
    return root


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return _write_repository(tmp_path_factory.mktemp("model_repository"))


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory):
    require_tritonserver()
    logdir = tmp_path_factory.mktemp("triton_logs")
    srv = ts.TritonServer(
        repository,
        log_file=logdir / "tritonserver.log",
        backend_dir=logdir / "backends",
        ready_timeout=60,
        cpus=[sorted(os.sched_getaffinity(0))[0]],  # pinned (perf runs keep the client off the server's cores)
    )
    t0 = time.monotonic()
    srv.start()
    try:
        srv.wait_ready(60)
        srv.ready_after_s = time.monotonic() - t0
        yield srv
    finally:
        srv.close()


def _client(server):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(url=server.grpc_url)


def _infer(client, x: np.ndarray, dtype: str = "FP32"):
    import tritonclient.grpc as grpcclient

    inp = grpcclient.InferInput("INPUT", list(x.shape), dtype)
    inp.set_data_from_numpy(x)
    out = grpcclient.InferRequestedOutput("OUTPUT")
    return client.infer(ENSEMBLE, [inp], outputs=[out], client_timeout=30)


def test_prepare_backend_dir_is_idempotent(tmp_path):
    require_tritonserver()
    out = ts.prepare_backend_dir(tmp_path / "b")
    stub = out / "python" / "triton_python_backend_stub"
    assert (out / "python" / "libtriton_python.so").is_file()
    assert stub.is_file() and os.access(stub, os.X_OK)
    mtime = stub.stat().st_mtime_ns
    assert ts.prepare_backend_dir(tmp_path / "b") == out
    assert stub.stat().st_mtime_ns == mtime  # left alone the second time


def test_server_ready_on_localhost(server):
    assert server.is_running()
    assert server.ready_after_s < 60
    for url in (server.grpc_url, server.http_url):
        assert url.startswith("127.0.0.1:")
    assert len({server.grpc_port, server.http_port, server.metrics_port}) == 3
    server.wait_model_ready(ENSEMBLE, timeout=10)
    server.wait_model_ready("double", timeout=10, version=1)


def test_server_and_its_stubs_stay_on_their_cpus(server):
    import psutil

    procs = [psutil.Process(server.pid)] + psutil.Process(server.pid).children(recursive=True)
    assert any("stub" in p.name() or "stub" in " ".join(p.cmdline()) for p in procs[1:]), procs
    for proc in procs:
        assert set(proc.cpu_affinity()) == set(server.cpus), (proc.name(), proc.cpu_affinity())


def test_grpc_ensemble_inference(server):
    client = _client(server)
    assert client.is_server_ready()
    x = np.array([[1.0, 2.0, -3.5, 0.0], [0.5, 10.0, 7.0, -1.0]], dtype=np.float32)
    y = _infer(client, x).as_numpy("OUTPUT")
    np.testing.assert_allclose(y, x * 2.0 + 1.0, rtol=0, atol=0)
    assert y.dtype == np.float32 and y.shape == x.shape
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(server.metrics_url, timeout=10) as r:
        metrics = r.read().decode()
    assert f'nv_inference_request_success{{model="{ENSEMBLE}"' in metrics


def test_bad_request_gets_clear_error_and_server_stays_live(server):
    from tritonclient.utils import InferenceServerException

    client = _client(server)
    with pytest.raises(InferenceServerException) as err:
        _infer(client, np.array([[1, 2, 3]], dtype=np.int32), dtype="INT32")
    msg = str(err.value)
    assert "INT32" in msg and "FP32" in msg, msg
    assert server.is_live() and client.is_server_live()
    y = _infer(client, np.array([[4.0]], dtype=np.float32)).as_numpy("OUTPUT")
    assert y.tolist() == [[9.0]]


def test_perf_analyzer_against_server(server, tmp_path):
    argv, env = perf_analyzer_command()
    data = tmp_path / "input.json"
    sample = {"INPUT": {"content": [1.0, 2.0, 3.0, 4.0], "shape": [4]}}
    data.write_text(json.dumps({"data": [sample]}))
    cmd = argv + [
        "-m",
        ENSEMBLE,
        "-i",
        "grpc",
        "-u",
        server.grpc_url,
        "--input-data",
        str(data),
        "--concurrency-range",
        "1",
        "--measurement-interval",
        "1000",
        "--stability-percentage",
        "50",
        "--max-trials",
        "4",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    m = re.search(r"throughput:\s*([\d.]+)\s*infer/sec", out, re.IGNORECASE)
    assert m and float(m.group(1)) > 0, out


def test_stop_ends_the_process(server):
    proc = server.process
    t0 = time.monotonic()
    rc = server.stop(timeout=20)
    assert proc.poll() is not None
    assert rc is not None and time.monotonic() - t0 < 25
    assert not server.is_running() and not server.is_live()


def test_cli_foreground_and_sigterm(repository, tmp_path):
    require_tritonserver()
    log = tmp_path / "cli.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "oneranker_serving.local_server",
            "--model-repository",
            str(repository),
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--metrics-port",
            "0",
            "--log-file",
            str(log),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = read_until(proc, "ready")
        assert lines and lines[-1].startswith("ready"), "".join(lines) + ts._tail(log)
        assert re.search(r"grpc=127\.0\.0\.1:\d+", lines[-1])
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=40)
        assert proc.returncode == 0, "".join(lines) + rest
        assert "stopped" in rest
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the CLI stops its server before exiting
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
