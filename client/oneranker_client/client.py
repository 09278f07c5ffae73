"""Python client of the public ``oneranker`` model served by Triton over gRPC (torch-free).

Only ``tritonclient[grpc]`` and ``numpy`` are needed (``tqdm`` for progress bars when installed).
Every tensor name and dtype comes from :mod:`oneranker_client.contract` (``contract.PUBLIC``):
a :class:`RecommendRequest` has one field per public input and a :class:`Recommendation` one
field per public output (the ``rec_`` prefix dropped).

    from oneranker_client import OneRankerClient, RecommendRequest

    client = OneRankerClient("localhost:8001")
    req = RecommendRequest(user_features=[3, 1, 7, 0], item_ids=[101, 5002], actions=[1, 3],
                           timestamps=[1700000000, 1700000100], request_time=1700000200, top_k=5)
    rec = client.recommend(req)          # Recommendation(item_ids=array([...]), scores=..., ...)

Errors are raised as :class:`OneRankerError` carrying the server's message and the gRPC status
(``INVALID_ARGUMENT`` for a bad request, ``UNAVAILABLE`` when the server is down or
overloaded). Only ``UNAVAILABLE`` is retried, with exponential backoff.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from . import contract
from .defaults import DEFAULT_GRPC_URL

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "RETRYABLE_STATUSES",
    "OneRankerError",
    "RecommendRequest",
    "Recommendation",
    "build_inputs",
    "requested_outputs",
    "parse_result",
    "call_with_retries",
    "acall_with_retries",
    "backoff_delays",
    "as_oneranker_error",
    "is_healthy",
    "request_arrays",
    "OneRankerClient",
    "AsyncOneRankerClient",
]

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_S = 0.05
MAX_BACKOFF_S = 2.0
RETRYABLE_STATUSES = frozenset({"UNAVAILABLE"})
_OUTPUT_PREFIX = "rec_"

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Errors and the retry policy
# ---------------------------------------------------------------------------------------------
class OneRankerError(Exception):
    """A failed call. ``str(err)`` is the server's message; ``status`` the gRPC status name
    (``INVALID_ARGUMENT``, ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ...) or ``None`` when unknown."""

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE_STATUSES

    def to_json(self) -> dict:
        return {"error": self.message, "status": self.status}

    def __repr__(self) -> str:
        return f"OneRankerError({self.message!r}, status={self.status!r})"


def _status_name(status: Any) -> str | None:
    """``"StatusCode.UNAVAILABLE"`` / ``grpc.StatusCode.UNAVAILABLE`` -> ``"UNAVAILABLE"``."""
    if status is None:
        return None
    name = getattr(status, "name", None) or str(status)
    return name.rsplit(".", 1)[-1] or None


def as_oneranker_error(exc: BaseException) -> OneRankerError:
    """Any exception of a call (tritonclient, grpc, local validation) -> OneRankerError."""
    if isinstance(exc, OneRankerError):
        return exc
    # tritonclient.utils.InferenceServerException: message() + status(); imported lazily so that
    # this helper (and the retry policy) work without touching grpc.
    if hasattr(exc, "message") and callable(exc.message) and hasattr(exc, "status"):
        msg = exc.message() or str(exc)
        return OneRankerError(str(msg), _status_name(exc.status()))
    if hasattr(exc, "code") and hasattr(exc, "details") and callable(exc.details):  # grpc.RpcError
        return OneRankerError(str(exc.details()), _status_name(exc.code()))
    if isinstance(exc, (ValueError, TypeError)):
        return OneRankerError(str(exc), "INVALID_ARGUMENT")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return OneRankerError(str(exc) or "timed out", "DEADLINE_EXCEEDED")
    return OneRankerError(f"{type(exc).__name__}: {exc}", None)


def backoff_delays(retries: int, backoff_s: float, max_backoff_s: float = MAX_BACKOFF_S) -> list[float]:
    """Sleeps before retry 1..retries: backoff_s * 2**i, capped at max_backoff_s."""
    return [min(max_backoff_s, backoff_s * (2**i)) for i in range(max(0, int(retries)))]


def call_with_retries(
    fn: Callable[[], T],
    retries: int = DEFAULT_RETRIES,
    backoff_s: float = DEFAULT_BACKOFF_S,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``fn()``; on a retryable error (UNAVAILABLE only) try again up to ``retries`` more times
    with exponential backoff. Every failure is raised as :class:`OneRankerError`."""
    delays = backoff_delays(retries, backoff_s)
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - converted, never swallowed
            err = as_oneranker_error(exc)
            if not err.retryable or attempt >= len(delays):
                raise err from None
            sleep(delays[attempt])
            attempt += 1


async def acall_with_retries(
    fn: Callable[[], Awaitable[T]],
    retries: int = DEFAULT_RETRIES,
    backoff_s: float = DEFAULT_BACKOFF_S,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """The async twin of :func:`call_with_retries`."""
    delays = backoff_delays(retries, backoff_s)
    attempt = 0
    while True:
        try:
            return await fn()
        except Exception as exc:  # noqa: BLE001
            err = as_oneranker_error(exc)
            if not err.retryable or attempt >= len(delays):
                raise err from None
            await sleep(delays[attempt])
            attempt += 1


# ---------------------------------------------------------------------------------------------
# Request / result
# ---------------------------------------------------------------------------------------------
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


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional for the library
        return None
    return tqdm(total=total, desc=desc, unit="req", dynamic_ncols=True)


def _contract_mismatches(metadata: Mapping[str, Any] | None) -> list[str]:
    """Differences between the served model's metadata and ``contract.PUBLIC`` (names, dtypes,
    non-batch ranks)."""
    if not metadata:
        return ["no model metadata"]
    problems = []
    for kind, specs in (("inputs", contract.PUBLIC.inputs), ("outputs", contract.PUBLIC.outputs)):
        served = {t.get("name"): t for t in metadata.get(kind, [])}
        for spec in specs:
            t = served.pop(spec.name, None)
            if t is None:
                problems.append(f"{kind[:-1]} {spec.name} is not served")
                continue
            if t.get("datatype") != spec.wire_dtype:
                problems.append(f"{spec.name}: served {t.get('datatype')}, contract {spec.wire_dtype}")
            shape = [int(s) for s in t.get("shape", [])]
            if len(shape) != len(spec.dims) + 1:
                problems.append(f"{spec.name}: served shape {shape}, contract [batch] + {list(spec.dims)}")
        problems += [f"served {kind[:-1]} {name} is not in the contract" for name in served]
    return problems


# ---------------------------------------------------------------------------------------------
# Synchronous client
# ---------------------------------------------------------------------------------------------
class _ClientOptions:
    """Settings shared by the blocking and the asyncio client."""

    def __init__(
        self,
        url: str = DEFAULT_GRPC_URL,
        model: str = contract.PUBLIC_MODEL,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        backoff_s: float = DEFAULT_BACKOFF_S,
        verbose: bool = False,
    ):
        self.url, self.model = url, model
        self.timeout_s = timeout_s
        self.retries, self.backoff_s = int(retries), float(backoff_s)
        self._verbose = verbose


class OneRankerClient(_ClientOptions):
    """Blocking gRPC client of the public model. Thread-safe (one channel shared by threads)."""

    def __init__(self, *args, **kwargs):
        import tritonclient.grpc as grpcclient

        super().__init__(*args, **kwargs)
        try:
            self._client = grpcclient.InferenceServerClient(url=self.url, verbose=self._verbose)
        except Exception as exc:  # noqa: BLE001 - e.g. a malformed url
            raise as_oneranker_error(exc) from None
        self._outputs = requested_outputs()

    # -- plumbing ----------------------------------------------------------------------------
    def _call(self, fn: Callable[[], T]) -> T:
        return call_with_retries(fn, self.retries, self.backoff_s)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OneRankerClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- API ---------------------------------------------------------------------------------
    def recommend_inputs(self, inputs: Sequence) -> Recommendation:
        """Send already built inputs (see :func:`build_inputs`); for load generators that build
        them once."""
        t0 = time.perf_counter()
        result = self._call(
            lambda: self._client.infer(self.model, list(inputs), outputs=self._outputs, client_timeout=self.timeout_s)
        )
        latency_ms = (time.perf_counter() - t0) * 1e3
        return parse_result(result, latency_ms)

    def recommend(self, req: RecommendRequest | Mapping[str, Any]) -> Recommendation:
        """Top-k for one request; raises :class:`OneRankerError`."""
        try:
            inputs = build_inputs(_coerce_request(req))
        except (ValueError, TypeError) as exc:
            raise as_oneranker_error(exc) from None
        return self.recommend_inputs(inputs)

    def recommend_many(
        self,
        reqs: Iterable[RecommendRequest | Mapping[str, Any]],
        concurrency: int = 4,
        progress: bool = True,
    ) -> list[Recommendation | OneRankerError]:
        """All requests through a pool of ``concurrency`` threads; results in input order, a
        failed request yields its :class:`OneRankerError` in place (nothing is raised)."""
        reqs = list(reqs)
        results: list[Recommendation | OneRankerError | None] = [None] * len(reqs)

        def one(i: int):
            try:
                results[i] = self.recommend(reqs[i])
            except Exception as exc:  # noqa: BLE001 - kept in place, never raised
                results[i] = as_oneranker_error(exc)

        bar = _progress(len(reqs), progress, "oneranker")
        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, int(concurrency))) as pool:
                for fut in concurrent.futures.as_completed([pool.submit(one, i) for i in range(len(reqs))]):
                    fut.result()
                    if bar is not None:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return results  # type: ignore[return-value]

    def health(self) -> dict:
        """Server live/ready, model ready, server and model metadata, and how the served model's
        metadata compares with ``contract.PUBLIC`` (``contract_mismatches``, empty when equal).
        Raises :class:`OneRankerError` when the server cannot be reached."""
        c, t = self._client, self.timeout_s
        live = self._call(lambda: c.is_server_live(client_timeout=t))
        ready = self._call(lambda: c.is_server_ready(client_timeout=t))
        server = self._call(lambda: c.get_server_metadata(as_json=True, client_timeout=t))
        model_ready = self._call(lambda: c.is_model_ready(self.model, client_timeout=t))
        metadata = None
        if model_ready:
            metadata = self._call(lambda: c.get_model_metadata(self.model, as_json=True, client_timeout=t))
        return _health_dict(self, live, ready, server, model_ready, metadata)


def _health_dict(client, live, ready, server, model_ready, metadata) -> dict:
    return {
        "url": client.url,
        "server_live": bool(live),
        "server_ready": bool(ready),
        "server": {"name": server.get("name"), "version": server.get("version")} if server else None,
        "model": client.model,
        "model_ready": bool(model_ready),
        "model_versions": list(metadata.get("versions", [])) if metadata else [],
        "metadata": metadata,
        "contract_mismatches": _contract_mismatches(metadata) if model_ready else [],
    }


def is_healthy(health: Mapping[str, Any]) -> bool:
    return bool(health.get("server_live") and health.get("server_ready") and health.get("model_ready"))


# ---------------------------------------------------------------------------------------------
# asyncio client
# ---------------------------------------------------------------------------------------------
class AsyncOneRankerClient(_ClientOptions):
    """The same API on ``tritonclient.grpc.aio`` (coroutines). The channel is opened lazily
    inside the running event loop; close it with ``await client.close()`` or ``async with``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._client = None
        self._outputs = None

    def _aio(self):
        if self._client is None:
            import tritonclient.grpc.aio as aioclient

            try:
                self._client = aioclient.InferenceServerClient(url=self.url, verbose=self._verbose)
            except Exception as exc:  # noqa: BLE001
                raise as_oneranker_error(exc) from None
            self._outputs = requested_outputs()
        return self._client

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        return await acall_with_retries(fn, self.retries, self.backoff_s)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def __aenter__(self) -> AsyncOneRankerClient:
        self._aio()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def recommend_inputs(self, inputs: Sequence) -> Recommendation:
        c = self._aio()
        t0 = time.perf_counter()
        result = await self._call(
            lambda: c.infer(self.model, list(inputs), outputs=self._outputs, client_timeout=self.timeout_s)
        )
        return parse_result(result, (time.perf_counter() - t0) * 1e3)

    async def recommend(self, req: RecommendRequest | Mapping[str, Any]) -> Recommendation:
        try:
            inputs = build_inputs(_coerce_request(req))
        except (ValueError, TypeError) as exc:
            raise as_oneranker_error(exc) from None
        return await self.recommend_inputs(inputs)

    async def recommend_many(
        self,
        reqs: Iterable[RecommendRequest | Mapping[str, Any]],
        concurrency: int = 4,
        progress: bool = False,
    ) -> list[Recommendation | OneRankerError]:
        """At most ``concurrency`` requests in flight (a semaphore); results in input order,
        failures as :class:`OneRankerError` in place."""
        reqs = list(reqs)
        sem = asyncio.Semaphore(max(1, int(concurrency)))
        bar = _progress(len(reqs), progress, "oneranker")

        async def one(req):
            async with sem:
                try:
                    return await self.recommend(req)
                except Exception as exc:  # noqa: BLE001
                    return as_oneranker_error(exc)
                finally:
                    if bar is not None:
                        bar.update(1)

        try:
            return list(await asyncio.gather(*(one(r) for r in reqs)))
        finally:
            if bar is not None:
                bar.close()

    async def health(self) -> dict:
        c, t = self._aio(), self.timeout_s
        live = await self._call(lambda: c.is_server_live(client_timeout=t))
        ready = await self._call(lambda: c.is_server_ready(client_timeout=t))
        server = await self._call(lambda: c.get_server_metadata(as_json=True, client_timeout=t))
        model_ready = await self._call(lambda: c.is_model_ready(self.model, client_timeout=t))
        metadata = None
        if model_ready:
            metadata = await self._call(lambda: c.get_model_metadata(self.model, as_json=True, client_timeout=t))
        return _health_dict(self, live, ready, server, model_ready, metadata)
