"""Prometheus counters of a Python model, summed in the stub and sent to Triton from one thread.

Each `pb_utils.Metric.increment` is an IPC round trip to the server (34-57 us on 2 cores,
perf/results/backend_ipc) during which the stub holds the GIL. A batch has four counters (five on
the numpy beam search paths, with `select`); sent from `execute`, their round trips sit in front
of the next request at concurrency 1. Here `execute` only adds to in-process sums (no IPC), and a
daemon thread sends each counter's sum once, `interval_s` after the first increment it holds
arrived. Under traffic the counters cost one round trip each per interval instead of per batch; a
scrape lags the answers by at most `interval_s` plus the sending itself (and the thread's wait for
the GIL).

    execute:  counters.add([(metric, value), ...])     sums, wakes the thread
    thread:   wait for a sum -> sleep interval_s -> metric.increment(sum) for each nonzero sum
    finalize: counters.close()                          stops the thread, sends what is left

A model thread may send these messages: the stub releases the GIL while it waits for the next
request and `execute` releases it inside the engine calls, so the thread runs between requests or
beside one, and the stub serialises its messages to the server (the same path the response
senders of decoupled models take from model threads). Only that one thread sends, and `close`
sends after it has stopped. With `interval_s` 0 there is no thread and `add` sends at once (unit
tests, and a model that wants it).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable

# How long a counter increment may wait in the stub before it is sent (render setting
# `counter_interval_ms`): under steady traffic, one send of each counter per interval. Long enough
# that a send (four or five round trips with the GIL held) lands on few requests (at concurrency 1,
# ~400 req/s here: 1 in 200, under the 1% a p99 sees), short against a Prometheus scrape interval
# (15 s by default).
DEFAULT_INTERVAL_MS = 500


class DeferredCounters:
    """Counter increments summed per metric and sent by a background thread (module docstring).
    `on_error(message)` hears of increments that failed; they are dropped, never raised."""

    def __init__(self, interval_s: float, on_error: Callable[[str], None]):
        self.interval_s = float(interval_s)
        self.on_error = on_error
        self._sums: dict[int, list] = {}  # id(metric) -> [metric, pending sum]
        self._lock = threading.Lock()
        self._pending = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        if self.interval_s > 0:
            self._thread = threading.Thread(target=self._send_loop, name="oneranker-counters", daemon=True)
            self._thread.start()

    def add(self, increments: Iterable[tuple[object, float]]) -> None:
        """Adds each (metric, value) to its pending sum (a zero value is skipped); no IPC unless
        `interval_s` is 0."""
        with self._lock:
            for metric, value in increments:
                if value:
                    entry = self._sums.setdefault(id(metric), [metric, 0.0])
                    entry[1] += float(value)
        if self._thread is None:
            self.flush()
        else:
            self._pending.set()

    def flush(self) -> None:
        """Sends every pending sum now (one increment per metric)."""
        with self._lock:
            sums, self._sums = self._sums, {}
        failures = []
        for metric, value in sums.values():
            try:
                metric.increment(value)
            except Exception as err:  # noqa: BLE001 - counters must never fail the model
                failures.append(err)
        if failures:
            message = f"oneranker: {len(failures)} of {len(sums)} counters not updated: {failures[0]!r}"
            try:
                self.on_error(message)
            except Exception:  # noqa: BLE001 - the logger is IPC too; the sender thread must live on
                print(message, file=sys.stderr)

    def close(self) -> None:
        """Stops the thread and sends what is pending (the model's finalize)."""
        self._closing.set()
        self._pending.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()

    def _send_loop(self) -> None:
        # `close` sets _closing, then _pending: checked here, the loop ends even when the clear
        # below swallowed close's wake-up
        while not self._closing.is_set():
            self._pending.wait()
            if self._closing.wait(self.interval_s):
                return
            # cleared before the swap in flush: an add after this point sets it again and its
            # sum goes out now or one interval later, never lost
            self._pending.clear()
            self.flush()
