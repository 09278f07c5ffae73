"""Request and response messages of the public ``oneranker`` model and their tensor form (torch-free).

Every tensor name and dtype comes from :mod:`oneranker_client.contract` (``contract.PUBLIC``):
a :class:`RecommendRequest` has one field per public input and a :class:`Recommendation` one
field per public output (the ``rec_`` prefix dropped).

Data flow of one call: ``RecommendRequest`` (lists, numpy arrays or a JSON object through
:meth:`RecommendRequest.from_json`) -> :func:`request_arrays` (validated arrays of the contract's
dtypes with a batch dim of 1) -> :func:`build_inputs` (tritonclient ``InferInput`` list) -> the
server -> :func:`parse_result` (the ``InferResult`` checked against the contract, padding rows
dropped) -> ``Recommendation``. ``tritonclient`` is imported only by the two functions that build
its objects, so the arrays and the messages work without it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import contract
from .retries import OneRankerError

__all__ = [
    "RecommendRequest",
    "Recommendation",
    "build_inputs",
    "parse_result",
    "request_arrays",
    "requested_outputs",
]

_OUTPUT_PREFIX = "rec_"


@dataclass
class RecommendRequest:
    """One user's raw request: one field per input of ``contract.PUBLIC`` (same names).

    Lists or numpy arrays; ``None`` leaves an optional input out (the server uses its default).
    """

    user_features: Any
    item_ids: Any
    actions: Any
    timestamps: Any
    request_time: Any
    top_k: int | None = None
    num_candidates: int | None = None
    beam_width: int | None = None
    exclude_item_ids: Any = None

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RecommendRequest:
        """From a JSON object (e.g. one line of a requests JSONL). Unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a request must be a JSON object, got {type(data).__name__}")
        names = cls.field_names()
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown request field(s) {unknown}; allowed: {list(names)}")
        required = [s.name for s in contract.PUBLIC.inputs if not s.optional]
        missing = [n for n in required if data.get(n) is None]
        if missing:
            raise ValueError(f"missing required request field(s) {missing}")
        return cls(**{k: data[k] for k in names if k in data})

    def to_json(self) -> dict:
        """JSON-ready dict (ints and lists of ints); unset optional fields are left out."""
        out: dict[str, Any] = {}
        for spec in contract.PUBLIC.inputs:
            value = getattr(self, spec.name)
            if value is None:
                continue
            arr = _as_array(spec, value)
            out[spec.name] = _scalar_or_list(spec, arr)
        return out


@dataclass(eq=False)
class Recommendation:
    """Top-k for one request, best first: one field per output of ``contract.PUBLIC``
    (``rec_item_ids`` -> ``item_ids`` ...) + the client-side latency (retries included)."""

    item_ids: np.ndarray
    scores: np.ndarray
    gen_logp: np.ndarray
    source_head: np.ndarray
    history_unknown: int = 0  # history events the model version did not know (served as OOV)
    history_dropped: int = 0  # oldest history events cut beyond the model's max_history
    model_version: int = -1  # the release that answered
    latency_ms: float = 0.0

    def __len__(self) -> int:
        return int(len(self.item_ids))

    def to_json(self) -> dict:
        out = {}
        for spec in contract.REC_OUTPUTS:
            field_name = _output_field(spec.name)
            arr = np.asarray(getattr(self, field_name))
            out[field_name] = [round(float(x), 6) for x in arr] if arr.dtype.kind == "f" else arr.astype(int).tolist()
        for spec in contract.STATUS_OUTPUTS:
            out[spec.name] = int(getattr(self, spec.name))
        out["latency_ms"] = round(float(self.latency_ms), 3)
        return out


def _output_field(name: str) -> str:
    return name[len(_OUTPUT_PREFIX) :] if name.startswith(_OUTPUT_PREFIX) else name


_REC_FIELDS = frozenset(_output_field(s.name) for s in contract.REC_OUTPUTS)


def _is_scalar_spec(spec: contract.TensorSpec) -> bool:
    return tuple(spec.dims) == (1,)


def _as_array(spec: contract.TensorSpec, value: Any) -> np.ndarray:
    """``value`` as a 1-D array of the spec's dtype (batch dim not included); rejects non-integers
    for integer tensors and values that do not fit the dtype."""
    arr = np.asarray(value)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise ValueError(f"{spec.name} must be numeric, got {arr.dtype} ({value!r:.60})")
    arr = arr.reshape(-1)
    want = np.dtype(spec.numpy_dtype)
    if want.kind in "iu":
        if arr.dtype.kind == "f":
            if arr.size and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
                raise ValueError(f"{spec.name} must hold integers")
        if arr.size:
            info = np.iinfo(want)
            lo, hi = arr.min(), arr.max()
            if lo < info.min or hi > info.max:
                raise ValueError(f"{spec.name} value out of range for {spec.wire_dtype}")
    arr = arr.astype(want, copy=False)
    if _is_scalar_spec(spec) and arr.size != 1:
        raise ValueError(f"{spec.name} must be a single value, got {arr.size}")
    return arr


def _scalar_or_list(spec: contract.TensorSpec, arr: np.ndarray):
    values = arr.tolist()
    return values[0] if _is_scalar_spec(spec) else values


def request_arrays(req: RecommendRequest) -> dict[str, np.ndarray]:
    """``{input name: array with the batch dim of 1}`` for the inputs that are set."""
    out = {}
    for spec in contract.PUBLIC.inputs:
        value = getattr(req, spec.name, None)
        if value is None:
            if spec.optional:
                continue
            raise ValueError(f"missing required input {spec.name}")
        arr = _as_array(spec, value)
        if spec.optional and arr.size == 0:
            continue  # an empty optional list (no exclusions) means the same as leaving it out
        out[spec.name] = arr[None, :]
    return out


def build_inputs(req: RecommendRequest) -> list:
    """``grpcclient.InferInput`` list for ``contract.PUBLIC``: names and dtypes from the contract,
    shape ``[1, n]`` (batch dim of 1); optional inputs only when set."""
    import tritonclient.grpc as grpcclient

    inputs = []
    arrays = request_arrays(req)
    for spec in contract.PUBLIC.inputs:
        if spec.name not in arrays:
            continue
        arr = arrays[spec.name]
        inp = grpcclient.InferInput(spec.name, list(arr.shape), spec.wire_dtype)
        inp.set_data_from_numpy(np.ascontiguousarray(arr))
        inputs.append(inp)
    return inputs


def requested_outputs() -> list:
    import tritonclient.grpc as grpcclient

    return [grpcclient.InferRequestedOutput(spec.name) for spec in contract.PUBLIC.outputs]


def parse_result(result, latency_ms: float = 0.0) -> Recommendation:
    """A tritonclient ``InferResult`` (anything with ``as_numpy(name)``) -> Recommendation."""
    fields = {}
    for spec in contract.REC_OUTPUTS + contract.STATUS_OUTPUTS:
        arr = result.as_numpy(spec.name)
        if arr is None:
            raise OneRankerError(f"the server's response has no output {spec.name}", "INTERNAL")
        if arr.dtype != np.dtype(spec.numpy_dtype):
            raise OneRankerError(
                f"output {spec.name} has dtype {arr.dtype}, the contract says {spec.wire_dtype}", "INTERNAL"
            )
        fields[_output_field(spec.name)] = arr.reshape(arr.shape[0], -1)[0] if arr.ndim >= 2 else arr.reshape(-1)
    # native engines pad every request of a batch to the batch's largest top_k: item id -1 marks it
    served = fields[_output_field("rec_item_ids")] >= 0
    if not served.all():
        fields = {name: value[served] for name, value in fields.items() if name in _REC_FIELDS} | {
            name: value for name, value in fields.items() if name not in _REC_FIELDS
        }
    for spec in contract.STATUS_OUTPUTS:
        fields[spec.name] = int(fields[spec.name][0])
    return Recommendation(**fields, latency_ms=latency_ms)


def _coerce_request(req: RecommendRequest | Mapping[str, Any]) -> RecommendRequest:
    return req if isinstance(req, RecommendRequest) else RecommendRequest.from_json(req)
