"""DeferredCounters: the fused model's Prometheus counters, summed in the stub and sent by one
thread (each send is an IPC round trip in Triton)."""

from __future__ import annotations

import threading
import time

from oneranker_serving.triton.counters import DeferredCounters


class Metric:
    def __init__(self, fail: bool = False):
        self.value, self.sends, self.fail = 0.0, 0, fail

    def increment(self, value):
        self.sends += 1
        if self.fail:
            raise RuntimeError("metrics IPC failed")
        self.value += value


def test_without_an_interval_each_add_is_sent_at_once_and_zero_values_never():
    a, b = Metric(), Metric()
    counters = DeferredCounters(0, on_error=print)
    counters.add([(a, 2.0), (b, 0.0)])
    counters.add([(a, 0.5)])
    assert (a.value, a.sends, b.sends) == (2.5, 2, 0)


def test_a_failing_counter_is_reported_once_per_send_and_the_others_still_go_out():
    broken, fine, errors = Metric(fail=True), Metric(), []
    counters = DeferredCounters(0, on_error=errors.append)
    counters.add([(broken, 1.0), (fine, 3.0)])
    assert fine.value == 3.0 and len(errors) == 1 and "1 of 2 counters" in errors[0] and "IPC failed" in errors[0]


def test_no_increment_is_lost_while_the_thread_sends_concurrently():
    """Four threads add 1.0 500 times each while the sender flushes every millisecond: after
    close() the counter holds exactly 2000, in fewer sends than adds."""
    metric = Metric()
    counters = DeferredCounters(0.001, on_error=print)

    def adder():
        for _ in range(500):
            counters.add([(metric, 1.0)])

    threads = [threading.Thread(target=adder) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counters.close()
    assert metric.value == 2000.0 and metric.sends < 2000


def test_close_stops_a_sleeping_sender_at_once_and_sends_what_is_pending():
    metric = Metric()
    counters = DeferredCounters(3600, on_error=print)  # an hour: only close() can send
    counters.add([(metric, 7.0)])
    counters.close()
    assert (metric.value, metric.sends) == (7.0, 1) and not counters._thread.is_alive()


def test_the_sender_thread_outlives_a_failing_counter_and_a_failing_logger():
    """A send whose counter fails and whose error logger fails too (in Triton both are IPC) must
    not end the thread: a later add still goes out without close()."""
    broken, later = Metric(fail=True), Metric()

    def failing_logger(message):
        raise RuntimeError("logger IPC failed")

    counters = DeferredCounters(0.01, on_error=failing_logger)
    counters.add([(broken, 1.0)])
    deadline = time.monotonic() + 5
    while broken.sends == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    counters.add([(later, 2.0)])
    while later.value == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert later.value == 2.0 and counters._thread.is_alive()
    counters.close()
