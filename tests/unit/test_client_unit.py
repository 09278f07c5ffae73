"""The client, its CLI and the perf input writers without a server (fast, torch-free paths)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import random
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from oneranker_client import cli, contract
from oneranker_client.client import (
    OneRankerError,
    Recommendation,
    RecommendRequest,
    RetryBudget,
    acall_with_retries,
    admin_grpc_headers,
    as_oneranker_error,
    backoff_ceiling,
    build_inputs,
    call_with_retries,
    full_jitter_delay,
    parse_result,
)
from oneranker_client.restricted_api import ADMIN_KEY_ENV, ADMIN_KEY_HEADER
from oneranker_client.restricted_api import GRPC_HEADER_PREFIX as GRPC_RESTRICTED_HEADER_PREFIX

ROOT = Path(__file__).resolve().parents[2]

REQ = {
    "user_features": [3, 1, 7, 0],
    "item_ids": [101, 5002, 77],
    "actions": [1, 2, 3],
    "timestamps": [1700000000, 1700000100, 1700000200],
    "request_time": 1700000300,
}
FULL = dict(REQ, top_k=5, num_candidates=32, beam_width=8, exclude_item_ids=[9, 10])


# ---------------------------------------------------------------------------------------------
# build_inputs follows contract.PUBLIC
# ---------------------------------------------------------------------------------------------
def test_request_fields_are_the_public_inputs():
    assert RecommendRequest.field_names() == tuple(s.name for s in contract.PUBLIC.inputs)
    rec_fields = [f.name for f in dataclasses.fields(Recommendation) if f.name != "latency_ms"]
    n_rec = len(contract.REC_OUTPUTS)
    assert ["rec_" + f for f in rec_fields[:n_rec]] == [s.name for s in contract.REC_OUTPUTS]
    assert rec_fields[n_rec:] == [s.name for s in contract.STATUS_OUTPUTS]
    assert contract.PUBLIC.outputs == contract.REC_OUTPUTS + contract.STATUS_OUTPUTS


def test_build_inputs_all_set_matches_contract():
    inputs = build_inputs(RecommendRequest.from_json(FULL))
    assert [i.name() for i in inputs] == [s.name for s in contract.PUBLIC.inputs]
    for inp in inputs:
        spec = contract.PUBLIC.input(inp.name())
        assert inp.datatype() == spec.wire_dtype
        value = FULL[spec.name]
        n = 1 if not isinstance(value, list) else len(value)
        assert inp.shape() == [1, n], (spec.name, inp.shape())  # batch dim of 1
        assert len(inp.shape()) == len(spec.dims) + 1
        # the raw bytes are the value in the contract's dtype
        raw = np.frombuffer(inp._get_content(), dtype=spec.numpy_dtype)
        assert raw.tolist() == (value if isinstance(value, list) else [value])


def test_build_inputs_omits_unset_optional_inputs():
    inputs = build_inputs(RecommendRequest.from_json(REQ))
    names = [i.name() for i in inputs]
    assert names == [s.name for s in contract.PUBLIC.inputs if not s.optional]
    # an empty exclusion list means "no exclusions": not sent either
    inputs = build_inputs(RecommendRequest.from_json(dict(REQ, exclude_item_ids=[], top_k=3)))
    assert [i.name() for i in inputs] == names + ["top_k"]
    top_k = inputs[-1]
    assert top_k.datatype() == "INT32" and top_k.shape() == [1, 1]


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(REQ, top_k=1.5), "integers"),
        (dict(REQ, top_k=[1, 2]), "single value"),
        (dict(REQ, item_ids=["a", "b", "c"]), "numeric"),
        (dict(REQ, top_k=2**40), "out of range"),
    ],
)
def test_build_inputs_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        build_inputs(RecommendRequest(**bad))


def test_build_inputs_accepts_numpy_and_integral_floats():
    req = RecommendRequest(
        **{
            **REQ,
            "item_ids": np.array([101, 5002, 77], dtype=np.int32),
            "request_time": np.int64(1700000300),
            "top_k": 4.0,
        }
    )
    inputs = {i.name(): i for i in build_inputs(req)}
    assert inputs["item_ids"].datatype() == "INT64" and inputs["top_k"].shape() == [1, 1]


# ---------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------
def test_json_round_trip():
    for data in (REQ, FULL):
        req = RecommendRequest.from_json(json.loads(json.dumps(data)))
        assert req.to_json() == data
        assert RecommendRequest.from_json(req.to_json()).to_json() == data
    # numpy in -> plain JSON types out
    req = RecommendRequest(**{k: (np.asarray(v) if isinstance(v, list) else v) for k, v in FULL.items()})
    out = req.to_json()
    assert out == FULL and json.loads(json.dumps(out)) == FULL
    assert isinstance(out["request_time"], int) and isinstance(out["top_k"], int)


def test_from_json_rejects_unknown_and_missing_fields():
    with pytest.raises(ValueError, match="unknown request field"):
        RecommendRequest.from_json(dict(REQ, topk=3))
    with pytest.raises(ValueError, match="missing required"):
        RecommendRequest.from_json({k: v for k, v in REQ.items() if k != "actions"})
    with pytest.raises(ValueError, match="JSON object"):
        RecommendRequest.from_json([1, 2])


class _FakeResult:
    def __init__(self, arrays):
        self.arrays = arrays

    def as_numpy(self, name):
        return self.arrays.get(name)


def test_parse_result_strips_batch_dim_and_checks_dtypes():
    arrays = {
        "rec_item_ids": np.array([[7, 8, 9]], dtype=np.int64),
        "rec_scores": np.array([[0.9, 0.5, 0.1]], dtype=np.float32),
        "rec_gen_logp": np.array([[-1.0, -2.0, -3.0]], dtype=np.float32),
        "rec_source_head": np.array([[0, 6, 2]], dtype=np.int32),
        "history_unknown": np.array([[2]], dtype=np.int64),
        "history_dropped": np.array([[5]], dtype=np.int64),
        "model_version": np.array([[3]], dtype=np.int64),
    }
    rec = parse_result(_FakeResult(arrays), latency_ms=1.5)
    assert rec.item_ids.tolist() == [7, 8, 9] and rec.source_head.tolist() == [0, 6, 2] and len(rec) == 3
    assert (rec.history_unknown, rec.history_dropped, rec.model_version) == (2, 5, 3)
    js = rec.to_json()
    assert js["item_ids"] == [7, 8, 9] and js["latency_ms"] == 1.5 and js["scores"][0] == pytest.approx(0.9)
    assert js["model_version"] == 3 and js["history_unknown"] == 2
    padded = dict(arrays, rec_item_ids=np.array([[7, -1, -1]], dtype=np.int64))
    assert parse_result(_FakeResult(padded)).item_ids.tolist() == [7]  # a native engine's batch padding
    bad = dict(arrays, rec_scores=arrays["rec_scores"].astype(np.float64))
    with pytest.raises(OneRankerError, match="dtype"):
        parse_result(_FakeResult(bad))


# ---------------------------------------------------------------------------------------------
# Request lifecycle: what is retried, full jitter, retry budget, deadline
# ---------------------------------------------------------------------------------------------
def _server_error(status, msg="boom"):
    from tritonclient.utils import InferenceServerException

    return InferenceServerException(msg=msg, status=f"StatusCode.{status}")


class _Flaky:
    """Fails with `status` for the first `fails` calls, then returns "ok"; records each attempt's
    timeout (the gRPC deadline it is sent with). With a fake `clock` each attempt takes `cost_s`,
    cut at its timeout with DEADLINE_EXCEEDED as gRPC does."""

    def __init__(self, fails, status, msg=None, clock=None, cost_s=0.0):
        self.fails, self.status, self.msg, self.calls, self.timeouts = fails, status, msg, 0, []
        self.clock, self.cost_s = clock, cost_s

    def __call__(self, timeout=None):
        self.calls += 1
        self.timeouts.append(timeout)
        if self.clock is not None:
            if timeout is not None and self.cost_s >= timeout:
                self.clock.advance(timeout)
                raise _server_error("DEADLINE_EXCEEDED", "Deadline Exceeded")
            self.clock.advance(self.cost_s)
        if self.calls <= self.fails:
            raise _server_error(self.status, self.msg or f"boom {self.calls}")
        return "ok"


class _FakeClock:
    """time.monotonic + time.sleep of a world where only the test moves time."""

    def __init__(self, t=1000.0):
        self.t, self.sleeps = t, []

    def __call__(self):
        return self.t

    def advance(self, s):
        self.t += s

    def sleep(self, s):
        assert s >= 0
        self.sleeps.append(s)
        self.t += s


def test_retries_unavailable_then_succeeds_and_gives_up_with_the_server_message():
    sleeps = []
    fn = _Flaky(2, "UNAVAILABLE")
    assert call_with_retries(fn, retries=3, backoff_s=0.05, sleep=sleeps.append) == "ok"
    assert fn.calls == 3 and len(sleeps) == 2
    fn = _Flaky(10, "UNAVAILABLE")
    with pytest.raises(OneRankerError) as err:
        call_with_retries(fn, retries=3, backoff_s=0.05, sleep=sleeps.append)
    assert fn.calls == 4 and err.value.attempts == 4
    assert err.value.status == "UNAVAILABLE" and str(err.value) == "boom 4"


def test_full_jitter_sleeps_lie_in_0_cap_and_differ():
    """Catches un-jittered backoff (every client sleeping the same base*2**n and retrying in one
    wave), "equal jitter" (never below half the ceiling) and sleeps above the cap."""
    base, cap = 0.05, 0.3
    sleeps = []
    fn = _Flaky(100, "UNAVAILABLE")
    with pytest.raises(OneRankerError):
        call_with_retries(fn, retries=8, backoff_s=base, max_backoff_s=cap, sleep=sleeps.append, rng=random.Random(7))
    assert len(sleeps) == 8 and fn.calls == 9
    ceilings = [backoff_ceiling(i, base, cap) for i in range(8)]
    assert ceilings == pytest.approx([0.05, 0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3])
    assert all(0.0 <= s <= c for s, c in zip(sleeps, ceilings)), (sleeps, ceilings)
    assert len(set(sleeps)) == len(sleeps)  # not all equal
    assert any(s < c / 2 for s, c in zip(sleeps, ceilings))  # full, not "equal", jitter
    # seeded: the same rng seed gives the same sleeps (the injection works)
    again = []
    with pytest.raises(OneRankerError):
        call_with_retries(
            _Flaky(100, "UNAVAILABLE"),
            retries=8,
            backoff_s=base,
            max_backoff_s=cap,
            sleep=again.append,
            rng=random.Random(7),
        )
    assert again == sleeps
    # the distribution over many draws covers [0, ceiling] (mean ~ ceiling / 2)
    rng = random.Random(1)
    draws = [full_jitter_delay(2, rng, base, cap) for _ in range(2000)]
    assert 0.0 <= min(draws) < 0.01 and 0.19 < max(draws) <= 0.2 and np.mean(draws) == pytest.approx(0.1, rel=0.1)


def test_retry_budget_stops_retries_under_a_stream_of_unavailable_and_refills_after_successes():
    """Catches retries without a budget (every failing call sent 1 + retries times: an overloaded
    server gets 4x the load) and a budget that never refills after the server recovers."""
    clock = _FakeClock()
    budget = RetryBudget(tokens=5, ratio=0.1, min_per_s=0.0, clock=clock)
    attempts = []
    for _ in range(20):  # the server sheds every request
        fn = _Flaky(100, "UNAVAILABLE")
        with pytest.raises(OneRankerError) as err:
            call_with_retries(fn, retries=3, sleep=clock.sleep, budget=budget, clock=clock)
        attempts.append(fn.calls)
        assert err.value.attempts == fn.calls and err.value.status == "UNAVAILABLE"
    assert sum(attempts) - 20 == 5  # the 5 tokens, then no retry at all
    assert attempts[:2] == [4, 3] and set(attempts[2:]) == {1}
    assert budget.tokens < 1
    # the server recovers: 10 successes deposit 10 x 0.1 = one retry
    for _ in range(10):
        assert call_with_retries(_Flaky(0, "UNAVAILABLE"), budget=budget, clock=clock) == "ok"
    fn = _Flaky(100, "UNAVAILABLE")
    with pytest.raises(OneRankerError):
        call_with_retries(fn, retries=3, sleep=clock.sleep, budget=budget, clock=clock)
    assert fn.calls == 2  # exactly one retry was paid for
    # a blip after recovery: one failure then success, retried with the refilled budget
    for _ in range(10):
        call_with_retries(_Flaky(0, "UNAVAILABLE"), budget=budget, clock=clock)
    fn = _Flaky(1, "UNAVAILABLE")
    assert call_with_retries(fn, retries=3, sleep=clock.sleep, budget=budget, clock=clock) == "ok"
    assert fn.calls == 2


def test_retry_budget_floor_and_cap():
    clock = _FakeClock()
    budget = RetryBudget(tokens=3, ratio=0.5, min_per_s=1.0, clock=clock)
    assert [budget.try_spend() for _ in range(4)] == [True, True, True, False]
    clock.advance(2.0)  # the floor: 1 token a second whatever happens
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]
    clock.advance(100.0)
    for _ in range(10):
        budget.on_success()
    assert budget.tokens == 3.0  # never more than the bucket holds
    with pytest.raises(ValueError):
        RetryBudget(ratio=-1)


@pytest.mark.parametrize(
    "status, msg",
    [
        ("DEADLINE_EXCEEDED", None),
        ("INVALID_ARGUMENT", None),
        ("INTERNAL", None),
        ("CANCELLED", None),
        ("RESOURCE_EXHAUSTED", None),
        # a restricted API refused (Triton answers UNAVAILABLE): the same key is refused again
        ("UNAVAILABLE", "This protocol is restricted, expecting header 'triton-grpc-protocol-oneranker-admin-key'"),
    ],
)
def test_unsafe_or_hopeless_errors_are_never_retried(status, msg):
    """Catches a RETRYABLE_STATUSES that includes DEADLINE_EXCEEDED (a retry after the caller's
    whole budget is spent), INVALID_ARGUMENT (fails the same way) or the restricted-API refusal."""
    sleeps = []
    budget = RetryBudget(tokens=10, min_per_s=0.0)
    fn = _Flaky(1, status, msg)
    with pytest.raises(OneRankerError) as err:
        call_with_retries(fn, retries=3, backoff_s=0.05, sleep=sleeps.append, budget=budget)
    assert fn.calls == 1 and sleeps == [] and err.value.status == status and err.value.attempts == 1
    assert err.value.message == (msg or "boom 1")
    assert budget.tokens == 10  # no token spent on it
    assert err.value.restricted == (msg is not None) and not err.value.retryable


def test_total_time_is_bounded_by_the_deadline_fake_clock():
    """Catches a deadline per attempt instead of per call (4 attempts x 1 s + sleeps), attempts
    sent with the full timeout instead of the time left, and sleeps that run past the deadline."""
    clock = _FakeClock()
    t0 = clock()
    fn = _Flaky(100, "UNAVAILABLE", clock=clock, cost_s=0.15)  # each attempt takes 150 ms to fail
    with pytest.raises(OneRankerError) as err:
        call_with_retries(
            fn,
            retries=50,
            backoff_s=0.05,
            max_backoff_s=0.4,
            timeout_s=1.0,
            sleep=clock.sleep,
            clock=clock,
            rng=random.Random(3),
            budget=RetryBudget(tokens=100),
        )
    # the last attempt either failed (UNAVAILABLE, no time left to sleep) or ran out of time
    assert err.value.status in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and err.value.attempts == fn.calls
    assert 3 <= fn.calls < 51 and clock() - t0 <= 1.0 + 1e-9
    # each attempt is sent with the time left as its deadline
    assert fn.timeouts[0] == pytest.approx(1.0)
    starts = np.cumsum([0.0] + [0.15 + s for s in clock.sleeps])
    assert fn.timeouts == pytest.approx([1.0 - s for s in starts[: fn.calls]])
    assert all(t > 0 for t in fn.timeouts)
    # a backoff that would end after the deadline is not slept at all
    clock2 = _FakeClock()
    fn = _Flaky(100, "UNAVAILABLE")
    with pytest.raises(OneRankerError):
        call_with_retries(
            fn,
            retries=3,
            backoff_s=50.0,
            max_backoff_s=60.0,
            timeout_s=1.0,
            sleep=clock2.sleep,
            clock=clock2,
            rng=_AlwaysMax(),
        )
    assert fn.calls == 1 and clock2.sleeps == []


class _AlwaysMax(random.Random):
    def uniform(self, a, b):
        return b


def test_deadline_passed_by_an_attempt_is_deadline_exceeded_and_final():
    clock = _FakeClock()

    def slow(timeout):
        clock.advance(timeout)  # the attempt uses all the time it was given
        raise _server_error("DEADLINE_EXCEEDED", "Deadline Exceeded")

    with pytest.raises(OneRankerError) as err:
        call_with_retries(slow, retries=3, timeout_s=0.5, sleep=clock.sleep, clock=clock)
    assert err.value.status == "DEADLINE_EXCEEDED" and err.value.attempts == 1 and clock.sleeps == []
    with pytest.raises(OneRankerError) as err:  # no time at all: nothing is sent
        call_with_retries(slow, timeout_s=0.0, clock=clock)
    assert err.value.status == "DEADLINE_EXCEEDED" and err.value.attempts == 0


def test_async_retry_policy_jitter_deadline_and_budget():
    clock = _FakeClock()

    async def fake_sleep(s):
        clock.sleep(s)

    def wrap(flaky):
        async def call(timeout):
            return flaky(timeout)

        return call

    fn = _Flaky(1, "UNAVAILABLE")
    out = asyncio.run(acall_with_retries(wrap(fn), retries=2, sleep=fake_sleep, clock=clock, rng=random.Random(0)))
    assert out == "ok" and fn.calls == 2 and 0 <= clock.sleeps[0] <= backoff_ceiling(0)
    bad = _Flaky(5, "INVALID_ARGUMENT")
    with pytest.raises(OneRankerError):
        asyncio.run(acall_with_retries(wrap(bad), retries=2, sleep=fake_sleep, clock=clock))
    assert bad.calls == 1
    t0 = clock()
    slow = _Flaky(100, "UNAVAILABLE", clock=clock, cost_s=0.2)
    with pytest.raises(OneRankerError):
        asyncio.run(
            acall_with_retries(wrap(slow), retries=20, timeout_s=1.0, sleep=fake_sleep, clock=clock, max_backoff_s=0.3)
        )
    assert clock() - t0 <= 1.0 and slow.timeouts[0] == pytest.approx(1.0)
    budget = RetryBudget(tokens=1, min_per_s=0.0, clock=clock)
    calls = []
    for _ in range(3):
        f = _Flaky(100, "UNAVAILABLE")
        with pytest.raises(OneRankerError):
            asyncio.run(acall_with_retries(wrap(f), retries=3, sleep=fake_sleep, clock=clock, budget=budget))
        calls.append(f.calls)
    assert calls == [2, 1, 1]


def test_errors_convert():
    assert as_oneranker_error(ValueError("x")).status == "INVALID_ARGUMENT"
    assert as_oneranker_error(TimeoutError()).status == "DEADLINE_EXCEEDED"
    err = OneRankerError("m", "UNAVAILABLE")
    assert as_oneranker_error(err) is err and err.retryable and err.to_json() == {"error": "m", "status": "UNAVAILABLE"}
    assert as_oneranker_error(_server_error("DEADLINE_EXCEEDED", "Deadline Exceeded")).status == "DEADLINE_EXCEEDED"


def test_client_against_a_closed_port_raises_unavailable_after_retries():
    from oneranker_client import OneRankerClient
    from oneranker_serving.local_server import find_free_port

    client = OneRankerClient(f"127.0.0.1:{find_free_port()}", timeout_s=5, retries=1, backoff_s=0.01)
    with pytest.raises(OneRankerError) as err:
        client.recommend(REQ)
    assert err.value.status == "UNAVAILABLE" and err.value.attempts == 2
    out = client.recommend_many([REQ, dict(REQ, top_k=1.5)], concurrency=2, progress=False)
    assert out[0].status == "UNAVAILABLE" and out[1].status == "INVALID_ARGUMENT"
    client.close()


def test_client_retry_budget_is_shared_by_its_threads():
    """Catches a budget made per call (or per thread) instead of per client: 24 failing requests
    from 4 threads may add only the bucket's 4 retries, not 24 x 3."""
    from oneranker_client import OneRankerClient
    from oneranker_serving.local_server import find_free_port

    budget = RetryBudget(tokens=4, ratio=0.1, min_per_s=0.0)
    with OneRankerClient(
        f"127.0.0.1:{find_free_port()}", timeout_s=5, retries=3, backoff_s=0.001, retry_budget=budget
    ) as client:
        assert client.retry_budget is budget
        out = client.recommend_many([REQ] * 24, concurrency=4, progress=False)
    assert all(isinstance(e, OneRankerError) and e.status == "UNAVAILABLE" for e in out)
    assert sum(e.attempts for e in out) == 24 + 4
    assert OneRankerClient("127.0.0.1:1").retry_budget is not OneRankerClient("127.0.0.1:1").retry_budget
    with pytest.raises(ValueError, match="timeout_s"):
        OneRankerClient("127.0.0.1:1", timeout_s=0)


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never answers (a hung server)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield f"127.0.0.1:{s.getsockname()[1]}"
    s.close()


def test_a_hung_server_gives_deadline_exceeded_at_the_deadline(silent_server):
    """The deadline reaches gRPC (client_timeout of the attempt): catches a client that does not
    send it (the call hangs) or that retries DEADLINE_EXCEEDED (takes 4x as long)."""
    import threading
    import time

    from oneranker_client import AsyncOneRankerClient, OneRankerClient

    result = {}

    def call():
        with OneRankerClient(silent_server, timeout_s=0.3, retries=3) as client:
            t0 = time.perf_counter()
            try:
                client.recommend(REQ)
            except OneRankerError as e:
                result["err"], result["s"] = e, time.perf_counter() - t0

    th = threading.Thread(target=call, daemon=True)
    th.start()
    th.join(10)
    assert "err" in result, "the call did not end: no deadline was sent"
    err = result["err"]
    assert err.status == "DEADLINE_EXCEEDED" and err.attempts == 1, err
    assert 0.25 <= result["s"] < 1.0, result["s"]

    async def acall():
        async with AsyncOneRankerClient(silent_server, timeout_s=0.3, retries=3) as client:
            with pytest.raises(OneRankerError) as aerr:
                await asyncio.wait_for(client.recommend(REQ), 10)
            return aerr.value

    aerr = asyncio.run(acall())
    assert aerr.status == "DEADLINE_EXCEEDED" and aerr.attempts == 1


# ---------------------------------------------------------------------------------------------
# CLI parsing and usage errors (exit 2)
# ---------------------------------------------------------------------------------------------
def test_cli_parses_history_flags_into_a_request():
    args = cli.build_parser().parse_args(
        [
            "recommend",
            "--user-features",
            "3,1,7,0",
            "--item-ids",
            "101,5002,77",
            "--actions",
            "1,2,3",
            "--timestamps",
            "1700000000,1700000100,1700000200",
            "--request-time",
            "1700000300",
            "--top-k",
            "5",
            "--exclude-item-ids",
            "9,10",
        ]
    )
    req = cli.request_from_args(args)
    assert req.to_json() == dict(REQ, top_k=5, exclude_item_ids=[9, 10])


def test_cli_common_options_before_or_after_the_subcommand():
    p = cli.build_parser()
    a = p.parse_args(["--url", "h:1", "--format", "json", "health"])
    b = p.parse_args(["health", "--url", "h:1", "--format", "json"])
    c = p.parse_args(["health"])
    assert (a.url, a.format) == (b.url, b.format) == ("h:1", "json")
    assert c.url == cli.DEFAULT_GRPC_URL and c.format == "table" and c.model == contract.PUBLIC_MODEL


def test_cli_json_request_and_overrides(tmp_path):
    f = tmp_path / "req.json"
    f.write_text(json.dumps(REQ))
    args = cli.build_parser().parse_args(["recommend", "--json", str(f), "--top-k", "3"])
    assert cli.request_from_args(args).to_json() == dict(REQ, top_k=3)


def test_cli_request_time_defaults_to_now():
    args = cli.build_parser().parse_args(
        ["recommend", "--user-features", "1", "--item-ids", "1", "--actions", "1", "--timestamps", "1"]
    )
    import time

    assert abs(cli.request_from_args(args).request_time - time.time()) < 60


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no subcommand
        ["bogus"],
        ["recommend", "--item-ids", "1,x"],  # not integers
        ["recommend", "--item-ids", "1,2"],  # history incomplete
        ["recommend", "--json", "/nonexistent/req.json"],
        ["recommend", "--json", "-", "--item-ids", "1"],  # --json with history flags
        ["recommend", "--top-k", "two"],
        ["health", "--format", "xml"],
        ["batch"],  # --input required
        ["batch", "--input", "/nonexistent.jsonl"],
        ["health", "--timeout", "soon"],
    ],
)
def test_cli_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        rc = cli.main(argv)
        raise SystemExit(rc)
    assert e.value.code == 2, capsys.readouterr()
    assert "error" in capsys.readouterr().err


def test_cli_bad_input_files_exit_2(tmp_path, capsys):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    assert cli.main(["recommend", "--json", str(bad_json)]) == 2
    assert "invalid JSON" in capsys.readouterr().err
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text(json.dumps(REQ) + "\n" + json.dumps(dict(REQ, topk=2)) + "\n")
    assert cli.main(["batch", "--input", str(bad_line)]) == 2
    assert "line 2" in capsys.readouterr().err


def test_cli_unreachable_server_exits_1_with_message(capsys):
    from oneranker_serving.local_server import find_free_port

    rc = cli.main(["health", "--url", f"127.0.0.1:{find_free_port()}", "--retries", "0", "--timeout", "5"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ") and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# CLI: `example`, the help examples, the response fields
# ---------------------------------------------------------------------------------------------
ADMIN_KEY = "0123456789abcdef-admin-key"
EXAMPLE = {
    "user_features": [2, 5, 0, 13],
    "item_ids": [900003, 100017],
    "actions": [1, 3],
    "timestamps": [1700000000, 1700000500],
    "request_time": 1700001000,
    "top_k": 10,
}


class _FakeTriton:
    """The tritonclient calls `example` makes; `key` set = the model-config API is restricted."""

    def __init__(self, config, key=None):
        self.config, self.key, self.calls = config, key, []

    def get_model_config(self, model_name, model_version="", headers=None, as_json=False, client_timeout=None):
        self.calls.append({"model": model_name, "headers": headers, "timeout": client_timeout})
        header = GRPC_RESTRICTED_HEADER_PREFIX + ADMIN_KEY_HEADER
        if self.key is not None and (headers or {}).get(header) != self.key:
            raise _server_error("UNAVAILABLE", f"This protocol is restricted, expecting header '{header}'")
        assert as_json
        return {"config": dict(self.config, name=model_name)}

    def close(self):
        pass


@pytest.fixture
def fake_server(monkeypatch):
    """cli.OneRankerClient on a fake tritonclient; returns the fake (set .config / .key)."""
    from oneranker_client.client import _ClientOptions

    fake = _FakeTriton({"parameters": {"example_request": {"string_value": json.dumps(EXAMPLE)}}})

    class FakeClient(cli.OneRankerClient):
        def __init__(self, *args, **kwargs):
            _ClientOptions.__init__(self, *args, **kwargs)
            self._client, self._outputs = fake, []

    monkeypatch.setattr(cli, "OneRankerClient", FakeClient)
    monkeypatch.delenv(ADMIN_KEY_ENV, raising=False)
    return fake


def test_cli_example_prints_the_served_example_in_recommend_json_format(fake_server, capsys, monkeypatch):
    """Catches an `example` that reads the wrong parameter or model, or prints something
    `recommend --json` does not take back."""
    assert cli.main(["example", "--model", "oneranker_fused"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == EXAMPLE and len(out.strip().splitlines()) == 1  # also a JSONL line
    call = fake_server.calls[-1]
    assert call["model"] == "oneranker_fused" and call["headers"] is None  # no key: none sent
    assert 0 < call["timeout"] <= cli.DEFAULT_TIMEOUT_S  # under the call's deadline
    # piped into `recommend --json -`, it is the same request
    monkeypatch.setattr(sys, "stdin", io.StringIO(out))
    args = cli.build_parser().parse_args(["recommend", "--json", "-"])
    assert cli.request_from_args(args).to_json() == EXAMPLE


def test_cli_example_on_a_restricted_model_config_api(fake_server, capsys, monkeypatch):
    """Catches a refusal that is retried (Triton answers UNAVAILABLE), a key that is not sent (or
    sent under another header), and an unhelpful refusal message."""
    fake_server.key = ADMIN_KEY
    assert cli.main(["example"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "restricted" in err and f"set {ADMIN_KEY_ENV}" in err, err
    assert len(fake_server.calls) == 1  # not retried
    monkeypatch.setenv(ADMIN_KEY_ENV, ADMIN_KEY[::-1])
    assert cli.main(["example"]) == 1
    err = capsys.readouterr().err
    assert "refused the admin key" in err and ADMIN_KEY_ENV in err and ADMIN_KEY[::-1] not in err, err
    monkeypatch.setenv(ADMIN_KEY_ENV, ADMIN_KEY)
    assert cli.main(["example"]) == 0
    assert json.loads(capsys.readouterr().out) == EXAMPLE
    assert fake_server.calls[-1]["headers"] == {f"triton-grpc-protocol-{ADMIN_KEY_HEADER}": ADMIN_KEY}
    assert admin_grpc_headers(ADMIN_KEY) == fake_server.calls[-1]["headers"]


@pytest.mark.parametrize(
    "config, match",
    [
        ({}, "has no parameter 'example_request'"),
        ({"parameters": {"contract_version": {"string_value": "4"}}}, "oneranker build"),
        ({"parameters": {"example_request": {"string_value": "{not json"}}}, "not a valid request"),
        ({"parameters": {"example_request": {"string_value": json.dumps({"item_ids": [1]})}}}, "missing required"),
    ],
)
def test_cli_example_without_a_valid_parameter(fake_server, capsys, config, match):
    fake_server.config = config
    assert cli.main(["example"]) == 1
    assert match in capsys.readouterr().err


def _recommend_examples(text: str) -> list[list[str]]:
    """argv of every `oneranker-client ... recommend --user-features ...` command in `text`."""
    text = text.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("oneranker-client ") and " recommend " in line and "--user-features" in line:
            out.append(shlex.split(line)[1:])
    return out


def _python_examples(text: str) -> list[dict]:
    """The keyword arguments of every `RecommendRequest(...)` literal in `text`."""
    out = []
    for m in re.finditer(r"RecommendRequest\(", text):
        depth, i = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        body = text[m.end() : i - 1]
        if "user_features=" in body:
            out.append(eval(f"dict({body})", {}))  # noqa: S307 - our own documentation
    return out


def _documented_requests() -> dict[str, dict]:
    from oneranker_client import client as client_module

    docs = {
        "cli --help": cli.build_parser().format_help(),
        "client/README.md": (ROOT / "client" / "README.md").read_text(),
        "README.md": (ROOT / "README.md").read_text(),
    }
    found = {}
    for where, text in docs.items():
        for i, argv in enumerate(_recommend_examples(text)):
            args = cli.build_parser().parse_args(argv)  # the example parses
            found[f"{where} #{i}"] = cli.request_from_args(args).to_json()
    for where, text in {"client.py docstring": client_module.__doc__, **docs}.items():
        for i, kwargs in enumerate(_python_examples(text)):
            found[f"{where} python #{i}"] = RecommendRequest(**kwargs).to_json()
    return found


def test_documented_examples_are_found():
    found = _documented_requests()
    assert any(k.startswith("cli --help") for k in found), found
    assert any(k.startswith("client/README.md #") for k in found), found
    assert any(k.startswith("client.py docstring python") for k in found), found
    assert any(k.startswith("client/README.md python") for k in found), found


@pytest.mark.parametrize("preset_name", ["small", "tiny"])  # small: the quickstart; tiny: the test server
def test_documented_examples_are_valid_requests_for_the_model(preset_name):
    """Every request in --help, the client README and the docstring is valid for the model the
    quickstart serves (and the test suite's tiny one), with the ranges taken from the synthetic
    world itself: catches ids outside the catalogue (served as OOV, or refused), content ids sent
    with ad actions, features out of range, the wrong feature count, timestamps after request_time."""
    config = pytest.importorskip("oneranker.config")
    synthetic = pytest.importorskip("oneranker.data.synthetic")
    data = config.preset(preset_name).data
    catalog = synthetic.make_synthetic(data).catalog
    ads, contents = set(catalog.ad_ids.tolist()), set(catalog.content_ids.tolist())
    P, C = data.num_profile_features, data.num_context_features
    for where, req in _documented_requests().items():
        feats, t = req["user_features"], req["request_time"]
        assert len(feats) == P + C, (where, feats)
        assert all(0 <= f < data.profile_cardinality for f in feats[:P]), (where, feats)
        assert all(0 <= f < data.context_cardinality for f in feats[P:]), (where, feats)
        # the synthetic world's context feature 0: the hour-of-day bucket of the request
        assert feats[P] == ((t // 3600) % 24) * data.context_cardinality // 24, (where, feats, t)
        assert len(req["item_ids"]) == len(req["actions"]) == len(req["timestamps"]) >= 1, where
        for item, action in zip(req["item_ids"], req["actions"]):
            if action == contract.ACTION_CONTENT_VIEW:
                assert item in contents, (where, item, "not a content id of the model")
            else:
                assert action in contract.AD_ACTIONS and item in ads, (where, item, action)
        ts = req["timestamps"]
        assert ts == sorted(ts) and 0 <= ts[0] and ts[-1] <= t, (where, ts, t)
        for name in ("top_k", "num_candidates", "beam_width"):
            assert req.get(name, 1) >= 1, where


def test_recommend_output_shows_history_counts_and_model_version():
    """Catches a `recommend` output (table or JSON) that drops the v4 response fields."""
    rec = Recommendation(
        item_ids=np.array([100007, 100042]),
        scores=np.array([0.9, 0.5], dtype=np.float32),
        gen_logp=np.array([-1.0, -2.0], dtype=np.float32),
        source_head=np.array([0, 6], dtype=np.int32),
        history_unknown=2,
        history_dropped=5,
        model_version=3,
        latency_ms=4.2,
    )
    js = json.loads(cli.format_recommendation(rec, "json"))
    assert (js["history_unknown"], js["history_dropped"], js["model_version"]) == (2, 5, 3)
    table = cli.format_recommendation(rec, "table")
    assert "model version 3" in table and "2 unknown item ids" in table and "5 oldest events dropped" in table


def test_cli_timeout_and_retries_flags():
    args = cli.build_parser().parse_args(["health"])
    assert args.timeout == cli.DEFAULT_TIMEOUT_S == 1.0 and args.retries == 3
    for bad in (["--timeout", "0"], ["--timeout", "-1"], ["--retries", "-1"]):
        with pytest.raises(cli.UsageError):
            cli._client(cli.build_parser().parse_args(["health", *bad]))
    assert cli.main(["health", "--timeout", "0"]) == 2


def test_cli_latency_summary():
    s = cli.latency_summary([1.0, 2.0, 3.0, 4.0])
    assert s["p50_ms"] == 2.5 and s["max_ms"] == 4.0
    assert cli.latency_summary([])["p50_ms"] is None


def test_client_modules_import_without_torch():
    code = (
        "import sys; import oneranker_client, oneranker_client.client, oneranker_client.cli; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    env = {"PYTHONPATH": str(ROOT / "client"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------------
# perf inputs
# ---------------------------------------------------------------------------------------------
def test_make_inputs_perf_analyzer_json(tmp_path):
    from oneranker_perf import make_inputs

    reqs = [REQ, dict(REQ, item_ids=[1, 2], actions=[1, 1], timestamps=[5, 6])]
    path = make_inputs.write_perf_data(reqs, tmp_path / "perf_data.json")
    doc = json.loads(path.read_text())
    assert len(doc["data"]) == 2
    required = [s.name for s in contract.PUBLIC.inputs if not s.optional]
    for req, step in zip(reqs, doc["data"]):
        assert list(step) == required  # unset optional inputs left out
        for name, tensor in step.items():
            spec = contract.PUBLIC.input(name)
            assert set(tensor) == {"content", "shape"}
            value = req[name] if isinstance(req[name], list) else [req[name]]
            assert tensor["content"] == value
            # no batch dim (server issue 4068): the spec's rank, the request's own length
            assert len(tensor["shape"]) == len(spec.dims) and tensor["shape"] == [len(value)]
    variable = [s.name for s in contract.PUBLIC.inputs if -1 in s.dims and not s.optional]
    assert {tuple(doc["data"][i][n]["shape"]) for i in range(2) for n in variable} == {(3,), (2,)}


def test_make_inputs_optional_inputs_and_consistency(tmp_path):
    from oneranker_perf import make_inputs

    doc = make_inputs.perf_analyzer_data([FULL])
    step = doc["data"][0]
    assert list(step) == [s.name for s in contract.PUBLIC.inputs]
    assert step["top_k"] == {"content": [5], "shape": [1]}
    assert step["exclude_item_ids"] == {"content": [9, 10], "shape": [2]}
    with pytest.raises(ValueError, match="same inputs"):
        make_inputs.perf_analyzer_data([REQ, FULL])
    jsonl = make_inputs.write_requests_jsonl([FULL, RecommendRequest.from_json(REQ)], tmp_path / "r.jsonl")
    assert make_inputs.read_requests_jsonl(jsonl) == [FULL, REQ]


def test_perf_analyzer_suite_parsing(tmp_path):
    from oneranker_perf import perf_analyzer_suite as pas

    csv_path = tmp_path / "pa.csv"
    csv_path.write_text(
        "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
        "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
        "Avg latency,request/response,response wait\n2,1675.52,3,458,210,36,352,120,1,951,1306,1590,5164,1183,4,1167\n"
    )
    row = pas.parse_pa_csv(csv_path)[0]
    assert row["level"] == 2 and row["throughput_infer_s"] == pytest.approx(1675.52)
    assert row["p50_ms"] == pytest.approx(0.951) and row["p99_ms"] == pytest.approx(5.164)
    assert pas._rate_range("100:300:100") == [100, 200, 300]
    m = pas.machine_description()
    assert m["nproc"] >= 1 and m["cpu_model"]
    args = pas.build_parser().parse_args(["--input-data", "x.json", "--out", "o", "--concurrency", "1,2"])
    cmd = pas.pa_args(args, "concurrency", 2, tmp_path / "c.csv")
    assert cmd[cmd.index("--concurrency-range") + 1] == "2:2:1" and cmd[cmd.index("-i") + 1] == "grpc"
    assert "-f" in cmd
    with pytest.raises(SystemExit):
        pas.build_parser().parse_args(["--input-data", "x", "--out", "o", "--concurrency", "0"])


def test_locust_run_helpers(tmp_path):
    from oneranker_perf import locust_run

    assert locust_run.parse_run_time("10s") == 10 and locust_run.parse_run_time("1m30s") == 90
    assert locust_run.parse_run_time("7") == 7
    with pytest.raises(argparse.ArgumentTypeError):
        locust_run.parse_run_time("ten")
    prefix = tmp_path / "locust"
    cols = (
        "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
        "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,90%,99%\n"
    )
    Path(f"{prefix}_stats.csv").write_text(
        cols
        + "grpc,oneranker.recommend,100,2,3,3.5,1,9,10,20.0,0.4,3,5,8\n,Aggregated,100,2,3,3.5,1,9,10,20.0,0.4,3,5,8\n"
    )
    Path(f"{prefix}_failures.csv").write_text(
        "Method,Name,Error,Occurrences\ngrpc,oneranker.recommend,[UNAVAILABLE] x,2\n"
    )
    s = locust_run.read_stats(prefix)
    assert s.requests == 100 and s.failed == 2 and s.failures[0]["occurrences"] == 2
    assert locust_run.report(0, s, "", tmp_path) == 1
    Path(f"{prefix}_stats.csv").write_text(cols + ",Aggregated,100,0,3,3.5,1,9,10,20.0,0,3,5,8\n")
    assert locust_run.report(0, locust_run.read_stats(prefix), "", tmp_path) == 0
    assert locust_run.report(0, None, "boom", tmp_path) == 1
