"""Triton's HTTP/REST inference protocol (KServe v2) for the public model, standard library +
numpy only: for machines without tritonclient (the GPU check).

    client = HttpV2Client("127.0.0.1:8000")
    outputs = client.infer(contract.PUBLIC_MODEL, request_arrays(req))   # {"rec_item_ids": [1, k], ...}

Inputs travel with Triton's binary tensor extension (a JSON header, then the raw little-endian
bytes of each input in order; ``Inference-Header-Content-Length`` says where the header ends), so
a 2048-event history is not spelled out as JSON text; outputs come back as JSON (top-k is small).
Names, datatypes and shapes follow ``oneranker_client.contract.PUBLIC``.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping

import numpy as np

from oneranker_client import contract

WIRE_TO_NUMPY = {contract.TRITON_TO_WIRE[t]: np.dtype(n).newbyteorder("<") for t, n in contract.TRITON_TO_NUMPY.items()}
HEADER_LENGTH = "Inference-Header-Content-Length"


class InferError(RuntimeError):
    """The server answered with an error (``status`` is the HTTP status)."""

    def __init__(self, message: str, status: int):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def infer_body(arrays: Mapping[str, np.ndarray], binary: bool = True, spec=contract.PUBLIC) -> tuple[bytes, dict]:
    """(body, headers) of POST /v2/models/<model>/infer for `arrays` (input name -> array, batch
    dim first). Datatypes come from `spec`; an array of another dtype, or a name `spec` lacks, is
    an error here rather than at the server."""
    inputs, blobs = [], []
    for name, value in arrays.items():
        tensor = next((t for t in spec.inputs if t.name == name), None)
        if tensor is None:
            raise ValueError(f"{spec.name} has no input {name!r}")
        value = np.asarray(value)
        if value.dtype != tensor.numpy_dtype:
            raise ValueError(f"{name} must be {np.dtype(tensor.numpy_dtype)}, got {value.dtype}")
        entry = {"name": name, "shape": list(value.shape), "datatype": tensor.wire_dtype}
        if binary:
            blob = np.ascontiguousarray(value, dtype=WIRE_TO_NUMPY[tensor.wire_dtype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = value.reshape(-1).tolist()
        inputs.append(entry)
    outputs = [{"name": t.name, "parameters": {"binary_data": False}} for t in spec.outputs]
    header = json.dumps({"inputs": inputs, "outputs": outputs}).encode()
    headers = {"Content-Type": "application/octet-stream" if binary else "application/json"}
    if binary:
        headers[HEADER_LENGTH] = str(len(header))
    return header + b"".join(blobs), headers


def parse_response(body: bytes, header_length: int | None = None) -> dict[str, np.ndarray]:
    """Output name -> array of an infer response (JSON data, or binary sections after a header of
    `header_length` bytes when the server sent them that way)."""
    end = len(body) if header_length is None else int(header_length)
    doc = json.loads(body[:end])
    out, offset = {}, end
    for entry in doc["outputs"]:
        dtype = WIRE_TO_NUMPY.get(entry["datatype"])
        if dtype is None:
            raise ValueError(f"output {entry['name']}: unexpected datatype {entry['datatype']}")
        size = (entry.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            value = np.frombuffer(body[offset : offset + size], dtype=dtype)
            offset += size
        else:
            value = np.asarray(entry["data"], dtype=dtype)
        out[entry["name"]] = value.reshape(entry["shape"]).astype(dtype.newbyteorder("="))
    return out


class HttpV2Client:
    """One persistent HTTP/1.1 connection (not thread-safe: one client per thread)."""

    def __init__(self, url: str, timeout: float = 60.0, binary: bool = True):
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port, self.timeout, self.binary = host, int(port or 80), timeout, binary
        self.conn: http.client.HTTPConnection | None = None

    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        for attempt in (0, 1):  # the server may have closed an idle keep-alive connection
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                response = self.conn.getresponse()
                return response.status, response.getheader(HEADER_LENGTH), response.read()
            except (http.client.HTTPException, ConnectionError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def ready(self, model: str | None = None) -> bool:
        path = f"/v2/models/{model}/ready" if model else "/v2/health/ready"
        try:
            return self._request("GET", path)[0] == 200
        except OSError:
            return False

    def model_config(self, model: str, headers: dict | None = None) -> dict:
        """GET /v2/models/<model>/config (a restricted API: `headers` carry its key)."""
        status, _, data = self._request("GET", f"/v2/models/{model}/config", headers=headers)
        if status != 200:
            raise InferError(data.decode(errors="replace"), status)
        return json.loads(data)

    def infer(self, model: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        body, headers = infer_body(arrays, self.binary)
        status, header_length, data = self._request("POST", f"/v2/models/{model}/infer", body, headers)
        if status != 200:
            try:
                message = json.loads(data).get("error", data.decode(errors="replace"))
            except ValueError:
                message = data.decode(errors="replace")
            raise InferError(message, status)
        return parse_response(data, None if header_length is None else int(header_length))

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
