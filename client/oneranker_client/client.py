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

The request and response messages and their tensor form live in :mod:`oneranker_client.messages`,
the errors, deadline, retries and retry budget in :mod:`oneranker_client.retries`; this module
holds the blocking and the asyncio client that put them together, and the control-plane helpers
(health, model config, the served example request). Every name of those two modules listed in
``__all__`` below is importable from here too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from . import contract, restricted_api
from .defaults import (
    DEFAULT_BACKOFF_S,
    DEFAULT_DEADLINE_S,
    DEFAULT_GRPC_URL,
    DEFAULT_RETRIES,
    MAX_BACKOFF_S,
)
from .messages import (
    Recommendation,
    RecommendRequest,
    _coerce_request,
    build_inputs,
    parse_result,
    request_arrays,
    requested_outputs,
)
from .retries import (
    RETRYABLE_STATUSES,
    OneRankerError,
    RetryBudget,
    acall_with_retries,
    as_oneranker_error,
    backoff_ceiling,
    call_with_retries,
    full_jitter_delay,
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
# Name of the model-config string parameter holding a valid example request (a JSON object with
# the RecommendRequest fields), rendered by `oneranker build` for the served release.
EXAMPLE_REQUEST_PARAMETER = "example_request"

T = TypeVar("T")


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
