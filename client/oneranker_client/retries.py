"""Errors and the retry policy of the ``oneranker`` client (torch-free, no grpc import).

A call of :class:`~oneranker_client.client.OneRankerClient` runs as ``fn(attempt_timeout)`` inside
:func:`call_with_retries` (:func:`acall_with_retries` for the asyncio client): every attempt gets
the time left before the call's deadline as its gRPC deadline, every failure is converted by
:func:`as_oneranker_error` into a :class:`OneRankerError` (server message + gRPC status name), and
that error decides whether the call is sent again (after a full-jitter sleep, if the deadline and
the client's :class:`RetryBudget` allow) or raised to the caller.

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
import math
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .defaults import (
    DEFAULT_BACKOFF_S,
    DEFAULT_RETRIES,
    MAX_BACKOFF_S,
    RETRY_BUDGET_MIN_PER_S,
    RETRY_BUDGET_RATIO,
    RETRY_BUDGET_TOKENS,
)

__all__ = [
    "RETRYABLE_STATUSES",
    "OneRankerError",
    "RetryBudget",
    "acall_with_retries",
    "as_oneranker_error",
    "backoff_ceiling",
    "call_with_retries",
    "full_jitter_delay",
]

RETRYABLE_STATUSES = frozenset({"UNAVAILABLE"})
# Triton's refusal of a restricted API (gRPC: UNAVAILABLE "This protocol is restricted, expecting
# header '...'"; HTTP 403 "This API is restricted, ...").
_RESTRICTED_RE = re.compile(r"is restricted, expecting header", re.IGNORECASE)

T = TypeVar("T")


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
