"""The GPU check's pure helpers (no server, no torch): the KServe v2 HTTP codec and client against
the contract, the carry's ELF walk and unpack refusals, the request builder against the
serving validator, and TritonServer pointed at an unpacked root. The end-to-end dry run is
tests/integration/test_gpu_check.py."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from oneranker_client import contract, http_v2
from oneranker_client.client import RecommendRequest, request_arrays
from oneranker_perf import gpu_carry
from oneranker_perf.gpu_check import synthetic_request
from oneranker_serving import local_server as ts
from oneranker_serving.tables import ItemTables
from oneranker_serving.tokenize import HistoryPolicy, tokenize_request

REQ = RecommendRequest(
    user_features=[3, 1, 7, 0],
    item_ids=[101, 5002, 77],
    actions=[1, 2, 3],
    timestamps=[1700000000, 1700000100, 1700000200],
    request_time=1700000300,
    top_k=5,
    exclude_item_ids=[9],
)


def _split(body: bytes, headers: dict) -> tuple[dict, bytes]:
    n = int(headers[http_v2.HEADER_LENGTH])
    return json.loads(body[:n]), body[n:]


# ---------------------------------------------------------------------------------------------
# KServe v2 codec
# ---------------------------------------------------------------------------------------------
def test_binary_body_follows_the_contract_and_round_trips():
    arrays = request_arrays(REQ)
    body, headers = http_v2.infer_body(arrays)
    header, blob = _split(body, headers)
    assert headers["Content-Type"] == "application/octet-stream"
    assert [i["name"] for i in header["inputs"]] == list(arrays)
    assert [o["name"] for o in header["outputs"]] == [t.name for t in contract.PUBLIC.outputs]
    assert all(o["parameters"] == {"binary_data": False} for o in header["outputs"])
    offset = 0
    for entry in header["inputs"]:
        spec = contract.PUBLIC.input(entry["name"])
        assert entry["datatype"] == spec.wire_dtype
        assert entry["shape"] == list(arrays[entry["name"]].shape) and entry["shape"][0] == 1
        size = entry["parameters"]["binary_data_size"]
        got = np.frombuffer(blob[offset : offset + size], dtype=http_v2.WIRE_TO_NUMPY[spec.wire_dtype])
        np.testing.assert_array_equal(got.reshape(entry["shape"]), arrays[entry["name"]])
        offset += size
    assert offset == len(blob)


def test_json_body_carries_the_values_as_lists():
    body, headers = http_v2.infer_body(request_arrays(REQ), binary=False)
    assert http_v2.HEADER_LENGTH not in headers
    doc = json.loads(body)
    by_name = {i["name"]: i for i in doc["inputs"]}
    assert by_name["item_ids"]["data"] == [101, 5002, 77] and by_name["item_ids"]["datatype"] == "INT64"
    assert by_name["top_k"] == {"name": "top_k", "shape": [1, 1], "datatype": "INT32", "data": [5]}


def test_body_refuses_wrong_dtypes_and_unknown_names():
    arrays = request_arrays(REQ)
    with pytest.raises(ValueError, match="top_k must be int32"):
        http_v2.infer_body({**arrays, "top_k": arrays["top_k"].astype(np.int64)})
    with pytest.raises(ValueError, match="no input 'nope'"):
        http_v2.infer_body({**arrays, "nope": np.zeros((1, 1), np.int64)})


def test_parse_response_json_and_binary_sections():
    doc = {
        "outputs": [
            {"name": "rec_item_ids", "datatype": "INT64", "shape": [1, 2], "data": [7, 9]},
            {"name": "rec_scores", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}},
        ]
    }
    header = json.dumps(doc).encode()
    out = http_v2.parse_response(header + np.array([0.5, -1.25], "<f4").tobytes(), len(header))
    np.testing.assert_array_equal(out["rec_item_ids"], [[7, 9]])
    assert out["rec_item_ids"].dtype == np.int64
    np.testing.assert_array_equal(out["rec_scores"], np.array([[0.5, -1.25]], np.float32))
    json_only = http_v2.parse_response(json.dumps({"outputs": doc["outputs"][:1]}).encode())
    np.testing.assert_array_equal(json_only["rec_item_ids"], [[7, 9]])


class _FakeTriton(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Triton
    seen: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        header, blob = _split(body, {http_v2.HEADER_LENGTH: self.headers[http_v2.HEADER_LENGTH]})
        self.seen.append((self.path, header, blob))
        if self.path.endswith("/bad/infer"):
            self._send(400, {"error": "in ensemble 'oneranker', history is empty"})
            return
        items = {"name": "rec_item_ids", "datatype": "INT64", "shape": [1, 1], "data": [len(blob)]}
        self._send(200, {"model_name": "oneranker", "outputs": [items]})

    def _send(self, status: int, doc: dict) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_client_posts_to_the_model_over_one_connection_and_raises_server_errors():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeTriton)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = http_v2.HttpV2Client(f"127.0.0.1:{server.server_address[1]}")
    try:
        arrays = request_arrays(REQ)
        first = client.infer(contract.PUBLIC_MODEL, arrays)
        conn = client.conn
        second = client.infer(contract.PUBLIC_MODEL, arrays)
        assert client.conn is conn  # keep-alive
        expected = sum(a.nbytes for a in arrays.values())
        assert first["rec_item_ids"].tolist() == second["rec_item_ids"].tolist() == [[expected]]
        assert _FakeTriton.seen[0][0] == f"/v2/models/{contract.PUBLIC_MODEL}/infer"
        with pytest.raises(http_v2.InferError, match="HTTP 400: in ensemble 'oneranker', history is empty") as err:
            client.infer("bad", arrays)
        assert err.value.status == 400
    finally:
        client.close()
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------
# Requests the check sends
# ---------------------------------------------------------------------------------------------
def test_synthetic_requests_pass_the_serving_validation():
    tables = ItemTables(
        ad_ids=np.arange(100, 130, dtype=np.int64),
        ad_codes=np.zeros((30, 4), np.int64),
        ad_advertiser=np.zeros(30, np.int64),
        ad_category=np.zeros(30, np.int64),
        ad_bid=np.ones(30, np.float32),
        content_ids=np.arange(5000, 5010, dtype=np.int64),
        content_codes=np.zeros((10, 4), np.int64),
    )
    rng = np.random.default_rng(0)
    policy = HistoryPolicy(feature_cardinality=24, max_history=2048, oov_code=None)  # unknown ids refused
    for length in (1, 64, 2048):
        req = synthetic_request(rng, tables, num_features=4, cardinality=24, length=length)
        arrays = request_arrays(req)  # contract dtypes, batch dim 1
        assert arrays["item_ids"].shape == (1, length) and arrays["num_candidates"].tolist() == [[256]]
        tokens = tokenize_request(
            tables, req.user_features, req.item_ids, req.actions, req.timestamps, req.request_time, policy
        )
        assert tokens.length == length and tokens.unknown == 0 and tokens.dropped == 0
    assert set(np.unique(req.actions)) == {1, 2, 3, 4}


# ---------------------------------------------------------------------------------------------
# The carry
# ---------------------------------------------------------------------------------------------
def test_elf_needed_reads_dt_needed():
    assert "libc.so.6" in gpu_carry.elf_needed(Path("/bin/ls"))
    with pytest.raises(gpu_carry.CarryError, match="not a 64-bit"):
        gpu_carry.elf_needed(Path(__file__))


def _fake_carry(folder: Path, stubs, wheels=()) -> Path:
    folder.mkdir()
    (folder / "payload").write_text("x")
    with tarfile.open(folder / "triton.tar.gz", "w:gz") as tar:
        tar.add(folder / "payload", arcname="site/pytriton/tritonserver/bin/tritonserver")
    manifest = {"archive": "triton.tar.gz", "stubs": list(stubs), "numpy_wheels": list(wheels)}
    (folder / gpu_carry.MANIFEST).write_text(json.dumps(manifest))
    return folder


def test_unpack_refuses_what_does_not_fit_the_interpreter(tmp_path, monkeypatch):
    with pytest.raises(gpu_carry.CarryError, match="run `python -m oneranker_perf.gpu_carry"):
        gpu_carry.unpack(tmp_path / "none", tmp_path / "dest")
    here = gpu_carry.running_python()
    other = _fake_carry(tmp_path / "other", ["3.9"])
    with pytest.raises(gpu_carry.CarryError, match=f"this is Python {here}; .* stubs for 3.9 only"):
        gpu_carry.unpack(other, tmp_path / "dest")
    carry = _fake_carry(tmp_path / "carry", [here], wheels=["wheels/numpy-1.26.4-cp39-cp39-manylinux.whl"])
    monkeypatch.setattr(gpu_carry, "numpy_major", lambda: 2)
    with pytest.raises(gpu_carry.CarryError, match=f"no numpy < 2 wheel for Python {here}"):
        gpu_carry.unpack(carry, tmp_path / "dest")
    monkeypatch.setattr(gpu_carry, "numpy_major", lambda: 1)
    unpacked = gpu_carry.unpack(carry, tmp_path / "dest")
    assert unpacked.numpy_wheel is None and (unpacked.root / "pytriton/tritonserver/bin/tritonserver").is_file()


def test_make_env_gives_an_isolated_interpreter_the_carried_numpy_sources_and_site_packages(tmp_path):
    """What a Python-backend stub sees: CPython isolated (-I: PYTHONPATH ignored) from the venv."""
    wheel = tmp_path / "numpy-1.26.4-cp3-cp3-any.whl"
    with zipfile.ZipFile(wheel, "w") as whl:
        whl.writestr("numpy/__init__.py", "__version__ = '1.26.4-carried'\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "probe_module.py").write_text("")
    unpacked = gpu_carry.Unpacked(tmp_path / "site", wheel, None, {})
    python = gpu_carry.make_env(unpacked, tmp_path / "env", [tmp_path / "src"])
    code = "import numpy, probe_module, safetensors; print(numpy.__version__, probe_module.__file__)"
    out = subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1.26.4-carried", str(tmp_path / "src" / "probe_module.py")]


def test_triton_server_runs_from_an_unpacked_root(tmp_path):
    root = tmp_path / "site"
    binary = root / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    (root / "nvidia_pytriton.libs").mkdir()
    backend = root / "pytriton" / "tritonserver" / "backends" / "python" / "libtriton_python.so"
    backend.parent.mkdir(parents=True)
    backend.write_text("")
    for version in ("3.12", "3.10", "3.9"):
        stub = root / "pytriton" / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
        stub.parent.mkdir(parents=True)
        stub.write_text("")
    assert ts.stub_versions(root) == ["3.9", "3.10", "3.12"]
    server = ts.TritonServer(tmp_path, triton_root=root, backend_dir=tmp_path / "b")
    assert server.build_command()[0] == str(binary)
    assert server.build_env()["LD_LIBRARY_PATH"].split(os.pathsep)[0] == str(root / "nvidia_pytriton.libs")
    if gpu_carry.running_python() not in ("3.9", "3.10", "3.12"):
        with pytest.raises(RuntimeError, match=r"stubs there: 3\.9, 3\.10, 3\.12"):
            ts.prepare_backend_dir(tmp_path / "b", root)
