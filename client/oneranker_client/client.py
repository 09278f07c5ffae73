"""Python client of the public ``oneranker`` model served by Triton over gRPC (torch-free).

Only ``tritonclient[grpc]`` and ``numpy`` are needed (``tqdm`` for progress bars when installed).
Every tensor name and dtype comes from :mod:`oneranker_client.contract` (``contract.PUBLIC``):
a :class:`RecommendRequest` has one field per public input and a :class:`Recommendation` one
field per public output (the ``rec_`` prefix dropped).

    from oneranker_client import OneRankerClient, RecommendRequest

    client = OneRankerClient("localhost:8001")          # deadline 1.0 s a call, retries included
    req = RecommendRequest(user_features=[3, 1, 5, 22], item_ids=[900012, 100007, 100042],
                           actions=[1, 2, 3], timestamps=[1700000000, 1700000100, 1700000200],
                           request_time=1700000300, top_k=5)
    rec = client.recommend(req)   # Recommendation(item_ids=array([...]), scores=..., model_version=...)

(Ids of the quickstart model: ads 100000.., contents 900000..; user_features = 3 profile values
in [0, 8) then the hour-of-day bucket of request_time; actions 1 content view, 2-4 ad funnel.)

Errors are raised as :class:`OneRankerError` carrying the server's message and the gRPC status
(``INVALID_ARGUMENT`` for a bad request, ``UNAVAILABLE`` when the server is down or sheds load,
``DEADLINE_EXCEEDED`` when the call's deadline passed).

Deadline, retries, retry budget
-------------------------------
* **Deadline.** A call (``recommend``, ``health``'s probes, ...) has one deadline, ``timeout_s``
  (default :data:`~oneranker_client.defaults.DEFAULT_DEADLINE_S` = 1.0 s, the reasoning is in
  ``defaults.py``), that covers every attempt and every backoff sleep. Each attempt is sent with
  the time left as its gRPC deadline (``client_timeout``), so the server cancels work nobody waits
  for. A passed deadline surfaces as ``OneRankerError`` with status ``DEADLINE_EXCEEDED``. The
  client never sleeps past the deadline: when the next backoff would end after it, the last error
  is raised at once. ``timeout_s=None`` means no deadline (retries are bounded by their count).
* **What is retried.** Only ``UNAVAILABLE`` (:data:`RETRYABLE_STATUSES`): the connection failed
  or the server shed the request before running it, and inference is read-only, so sending it
  again is safe. Never ``DEADLINE_EXCEEDED`` (the deadline is the caller's whole budget: there is
  no time left for another try), ``INVALID_ARGUMENT`` (the same request fails the same way),
  ``INTERNAL`` (may fail the same way; not ours to hammer), ``CANCELLED`` (someone gave up on
  it), or any other status. A refusal of a restricted API (Triton answers ``UNAVAILABLE`` with
  "... is restricted, expecting header ...") is not retried either: the same key is refused again.
* **Full-jitter backoff** (AWS Architecture Blog, "Exponential Backoff And Jitter"): the sleep
  before retry ``n`` (0-based) is ``uniform(0, min(max_backoff_s, backoff_s * 2**n))``. Without
  jitter every client that saw the same overload retries in lockstep and hits the server again
  as one wave.
* **Retry budget** (:class:`RetryBudget`, one per client instance, shared by its threads or
  tasks; gRPC's retry throttling, Finagle's RetryBudget): a token bucket that starts with 10
  tokens; a retry spends one, a successful call deposits 0.1, and 1 token a second trickles back
  (the floor). So sustained retries add at most ~10% to the successful request rate: when the
  server sheds load and most calls fail, the tokens run out and the client stops retrying instead
  of multiplying the load by ``1 + retries``. The first attempt of a call is never held back.

``rng``, ``sleep`` and ``clock`` of :func:`call_with_retries` are injectable (tests: seeded
``random.Random``, a fake clock).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import math
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from . import contract, restricted_api
from .defaults import (
    DEFAULT_BACKOFF_S,
    DEFAULT_DEADLINE_S,
    DEFAULT_GRPC_URL,
    DEFAULT_RETRIES,
    MAX_BACKOFF_S,
    RETRY_BUDGET_MIN_PER_S,
    RETRY_BUDGET_RATIO,
    RETRY_BUDGET_TOKENS,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_DEADLINE_S",
    "RETRYABLE_STATUSES",
    "EXAMPLE_REQUEST_PARAMETER",
    "OneRankerError",
    "RetryBudget",
    "RecommendRequest",
    "Recommendation",
    "build_inputs",
    "requested_outputs",
    "parse_result",
    "call_with_retries",
    "acall_with_retries",
    "backoff_ceiling",
    "full_jitter_delay",
    "as_oneranker_error",
    "is_healthy",
    "request_arrays",
    "admin_grpc_headers",
    "example_request_from_config",
    "OneRankerClient",
    "AsyncOneRankerClient",
]

DEFAULT_TIMEOUT_S = DEFAULT_DEADLINE_S  # the name the client options use (timeout_s)
RETRYABLE_STATUSES = frozenset({"UNAVAILABLE"})
# Name of the model-config string parameter holding a valid example request (a JSON object with
# the RecommendRequest fields), rendered by `oneranker build` for the served release.
EXAMPLE_REQUEST_PARAMETER = "example_request"
_OUTPUT_PREFIX = "rec_"
# Triton's refusal of a restricted API (gRPC: UNAVAILABLE "This protocol is restricted, expecting
# header '...'"; HTTP 403 "This API is restricted, ...").
_RESTRICTED_RE = re.compile(r"is restricted, expecting header", re.IGNORECASE)

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Errors and the retry policy
# ---------------------------------------------------------------------------------------------
class OneRankerError(Exception):
    """A failed call. ``str(err)`` is the server's message; ``status`` the gRPC status name
    (``INVALID_ARGUMENT``, ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``, ...) or ``None`` when unknown;
    ``attempts`` how many times the call was sent."""

    def __init__(self, message: str, status: str | None = None, attempts: int = 1):
        super().__init__(message)
        self.message = message
        self.status = status
        self.attempts = attempts

    @property
    def restricted(self) -> bool:
        """The server refused a restricted API (model config, repository, ...): the admin key is
        missing or wrong."""
        return self.status in ("UNAVAILABLE", "PERMISSION_DENIED") and bool(_RESTRICTED_RE.search(self.message))

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE_STATUSES and not self.restricted

    def to_json(self) -> dict:
        return {"error": self.message, "status": self.status}

    def __repr__(self) -> str:
        return f"OneRankerError({self.message!r}, status={self.status!r}, attempts={self.attempts})"


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


def backoff_ceiling(attempt: int, backoff_s: float = DEFAULT_BACKOFF_S, max_backoff_s: float = MAX_BACKOFF_S) -> float:
    """The largest sleep before retry ``attempt`` (0-based): ``min(max_backoff_s, backoff_s * 2**attempt)``."""
    return min(float(max_backoff_s), float(backoff_s) * 2.0 ** min(int(attempt), 62))


def full_jitter_delay(
    attempt: int,
    rng: random.Random,
    backoff_s: float = DEFAULT_BACKOFF_S,
    max_backoff_s: float = MAX_BACKOFF_S,
) -> float:
    """Full jitter: ``uniform(0, backoff_ceiling(attempt))``."""
    return rng.uniform(0.0, backoff_ceiling(attempt, backoff_s, max_backoff_s))


class RetryBudget:
    """Token bucket that bounds the retries of one client (shared by its threads and tasks).

    Starts full with ``tokens`` tokens (at most that many are ever held). A retry spends one token
    (:meth:`try_spend`; no token, no retry); a successful call deposits ``ratio``
    (:meth:`on_success`), so sustained retries add at most ``ratio`` to the successful request
    rate; ``min_per_s`` tokens a second trickle back whatever happens (the floor). The first
    attempt of a call never needs a token. ``clock`` is injectable (tests).
    """

    def __init__(
        self,
        tokens: float = RETRY_BUDGET_TOKENS,
        ratio: float = RETRY_BUDGET_RATIO,
        min_per_s: float = RETRY_BUDGET_MIN_PER_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        if tokens < 0 or ratio < 0 or min_per_s < 0:
            raise ValueError("RetryBudget: tokens, ratio and min_per_s must be >= 0")
        self.capacity, self.ratio, self.min_per_s = float(tokens), float(ratio), float(min_per_s)
        self._clock = clock
        self._tokens = self.capacity
        self._last = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        if now > self._last:
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.min_per_s)
        self._last = now

    @property
    def tokens(self) -> float:
        with self._lock:
            self._refill()
            return self._tokens

    def try_spend(self) -> bool:
        """Take one token for a retry; False (and nothing taken) when less than one is left."""
        with self._lock:
            self._refill()
            if self._tokens >= 1.0 - 1e-9:  # 10 deposits of 0.1 sum to 0.999...9: that is one token
                self._tokens = max(0.0, self._tokens - 1.0)
                return True
            return False

    def on_success(self) -> None:
        with self._lock:
            self._refill()
            self._tokens = min(self.capacity, self._tokens + self.ratio)

    def __repr__(self) -> str:
        return (
            f"RetryBudget(tokens={self.tokens:.2f}/{self.capacity:g}, ratio={self.ratio:g}, "
            f"min_per_s={self.min_per_s:g})"
        )


_DEFAULT_RNG = random.Random()


class _Attempts:
    """The bookkeeping of one call shared by the blocking and the asyncio retry loop."""

    def __init__(self, timeout_s, retries, backoff_s, max_backoff_s, budget, rng, clock):
        self.retries, self.backoff_s, self.max_backoff_s = max(0, int(retries)), float(backoff_s), max_backoff_s
        self.budget, self.rng, self.clock = budget, rng if rng is not None else _DEFAULT_RNG, clock
        if timeout_s is not None and not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s)):
            raise ValueError(f"timeout_s must be a finite number of seconds or None, got {timeout_s!r}")
        self.deadline = None if timeout_s is None else clock() + float(timeout_s)
        self.timeout_s = timeout_s
        self.attempt = 0  # attempts sent so far

    def next_timeout(self) -> float | None:
        """The gRPC deadline of the next attempt: the time left (None: no deadline)."""
        self.attempt += 1
        if self.deadline is None:
            return None
        left = self.deadline - self.clock()
        if left <= 0:
            raise OneRankerError(f"deadline of {self.timeout_s:g} s exceeded", "DEADLINE_EXCEEDED", self.attempt - 1)
        return left

    def retry_delay(self, exc: BaseException) -> tuple[OneRankerError, float | None]:
        """The failure as OneRankerError, and the sleep before the next attempt (None: raise it)."""
        err = as_oneranker_error(exc)
        err.attempts = self.attempt
        if not err.retryable or self.attempt > self.retries:
            return err, None
        delay = full_jitter_delay(self.attempt - 1, self.rng, self.backoff_s, self.max_backoff_s)
        if self.deadline is not None and self.clock() + delay >= self.deadline:
            return err, None  # the next attempt would start after the deadline: give up now
        if self.budget is not None and not self.budget.try_spend():
            return err, None  # retry budget spent: the server is shedding load, do not add to it
        return err, delay

    def succeeded(self) -> None:
        if self.budget is not None:
            self.budget.on_success()


def call_with_retries(
    fn: Callable[[float | None], T],
    retries: int = DEFAULT_RETRIES,
    backoff_s: float = DEFAULT_BACKOFF_S,
    sleep: Callable[[float], None] = time.sleep,
    *,
    timeout_s: float | None = None,
    max_backoff_s: float = MAX_BACKOFF_S,
    budget: RetryBudget | None = None,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``fn(attempt_timeout)`` until it succeeds or fails for good (module docstring: "Deadline,
    retries, retry budget"). ``attempt_timeout`` is the time left before the call's deadline
    (``timeout_s`` from now; None without one): pass it as the attempt's gRPC deadline. On a
    retryable error (UNAVAILABLE) ``fn`` runs again, at most ``retries`` more times, after a
    full-jitter sleep, while the deadline leaves time and ``budget`` has a token. Every failure is
    raised as :class:`OneRankerError` (``attempts`` set)."""
    state = _Attempts(timeout_s, retries, backoff_s, max_backoff_s, budget, rng, clock)
    while True:
        t = state.next_timeout()
        try:
            result = fn(t)
        except Exception as exc:  # noqa: BLE001 - converted, never swallowed
            err, delay = state.retry_delay(exc)
            if delay is None:
                raise err from None
            sleep(delay)
            continue
        state.succeeded()
        return result


async def acall_with_retries(
    fn: Callable[[float | None], Awaitable[T]],
    retries: int = DEFAULT_RETRIES,
    backoff_s: float = DEFAULT_BACKOFF_S,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    *,
    timeout_s: float | None = None,
    max_backoff_s: float = MAX_BACKOFF_S,
    budget: RetryBudget | None = None,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """The async twin of :func:`call_with_retries` (``fn(attempt_timeout)`` returns an awaitable)."""
    state = _Attempts(timeout_s, retries, backoff_s, max_backoff_s, budget, rng, clock)
    while True:
        t = state.next_timeout()
        try:
            result = await fn(t)
        except Exception as exc:  # noqa: BLE001
            err, delay = state.retry_delay(exc)
            if delay is None:
                raise err from None
            await sleep(delay)
            continue
        state.succeeded()
        return result


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
    """Settings shared by the blocking and the asyncio client.

    ``timeout_s``: the deadline of each call, retries included (None: none); ``retries``: the
    most retries of one call (UNAVAILABLE only); ``backoff_s``/``max_backoff_s``: the full-jitter
    backoff; ``retry_budget``: the :class:`RetryBudget` of this client (a fresh one by default;
    pass one to share it between clients); ``admin_key``: sent (only) with the restricted
    control-plane calls such as :meth:`model_config`; ``rng``: the jitter's random source."""

    def __init__(
        self,
        url: str = DEFAULT_GRPC_URL,
        model: str = contract.PUBLIC_MODEL,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        backoff_s: float = DEFAULT_BACKOFF_S,
        verbose: bool = False,
        *,
        max_backoff_s: float = MAX_BACKOFF_S,
        retry_budget: RetryBudget | None = None,
        admin_key: str | None = None,
        rng: random.Random | None = None,
    ):
        if timeout_s is not None and not (isinstance(timeout_s, (int, float)) and 0 < timeout_s < math.inf):
            raise ValueError(f"timeout_s must be > 0 seconds (or None for no deadline), got {timeout_s!r}")
        self.url, self.model = url, model
        self.timeout_s = timeout_s
        self.retries, self.backoff_s, self.max_backoff_s = int(retries), float(backoff_s), float(max_backoff_s)
        self.retry_budget = retry_budget if retry_budget is not None else RetryBudget()
        self.admin_key = admin_key or None
        self._rng = rng if rng is not None else random.Random()
        self._verbose = verbose

    def _retry_kwargs(self) -> dict:
        return {
            "retries": self.retries,
            "backoff_s": self.backoff_s,
            "timeout_s": self.timeout_s,
            "max_backoff_s": self.max_backoff_s,
            "budget": self.retry_budget,
            "rng": self._rng,
        }

    def _admin_headers(self) -> dict | None:
        return admin_grpc_headers(self.admin_key) if self.admin_key else None


def admin_grpc_headers(key: str) -> dict[str, str]:
    """gRPC metadata that opens the restricted APIs of a server started with admin key ``key``."""
    return restricted_api.grpc_headers(key)


def example_request_from_config(config: Mapping[str, Any], model: str = contract.PUBLIC_MODEL) -> RecommendRequest:
    """The example request a model config carries (string parameter ``example_request``, a JSON
    object with the RecommendRequest fields). ``config``: the ``config`` object of
    ``get_model_config(as_json=True)`` (the whole answer is accepted too). OneRankerError
    ``NOT_FOUND`` when the config has none (a repository rendered before the parameter existed),
    ``INTERNAL`` when it is not a valid request."""
    config = config.get("config", config) if isinstance(config, Mapping) else {}
    param = (config.get("parameters") or {}).get(EXAMPLE_REQUEST_PARAMETER)
    text = param.get("string_value") if isinstance(param, Mapping) else param
    if not text:
        raise OneRankerError(
            f"model {config.get('name') or model}'s config has no parameter {EXAMPLE_REQUEST_PARAMETER!r} "
            "(a repository rendered before it existed: run `oneranker build` again)",
            "NOT_FOUND",
        )
    try:
        return RecommendRequest.from_json(json.loads(text))
    except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
        raise OneRankerError(
            f"the served {EXAMPLE_REQUEST_PARAMETER} is not a valid request: {e}", "INTERNAL"
        ) from None


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
    def _call(self, fn: Callable[[float | None], T]) -> T:
        """``fn(attempt_timeout)`` under this client's deadline, retry policy and budget."""
        return call_with_retries(fn, **self._retry_kwargs())

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
            lambda t: self._client.infer(self.model, list(inputs), outputs=self._outputs, client_timeout=t)
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
        c = self._client
        live = self._call(lambda t: c.is_server_live(client_timeout=t))
        ready = self._call(lambda t: c.is_server_ready(client_timeout=t))
        server = self._call(lambda t: c.get_server_metadata(as_json=True, client_timeout=t))
        model_ready = self._call(lambda t: c.is_model_ready(self.model, client_timeout=t))
        metadata = None
        if model_ready:
            metadata = self._call(lambda t: c.get_model_metadata(self.model, as_json=True, client_timeout=t))
        return _health_dict(self, live, ready, server, model_ready, metadata)

    def model_config(self) -> dict:
        """The served model's config (the version the server picks), as JSON. A restricted API on
        a server started with an admin key: give the client ``admin_key``; a refusal raises
        OneRankerError with ``restricted`` True."""
        c, headers = self._client, self._admin_headers()
        answer = self._call(lambda t: c.get_model_config(self.model, headers=headers, as_json=True, client_timeout=t))
        return dict(answer.get("config", answer))

    def example_request(self) -> RecommendRequest:
        """A valid request for the served release (its config's ``example_request``)."""
        return example_request_from_config(self.model_config(), self.model)


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

    async def _call(self, fn: Callable[[float | None], Awaitable[T]]) -> T:
        return await acall_with_retries(fn, **self._retry_kwargs())

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
        result = await self._call(lambda t: c.infer(self.model, list(inputs), outputs=self._outputs, client_timeout=t))
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
        c = self._aio()
        live = await self._call(lambda t: c.is_server_live(client_timeout=t))
        ready = await self._call(lambda t: c.is_server_ready(client_timeout=t))
        server = await self._call(lambda t: c.get_server_metadata(as_json=True, client_timeout=t))
        model_ready = await self._call(lambda t: c.is_model_ready(self.model, client_timeout=t))
        metadata = None
        if model_ready:
            metadata = await self._call(lambda t: c.get_model_metadata(self.model, as_json=True, client_timeout=t))
        return _health_dict(self, live, ready, server, model_ready, metadata)

    async def model_config(self) -> dict:
        c, headers = self._aio(), self._admin_headers()
        answer = await self._call(
            lambda t: c.get_model_config(self.model, headers=headers, as_json=True, client_timeout=t)
        )
        return dict(answer.get("config", answer))

    async def example_request(self) -> RecommendRequest:
        return example_request_from_config(await self.model_config(), self.model)
