"""Malformed requests of the public contract, sent over gRPC and KServe v2 HTTP/JSON exactly as
written (no client library checks them first), and what each one must be answered with.

    cases = bad_cases(request_dict, Limits.from_repository(repo))   # the catalogue, one Case each
    outcome = send_grpc(stub, case.grpc_request())                  # (status, message)
    outcome = send_http("127.0.0.1:8000", case.model, *case.http_request())

Every case names the layer that answers it: ``triton`` (Triton's own HTTP/gRPC parser and its
checks of the model config: dtype, rank, fixed dims, byte sizes, input and output names, batch
size) or ``model`` (oneranker's validation, a ``RequestError`` turned into INVALID_ARG by the
Python model: through the ensemble its message starts with "in ensemble 'oneranker', "). Triton's
JSON parser answers some malformed bodies with HTTP 500, not 400: those are recorded as they are.

``CRASHES`` lists the malformed requests that tritonserver 2.51 does not survive (its parser or the
Python backend stub aborts): they are not in the catalogue, so the soak and the concurrent test
never send them; ``tests/integration/test_bad_input.py`` pins what they do on a server of their own.

The tests (``tests/integration/test_bad_input.py``) and the soak (``oneranker_perf.soak``) both
send this catalogue; ``markdown_table`` renders it for ``docs/bad_input.md``
(``python -m oneranker_perf.bad_requests docs/bad_input.md`` rewrites the table there).
numpy + the gRPC service stubs of tritonclient + the standard library.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from oneranker_client import contract

WIRE_NUMPY = {"INT64": np.int64, "INT32": np.int32, "FP32": np.float32, "FP64": np.float64}
GRPC_OK = "OK"
INVALID = "INVALID_ARGUMENT"
TRITON, MODEL = "triton", "model"
ENSEMBLE_PREFIX = "in ensemble '"  # Triton's prefix on an error made by a composing model


@dataclass(frozen=True)
class Limits:
    """The served model's limits the cases probe just past (export_info.json's serve block)."""

    max_exclude_items: int = 1024
    max_batch_size: int = 8
    max_history: int = 128

    @classmethod
    def from_repository(cls, repository: Path, model: str = contract.FUSED_MODEL) -> Limits:
        info = json.loads((Path(repository) / model / "1" / "artifacts" / "export_info.json").read_text())
        serve = info["serve"]
        return cls(int(serve["max_exclude_items"]), int(serve["max_batch_size"]), int(serve["length_buckets"][-1]))


@dataclass(frozen=True)
class Tensor:
    """One input as sent: datatype and shape are written as given, whatever the data holds.
    `data`: numbers (encoded raw for gRPC and binary HTTP, listed for JSON) or, for JSON-only
    cases, a list of any JSON values (NaN, strings)."""

    name: str
    datatype: str
    shape: tuple
    data: object

    def raw(self) -> bytes:
        return np.asarray(self.data, dtype=WIRE_NUMPY.get(self.datatype, np.int64)).reshape(-1).tobytes()

    def json_data(self) -> list:
        return self.data if isinstance(self.data, list) else np.asarray(self.data).reshape(-1).tolist()


@dataclass(frozen=True)
class Expect:
    layer: str  # TRITON or MODEL
    status: object  # gRPC status code name, or HTTP status
    pattern: str  # the answer's message contains this (case-insensitive)


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # what is wrong: dtype, rank, shape vs data, dims, NaN/Inf, ids, history, ...
    tensors: tuple
    grpc: Expect | None  # None: not sendable over gRPC in this form
    http: Expect | None  # None: not sendable over HTTP in this form
    model: str = contract.PUBLIC_MODEL
    outputs: tuple = ()  # requested outputs (none: all)
    http_binary: bool = False  # HTTP with Triton's binary tensor extension instead of JSON data
    http_body: bytes | None = None  # replaces the HTTP body (and its JSON content type)
    grpc_body: bytes | None = None  # replaces the serialized gRPC request
    # typed contents (not raw_input_contents) for every input: input name -> contents field, the
    # others by datatype (int64_contents, int_contents, fp32_contents); None: raw bytes
    grpc_contents: dict | None = None
    grpc_extra_contents: bool = False  # typed contents as well as raw_input_contents

    def grpc_request(self):
        """A tritonclient.grpc.service_pb2.ModelInferRequest (or raw bytes, `grpc_body`)."""
        if self.grpc_body is not None:
            return self.grpc_body
        return grpc_request(self.model, self.tensors, self.outputs, self.grpc_contents, self.grpc_extra_contents)

    def http_request(self) -> tuple[bytes, dict]:
        if self.http_body is not None:
            return self.http_body, {"Content-Type": "application/json"}
        return http_request(self.tensors, self.outputs, self.http_binary)

    def expect(self, protocol: str) -> Expect | None:
        return self.grpc if protocol == "grpc" else self.http


# ------------------------------------------------------------------ encoding, sending, decoding


TYPED_CONTENTS = {"INT64": "int64_contents", "INT32": "int_contents", "FP32": "fp32_contents"}


def grpc_request(model: str, tensors, outputs=(), contents: dict | None = None, extra_contents: bool = False):
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    for t in tensors:
        entry = request.inputs.add()
        entry.name, entry.datatype = t.name, t.datatype
        entry.shape.extend(int(d) for d in t.shape)
        if contents is not None:
            typed = contents.get(t.name, TYPED_CONTENTS[t.datatype])
            getattr(entry.contents, typed).extend(np.asarray(t.data).reshape(-1).tolist())
            continue
        if extra_contents:
            entry.contents.int64_contents.extend(np.asarray(t.data).reshape(-1).tolist())
        request.raw_input_contents.append(t.raw())
    for name in outputs:
        request.outputs.add().name = name
    return request


def http_request(tensors, outputs=(), binary: bool = False) -> tuple[bytes, dict]:
    """(body, headers) of POST /v2/models/<model>/infer: JSON data, or the binary extension."""
    inputs, blobs = [], []
    for t in tensors:
        entry = {"name": t.name, "shape": [int(d) for d in t.shape], "datatype": t.datatype}
        if binary:
            blob = t.raw()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = t.json_data()
        inputs.append(entry)
    doc = {"inputs": inputs}
    if outputs:
        doc["outputs"] = [{"name": name, "parameters": {"binary_data": False}} for name in outputs]
    header = json.dumps(doc, allow_nan=True).encode()  # allow_nan: the NaN / Infinity cases
    if not binary:
        return header, {"Content-Type": "application/json"}
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    return header + b"".join(blobs), headers


def grpc_stub(url: str):
    """(channel, GRPCInferenceService stub) for `host:port`."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    channel = grpc.insecure_channel(url)
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


def send_grpc(channel, stub, request, timeout: float = 60.0) -> tuple[str, object]:
    """-> ("OK", decoded outputs) or (status code name, error message)."""
    import grpc

    try:
        if isinstance(request, bytes):  # undecodable on purpose: bypass the serializer
            call = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            call(request, timeout=timeout)
            return GRPC_OK, {}
        return GRPC_OK, decode_grpc(stub.ModelInfer(request, timeout=timeout))
    except grpc.RpcError as err:
        return err.code().name, err.details() or ""


def decode_grpc(response) -> dict[str, np.ndarray]:
    out = {}
    for i, tensor in enumerate(response.outputs):
        dtype = np.dtype(WIRE_NUMPY[tensor.datatype]).newbyteorder("<")
        out[tensor.name] = np.frombuffer(response.raw_output_contents[i], dtype=dtype).reshape(tuple(tensor.shape))
    return out


def send_http(url: str, model: str, body: bytes, headers: dict, timeout: float = 60.0, conn=None):
    """-> (HTTP status, decoded outputs or the error message). `conn`: a kept-alive
    http.client.HTTPConnection to reuse (one per thread); a new one per call otherwise."""
    own = conn is None
    if own:
        host, _, port = url.removeprefix("http://").partition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", f"/v2/models/{model}/infer", body=body, headers=headers)
        response = conn.getresponse()
        status, data = response.status, response.read()
    finally:
        if own:
            conn.close()
    try:
        doc = json.loads(data)
    except ValueError:
        return status, data.decode(errors="replace")
    if status != 200:
        return status, doc.get("error", data.decode(errors="replace")) if isinstance(doc, dict) else str(doc)
    return status, {
        o["name"]: np.asarray(o["data"], dtype=WIRE_NUMPY[o["datatype"]]).reshape(o["shape"]) for o in doc["outputs"]
    }


def check_answer(case: Case, protocol: str, status, message) -> str | None:
    """None when the answer is the expected one, else what is wrong (one line)."""
    want = case.expect(protocol)
    if status != want.status:
        return f"{case.name} over {protocol}: expected {want.status}, got {status}: {str(message)[:200]}"
    if not isinstance(message, str) or not message.strip():
        return f"{case.name} over {protocol}: no message"
    if want.pattern.lower() not in message.lower():
        return f"{case.name} over {protocol}: message lacks {want.pattern!r}: {message[:300]}"
    if "Traceback" in message:
        return f"{case.name} over {protocol}: a traceback in the message: {message[:300]}"
    if case.model in contract.ENSEMBLES and (ENSEMBLE_PREFIX in message) != (want.layer == MODEL):
        return f"{case.name} over {protocol}: answered by the other layer than {want.layer}: {message[:200]}"
    return None


# ------------------------------------------------------------------ the catalogue


def good_tensors(req: dict, **options) -> list[Tensor]:
    """A request dict (user_features, item_ids, actions, timestamps, request_time) and options
    (top_k, num_candidates, beam_width: INT32; exclude_item_ids) -> contract.PUBLIC tensors,
    batch dimension 1."""
    fields = dict(req, **options)
    out = []
    for spec in contract.PUBLIC.inputs:
        if spec.name not in fields:
            continue
        value = np.asarray(fields[spec.name], dtype=spec.numpy_dtype).reshape(1, -1)
        out.append(Tensor(spec.name, spec.wire_dtype, value.shape, value))
    return out


def _with(tensors: list, name: str, **changes) -> tuple:
    assert any(t.name == name for t in tensors), name
    return tuple(replace(t, **changes) if t.name == name else t for t in tensors)


def _users(tensors, k: int) -> list:
    """The same user `k` times in one request (batch dimension k)."""
    return [replace(t, shape=(k, *t.shape[1:]), data=np.repeat(t.data, k, 0)) for t in tensors]


def _data(values, dtype=np.int64) -> dict:
    value = np.asarray(values, dtype=dtype).reshape(1, -1)
    return {"shape": value.shape, "data": value}


def _t(name: str, values, datatype: str = "INT64") -> Tensor:
    value = np.asarray(values, dtype=WIRE_NUMPY[datatype]).reshape(1, -1)
    return Tensor(name, datatype, value.shape, value)


def bad_cases(req: dict, limits: Limits = Limits()) -> list[Case]:
    """The catalogue for one valid request `req` (a request dict, see `good_tensors`)."""
    base = good_tensors(req)
    n = len(req["item_ids"])
    ts = np.asarray(req["timestamps"], np.int64)
    both_t = lambda status_http, pattern: (Expect(TRITON, INVALID, pattern), Expect(TRITON, status_http, pattern))
    both_m = lambda pattern: (Expect(MODEL, INVALID, pattern), Expect(MODEL, 400, pattern))
    opt = lambda **o: tuple(good_tensors(req, **o))
    history = ("item_ids", "actions", "timestamps")
    cases = []

    def add(name, kind, tensors, expect, **kw):
        grpc, http = expect
        cases.append(Case(name, kind, tuple(tensors), grpc, http, **kw))

    # -- wrong dtype (Triton checks every input against the config)
    add(
        "item_ids sent as INT32",
        "dtype",
        _with(base, "item_ids", datatype="INT32"),
        both_t(400, "data-type is 'INT32'"),
    )
    add(
        "timestamps sent as FP32",
        "dtype",
        _with(base, "timestamps", datatype="FP32"),
        both_t(400, "data-type is 'FP32'"),
    )
    add(
        "unknown datatype INT65",
        "dtype",
        _with(base, "item_ids", datatype="INT65"),
        (Expect(TRITON, INVALID, "data-type is '<invalid>'"), Expect(TRITON, 400, "invalid datatype")),
    )
    add(
        "item_ids sent as BYTES",
        "dtype",
        _with(base, "item_ids", datatype="BYTES"),
        (Expect(TRITON, INVALID, "data-type is 'BYTES'"), Expect(TRITON, 500, "unable to parse json bytes array")),
    )
    # -- rank, fixed dims, batch dimension
    add("item_ids of rank 3", "rank", _with(base, "item_ids", shape=(1, n, 1)), both_t(400, "unexpected shape"))
    add(
        "item_ids without the batch dimension",
        "rank",
        _with(base, "item_ids", shape=(n,)),
        both_t(400, "batch size does not match"),
    )
    f = len(req["user_features"])
    add(
        f"{f - 1} user features instead of {f}",
        "rank",
        _with(base, "user_features", **_data(req["user_features"][:-1])),
        both_t(400, "unexpected shape for input 'user_features'"),
    )
    add(
        "request_time with two values",
        "rank",
        _with(base, "request_time", **_data([req["request_time"]] * 2)),
        both_t(400, "unexpected shape for input 'request_time'"),
    )
    add(
        "top_k with two values",
        "rank",
        list(base) + [_t("top_k", [3, 4], "INT32")],
        both_t(400, "unexpected shape for input 'top_k'"),
    )
    # -- shape vs data length (Triton's JSON parser answers 500, its gRPC/binary check 400)
    add(
        "shape longer than the data",
        "shape vs data",
        _with(base, "item_ids", shape=(1, n + 3)),
        (Expect(TRITON, INVALID, "byte size mismatch"), Expect(TRITON, 500, "shape does not match")),
    )
    add(
        "shape shorter than the data",
        "shape vs data",
        _with(base, "item_ids", shape=(1, n - 3)),
        (Expect(TRITON, INVALID, "byte size mismatch"), Expect(TRITON, 500, "shape does not match")),
    )
    add(
        "shape vs data, binary HTTP",
        "shape vs data",
        _with(base, "item_ids", shape=(1, n + 3)),
        (None, Expect(TRITON, 400, "byte size mismatch")),
        http_binary=True,
    )
    # -- negative and huge dims
    add(
        "negative dim [1, -5]",
        "dims",
        _with(base, "item_ids", shape=(1, -5)),
        (Expect(TRITON, INVALID, "byte size mismatch"), Expect(TRITON, 500, "non-unsigned-integer")),
    )
    add(
        "huge dim [1, 2**40] (binary HTTP; JSON: see CRASHES)",
        "dims",
        _with(base, "item_ids", shape=(1, 2**40)),
        both_t(400, "byte size mismatch"),
        http_binary=True,
    )
    add(
        "huge dims [1, 2**31, 2**31] (binary HTTP)",
        "dims",
        _with(base, "item_ids", shape=(1, 2**31, 2**31)),
        both_t(400, "unexpected shape"),
        http_binary=True,
    )
    add(
        "zero batch dimension [0, L]",
        "dims",
        _with(base, "item_ids", shape=(0, n)),
        both_t(400, "batch size does not match"),
    )
    add(
        f"{limits.max_batch_size + 1} users (above max_batch_size)",
        "batch",
        _users(base, limits.max_batch_size + 1),
        both_t(400, f"batch-size must be <= {limits.max_batch_size}"),
    )
    add(
        "two users in one request",
        "batch",
        _users(base, 2),
        both_m("batch dimension of 1"),
    )
    # -- NaN / Inf / non-integers where integers belong
    nan_ts = [float("nan")] * n
    add(
        "NaN timestamps (FP32 tensor)",
        "NaN/Inf",
        _with(base, "timestamps", datatype="FP32", data=np.full((1, n), np.nan, np.float32)),
        (Expect(TRITON, INVALID, "data-type is 'FP32'"), None),
    )
    add(
        "NaN timestamps (JSON NaN in INT64)",
        "NaN/Inf",
        _with(base, "timestamps", data=nan_ts),
        (None, Expect(TRITON, 500, "unable to parse 'data'")),
    )
    add(
        "Inf top_k (FP32 tensor)",
        "NaN/Inf",
        list(base) + [_t("top_k", [np.inf], "FP32")],
        (Expect(TRITON, INVALID, "data-type is 'FP32'"), None),
    )
    add(
        "Inf top_k (JSON Infinity in INT32)",
        "NaN/Inf",
        list(base) + [Tensor("top_k", "INT32", (1, 1), [float("inf")])],
        (None, Expect(TRITON, 500, "unable to parse 'data'")),
    )
    add(
        "fractional item ids",
        "NaN/Inf",
        _with(base, "item_ids", data=[1.5] * n),
        (None, Expect(TRITON, 500, "unable to parse 'data'")),
    )
    add(
        "FP32 contents for an INT64 input",
        "NaN/Inf",
        _with(base, "timestamps", data=np.full((1, n), np.nan, np.float32)),
        (Expect(TRITON, INVALID, "unexpected explicit tensor data"), None),
        grpc_contents={"timestamps": "fp32_contents"},
    )
    add(
        "item ids as strings",
        "NaN/Inf",
        _with(base, "item_ids", data=[str(x) for x in req["item_ids"]]),
        (None, Expect(TRITON, 500, "unable to parse 'data'")),
    )
    # -- out-of-range values (ids, actions, times)
    add(
        "user feature -1",
        "ids",
        _with(base, "user_features", data=np.full((1, len(req["user_features"])), -1, np.int64)),
        both_m("user_features values must lie in"),
    )
    add(
        "user feature 2**62",
        "ids",
        _with(base, "user_features", data=np.full((1, len(req["user_features"])), 2**62, np.int64)),
        both_m("user_features values must lie in"),
    )
    add(
        "action code 9",
        "ids",
        _with(base, "actions", data=np.full((1, n), 9, np.int64)),
        both_m("unknown action code 9"),
    )
    add(
        "action code 0 (padding)",
        "ids",
        _with(base, "actions", data=np.zeros((1, n), np.int64)),
        both_m("unknown action code 0"),
    )
    add(
        "event after the request time",
        "times",
        _with(base, "request_time", data=np.array([[int(ts.min()) - 1]])),
        both_m("after the request time"),
    )
    add(
        "negative event timestamps",
        "times",
        _with(base, "timestamps", data=np.full((1, n), -5, np.int64)),
        both_m("timestamps must be >= 0"),
    )
    add(
        "negative request_time",
        "times",
        _with(base, "request_time", data=np.array([[-(2**63)]])),
        both_m("request_time must be >= 0"),
    )
    # -- history
    add(
        "empty history",
        "history",
        [replace(t, shape=(1, 0), data=np.zeros((1, 0), np.int64)) if t.name in history else t for t in base],
        both_m("history is empty"),
    )
    add(
        "history fields of different lengths",
        "history",
        _with(base, "actions", **_data(req["actions"][:-1])),
        both_m("different lengths"),
    )
    # -- missing, duplicated, unknown inputs and outputs
    add(
        "missing required input",
        "inputs",
        [t for t in base if t.name != "timestamps"],
        both_t(400, "missing required input(s) ['timestamps']"),
    )
    add("no inputs at all", "inputs", [], both_t(400, "missing required input"))
    add("duplicated input", "inputs", list(base) + [base[1]], both_t(400, "input 'item_ids' already exists"))
    add(
        "unknown input",
        "inputs",
        list(base) + [_t("bogus", [1])],
        both_t(400, "unexpected inference input 'bogus'"),
    )
    add("unknown output", "outputs", base, both_t(400, "unexpected inference output 'bogus'"), outputs=("bogus",))
    add(
        "unknown model",
        "inputs",
        base,
        (Expect(TRITON, "NOT_FOUND", "unknown model"), Expect(TRITON, 404, "unknown model")),
        model="no_such_model",
    )
    # -- absurd options
    add("negative top_k", "options", opt(top_k=-3), both_m("top_k=-3 is out of range"))
    add("top_k 10**7", "options", opt(top_k=10_000_000), both_m("top_k=10000000 is out of range"))
    add("num_candidates 0", "options", opt(num_candidates=0), both_m("num_candidates=0 is out of range"))
    add("beam_width 2**30", "options", opt(beam_width=1 << 30), both_m("beam_width=1073741824 is out of range"))
    add("beam_width INT32 min", "options", opt(beam_width=-(2**31)), both_m("beam_width=-2147483648 is out"))
    add("top_k above num_candidates", "options", opt(top_k=20, num_candidates=5), both_m("larger than num_candidates"))
    add(
        f"{limits.max_exclude_items + 1} excluded items",
        "options",
        opt(exclude_item_ids=np.arange(limits.max_exclude_items + 1)),
        both_m(f"the maximum is {limits.max_exclude_items}"),
    )
    add(
        "top_k 2**40 in an INT32 JSON input",
        "options",
        list(base) + [Tensor("top_k", "INT32", (1, 1), [2**40])],
        (None, Expect(MODEL, 400, "top_k=0 is out of range")),  # Triton's JSON parser wraps it to 0
    )
    # -- bodies no parser can read
    add(
        "body is not JSON",
        "body",
        [],
        (None, Expect(TRITON, 500, "failed to parse the request JSON")),
        http_body=b"{not json",
    )
    add(
        "inputs is not a list",
        "body",
        [],
        (None, Expect(TRITON, 500, "unable to parse 'inputs'")),
        http_body=b'{"inputs": 5}',
    )
    add("empty body", "body", [], (None, Expect(TRITON, 400, "raw request")), http_body=b"")
    add(
        "undecodable protobuf",
        "body",
        [],
        (Expect(TRITON, "INTERNAL", "unable to parse request"), None),
        grpc_body=b"\xff\xff\xff\x01garbage",
    )
    add(
        "raw and typed contents both",
        "body",
        base,
        (Expect(TRITON, INVALID, "contents field must not be specified"), None),
        grpc_extra_contents=True,
    )
    # -- the fused model called directly (no ensemble in front)
    fused = contract.FUSED_MODEL
    two_users = _users(base, 2)
    add("direct: two users", "batch", two_users, both_m("batch dimension of 1"), model=fused)
    add("direct: negative top_k", "options", opt(top_k=-3), both_m("top_k=-3 is out of range"), model=fused)
    add(
        "direct: empty history",
        "history",
        [replace(t, shape=(1, 0), data=np.zeros((1, 0), np.int64)) if t.name in history else t for t in base],
        both_m("history is empty"),
        model=fused,
    )
    add(
        "direct: item_ids as INT32",
        "dtype",
        _with(base, "item_ids", datatype="INT32"),
        both_t(400, "data-type is 'INT32'"),
        model=fused,
    )
    add("direct: duplicated input", "inputs", list(base) + [base[1]], both_t(400, "already exists"), model=fused)
    add(
        "direct: unknown output",
        "outputs",
        base,
        both_t(400, "unexpected inference output 'bogus'"),
        model=fused,
        outputs=("bogus",),
    )
    return cases


# ------------------------------------------------------------------ what tritonserver 2.51 does not survive


@dataclass(frozen=True)
class Crash:
    name: str
    protocol: str
    case: Case
    effect: str


def crashes(req: dict) -> list[Crash]:
    """Malformed requests that take down tritonserver 2.51 or one of its Python stubs (never in
    the catalogue; pinned by tests/integration/test_bad_input.py on a server of their own)."""
    base = good_tensors(req)
    overflow = _with(base, "item_ids", shape=(1, 2**61), data=np.zeros((1, 0), np.int64))
    return [
        Crash(
            "byte size overflowing to the bytes sent: item_ids [1, 2**61] INT64, no data",
            "grpc",
            Case("overflow", "dims", overflow, Expect(TRITON, INVALID, "byte size"), None),
            "8 * 2**61 wraps to 0 bytes, so Triton's byte-size check passes; the Python backend stub "
            "of the model instance aborts building the numpy array (ValueError: array is too big) "
            "before oneranker's code runs; that instance answers INTERNAL 'Stub process ... is not "
            "healthy' from then on, while /v2/health/ready and the model's ready stay 200",
        ),
        Crash(
            "huge dim in a JSON body: item_ids [1, 2**40]",
            "http",
            Case("huge json", "dims", _with(base, "item_ids", shape=(1, 2**40)), None, Expect(TRITON, 400, "")),
            "Triton's JSON parser allocates 8 * 2**40 bytes for the tensor before comparing the "
            "shape with the data: std::bad_alloc, tritonserver aborts (signal 6), every model gone",
        ),
    ]


# ------------------------------------------------------------------ the table


def markdown_table(cases: list[Case]) -> str:
    """One row per case: what is wrong, which layer answers, gRPC status and HTTP status."""
    lines = [
        "| # | case | kind | model | answered by | gRPC | HTTP | message contains |",
        "|---:|---|---|---|---|---|---|---|",
    ]
    for i, c in enumerate(cases, 1):
        layers = sorted({e.layer for e in (c.grpc, c.http) if e is not None})
        grpc = "-" if c.grpc is None else c.grpc.status
        http = "-" if c.http is None else f"{c.http.status}" + (" (binary)" if c.http_binary else "")
        patterns = sorted({e.pattern for e in (c.grpc, c.http) if e is not None})
        pat = " / ".join(f"`{p}`" for p in patterns).replace("|", "\\|")
        lines.append(f"| {i} | {c.name} | {c.kind} | {c.model} | {' + '.join(layers)} | {grpc} | {http} | {pat} |")
    return "\n".join(lines) + "\n"


# A request of the small preset's shape (4 user features): the case names of docs/bad_input.md.
SAMPLE_REQUEST = {
    "user_features": [6, 3, 2, 15],
    "item_ids": [900151, 100001, 100352, 100546, 100374, 900053],
    "actions": [2, 1, 1, 1, 1, 3],
    "timestamps": [1000, 1060, 1120, 1180, 1240, 1300],
    "request_time": 1400,
}
TABLE_START = "<!-- cases: python -m oneranker_perf.bad_requests docs/bad_input.md -->\n"
TABLE_END = "<!-- end of cases -->\n"


def update_doc(path) -> None:
    """Rewrite the table between TABLE_START and TABLE_END of `path`."""
    text = Path(path).read_text()
    head, rest = text.split(TABLE_START, 1)
    tail = rest.split(TABLE_END, 1)[1]
    Path(path).write_text(head + TABLE_START + markdown_table(bad_cases(SAMPLE_REQUEST)) + TABLE_END + tail)


if __name__ == "__main__":  # python -m oneranker_perf.bad_requests docs/bad_input.md
    import sys

    update_doc(sys.argv[1])
