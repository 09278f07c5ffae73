"""Bad input over both protocols, on the real tritonserver of the session (`served_repository`).

Every malformed request of the catalogue `oneranker_perf.bad_requests.bad_cases` (59 cases, 45
of them sent over both gRPC and KServe v2 HTTP/JSON: wrong dtype, rank, shape vs data length,
negative and huge dims, NaN/Inf, out-of-range ids, empty histories, missing, duplicated and
unknown inputs and outputs, absurd options, unparseable bodies; the public ensemble `oneranker`
and the fused model `recommender` called directly) is sent exactly as written -- raw protobuf
(`tritonclient.grpc.service_pb2`) and raw JSON / binary-extension bodies (`http.client`), so no
client library refuses it first -- while good requests run concurrently over both protocols.
Every bad one must get its recorded answer: status, a message with the recorded words, and the
recorded layer (Triton's own parser / config checks, or oneranker's validation: through the
ensemble its messages start with "in ensemble 'oneranker', "). Good answers must not change and
the server must stay ready with every Python stub alive. The table of cases, layers and statuses
per protocol is docs/bad_input.md (tests/unit/test_bad_requests.py keeps it equal to the
catalogue). Where Triton's parser answers first it sometimes answers HTTP 500 (its JSON parser:
shape vs data, negative dims, NaN / strings / fractions in integer tensors, unparseable bodies)
and gRPC INTERNAL (an undecodable protobuf): recorded as they are.

Two malformed requests are not in the catalogue because tritonserver 2.51 does not survive them
(`bad_requests.crashes`); `test_tritonserver_2_51_does_not_survive_two_malformed_shapes` pins
what they do on a server of its own.

Also here: what contract v4 serves instead of refusing -- unknown history item ids (the OOV token,
counted in `history_unknown`) and histories past max_history (the most recent events kept,
`history_dropped`).
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.request

import numpy as np
import pytest

from oneranker_client import contract
from oneranker_perf import bad_requests as br
from oneranker_serving import artifacts
from oneranker_serving.recommender import Request

pytestmark = pytest.mark.triton

MODELS = (contract.PUBLIC_MODEL, contract.FUSED_MODEL)
ROUNDS = 3  # the catalogue is sent this many times per protocol while the good traffic runs


@pytest.fixture(scope="module")
def limits(served_repository) -> br.Limits:
    return br.Limits.from_repository(served_repository.repository)


@pytest.fixture(scope="module")
def cases(served_repository, limits) -> list:
    return br.bad_cases(served_repository.requests[0], limits)


@pytest.fixture(scope="module")
def in_process(tiny_export):
    """What the fused model serves, in process."""
    return artifacts.load_recommender(tiny_export / "export", engine="onnxruntime", threads=1, search="graph")


def grpc_infer(url: str, model: str, tensors) -> dict:
    channel, stub = br.grpc_stub(url)
    try:
        status, out = br.send_grpc(channel, stub, br.grpc_request(model, tensors))
    finally:
        channel.close()
    assert status == br.GRPC_OK, (model, status, out)
    return {k: v[0] for k, v in out.items()}


def http_infer(url: str, model: str, tensors) -> dict:
    status, out = br.send_http(url, model, *br.http_request(tensors))
    assert status == 200, (model, status, out)
    return {k: v[0] for k, v in out.items()}


def same_answer(got: dict, want: dict) -> str | None:
    if got["rec_item_ids"].tolist() != want["rec_item_ids"].tolist():
        return f"items {got['rec_item_ids'].tolist()} != {want['rec_item_ids'].tolist()}"
    if not np.allclose(got["rec_scores"], want["rec_scores"], atol=1e-6):
        return f"scores {got['rec_scores'].tolist()} != {want['rec_scores'].tolist()}"
    return None


def live_stubs(server_pid: int) -> set[int]:
    """PIDs of the server's Python-backend stub processes that still run (one per model instance)."""
    import psutil

    out = set()
    for proc in psutil.Process(server_pid).children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and "triton_python_backend_stub" in " ".join(proc.cmdline()):
                out.add(proc.pid)
        except psutil.Error:
            pass
    return out


def ready(served) -> bool:
    try:
        url = f"http://{served.http_url}/v2/health/ready"
        return urllib.request.urlopen(url, timeout=10).status == 200
    except OSError:
        return False


def test_bad_inputs_get_their_recorded_answer_over_grpc_and_http(served_repository, cases):
    served = served_repository
    both = [c for c in cases if c.grpc is not None and c.http is not None]
    assert len(both) >= 25 and len({c.name for c in cases}) == len(cases)
    # baselines of the good traffic: two users, both models, both protocols agree
    goods = [br.good_tensors(req, top_k=5) for req in served.requests[1:3]]
    expected = {(m, i): grpc_infer(served.grpc_url, m, t) for m in MODELS for i, t in enumerate(goods)}
    for (model, i), want in expected.items():
        assert same_answer(http_infer(served.http_url, model, goods[i]), want) is None, (model, i)
    log_start = served.server.log_file.stat().st_size
    stubs = live_stubs(served.server.pid)
    assert stubs, "no Python stub process found under the server"

    stop = threading.Event()
    good_done, good_problems = [], []

    def good_traffic(protocol: str) -> None:
        channel, stub = br.grpc_stub(served.grpc_url)
        k = 0
        try:
            while not stop.is_set():
                model, i = MODELS[k % 2], (k // 2) % len(goods)
                k += 1
                if protocol == "grpc":
                    status, out = br.send_grpc(channel, stub, br.grpc_request(model, goods[i]))
                    ok = status == br.GRPC_OK
                else:
                    status, out = br.send_http(served.http_url, model, *br.http_request(goods[i]))
                    ok = status == 200
                problem = same_answer({n: v[0] for n, v in out.items()}, expected[model, i]) if ok else str(out)
                if problem:
                    good_problems.append(f"good {protocol} {model} #{i}: {status} {problem}")
                good_done.append(protocol)
        finally:
            channel.close()

    answers: list = []  # (case, protocol, status, message)

    def bad_traffic(protocol: str) -> None:
        channel, stub = br.grpc_stub(served.grpc_url)
        try:
            for _ in range(ROUNDS):
                for case in cases:
                    if case.expect(protocol) is None:
                        continue
                    if protocol == "grpc":
                        status, message = br.send_grpc(channel, stub, case.grpc_request())
                    else:
                        status, message = br.send_http(served.http_url, case.model, *case.http_request())
                    answers.append((case, protocol, status, message))
        finally:
            channel.close()

    background = [threading.Thread(target=good_traffic, args=(p,)) for p in ("grpc", "http")]
    bad = [threading.Thread(target=bad_traffic, args=(p,)) for p in ("grpc", "http")]
    for t in background + bad:
        t.start()
    for t in bad:
        t.join()
    stop.set()
    for t in background:
        t.join()

    sent = sum((c.grpc is not None) + (c.http is not None) for c in cases)
    assert len(answers) == ROUNDS * sent
    problems = []
    for case, protocol, status, message in answers:
        problem = br.check_answer(case, protocol, status, message if isinstance(message, str) else repr(message))
        if problem:
            problems.append(problem)
    assert not problems, "\n".join(sorted(set(problems)))
    assert not good_problems, "\n".join(good_problems[:20])
    assert min(good_done.count("grpc"), good_done.count("http")) >= 5, "too few good requests ran alongside"

    # still ready, every Python stub process still running (sequential requests reach only an engine
    # model's preferred instance, so answers alone would miss a dead spill-over stub), and the
    # answers to good requests unchanged
    assert served.server.is_live() and ready(served)
    assert live_stubs(served.server.pid) == stubs
    for model in MODELS:
        for _ in range(4):
            assert same_answer(grpc_infer(served.grpc_url, model, goods[0]), expected[model, 0]) is None
    with open(served.server.log_file, errors="replace") as f:
        f.seek(log_start)
        new_log = f.read()
    for sign in ("terminate called", "not healthy", "Non-graceful termination", "Signal ("):
        assert sign not in new_log, new_log[-3000:]


# ------------------------------------------------------------------ served, not refused (contract v4)


def _answers(served, model: str, tensors) -> list[dict]:
    return [grpc_infer(served.grpc_url, model, tensors), http_infer(served.http_url, model, tensors)]


def test_unknown_history_item_ids_are_served_and_counted(served_repository, tiny_run, in_process):
    catalog = tiny_run.prep.dataset.catalog
    unknown_ids = [int(max(catalog.ad_ids.max(), catalog.content_ids.max())) + 12345, -7, 2**63 - 1]
    req = next(r for r in served_repository.requests if len(r["item_ids"]) >= 6)
    items = list(req["item_ids"])
    for position, item in zip((0, 2, 5), unknown_ids):
        items[position] = item
    odd = dict(req, item_ids=items)
    local = in_process.recommend([Request(**{k: np.asarray(v) for k, v in odd.items()})])[0]
    assert local.history_unknown == len(unknown_ids)
    known = grpc_infer(served_repository.grpc_url, contract.PUBLIC_MODEL, br.good_tensors(req))
    assert int(known["history_unknown"][0]) == 0
    for model in MODELS:
        for got in _answers(served_repository, model, br.good_tensors(odd)):
            assert int(got["history_unknown"][0]) == len(unknown_ids), (model, got)
            assert int(got["history_dropped"][0]) == 0
            assert int(got["model_version"][0]) == 1
            assert got["rec_item_ids"].tolist() == local.item_ids.tolist()
            np.testing.assert_allclose(got["rec_scores"], local.scores, atol=1e-6)


def test_history_past_max_history_keeps_the_most_recent_events(served_repository, limits):
    req = served_repository.requests[4]
    total = limits.max_history + 5
    reps = total // len(req["item_ids"]) + 1
    end = max(req["timestamps"])
    long = dict(
        req,
        item_ids=(list(req["item_ids"]) * reps)[:total],
        actions=(list(req["actions"]) * reps)[:total],
        timestamps=[end - 60 * (total - 1 - i) for i in range(total)],  # chronological, none after request_time
    )
    recent = {
        k: (v[-limits.max_history :] if k in ("item_ids", "actions", "timestamps") else v) for k, v in long.items()
    }
    for model in MODELS:
        for got, want in zip(
            _answers(served_repository, model, br.good_tensors(long)),
            _answers(served_repository, model, br.good_tensors(recent)),
        ):
            assert int(got["history_dropped"][0]) == 5 and int(want["history_dropped"][0]) == 0, (got, want)
            assert int(got["history_unknown"][0]) == int(want["history_unknown"][0])
            assert same_answer(got, want) is None, model


# ------------------------------------------------------------------ what tritonserver 2.51 does not survive


def test_tritonserver_2_51_does_not_survive_two_malformed_shapes(tiny_repository, served_repository, tmp_path):
    """Pins two known failures of tritonserver 2.51 (bad_requests.crashes), on a server of its own
    (the public ensemble and its fused model only): they are in no other test nor in the soak.
    When a Triton upgrade answers them with INVALID_ARG instead, this test fails: move them into
    the catalogue (bad_requests.bad_cases).

    1. gRPC, item_ids shape [1, 2**61] INT64 and no data: 8 * 2**61 bytes wraps to 0, Triton's
       byte-size check passes and the Python stub of the answering instance aborts building the
       numpy array, before any oneranker code runs. That instance is dead for good (INTERNAL "Stub
       process ... is not healthy") while the server and the model report ready; the inference
       probe (oneranker_serving.probe, the k8s liveness probe) passes before and fails after.
    2. HTTP JSON, item_ids shape [1, 2**40]: Triton's JSON parser allocates 8 TiB before comparing
       the shape with the data; std::bad_alloc aborts the whole server."""
    from oneranker_serving import probe
    from oneranker_serving.local_server import TritonServer

    overflow, huge_json = br.crashes(served_repository.requests[0])
    good = br.good_tensors(served_repository.requests[1])
    log = tmp_path / "tritonserver.log"
    server = TritonServer(tiny_repository, log_file=log, model_control_mode="explicit", load_models=["oneranker"])
    server.start()
    try:
        server.wait_ready(180)
        grpc_infer(server.grpc_url, contract.PUBLIC_MODEL, good)
        assert probe.probe(server.http_url, contract.PUBLIC_MODEL, 8, None, 10.0) == []

        channel, stub = br.grpc_stub(server.grpc_url)
        status, message = br.send_grpc(channel, stub, overflow.case.grpc_request())
        assert status == "INTERNAL" and "is not healthy" in message, (status, message)
        outcomes = [br.send_grpc(channel, stub, br.grpc_request(contract.PUBLIC_MODEL, good)) for _ in range(8)]
        channel.close()
        assert any(s == "INTERNAL" and "not healthy" in str(m) for s, m in outcomes), outcomes
        assert "array is too big" in log.read_text(errors="replace")
        # ... and the health checks do not notice; the inference probe does (k8s liveness)
        assert server._get("/v2/health/ready") == 200
        assert server._get(f"/v2/models/{contract.PUBLIC_MODEL}/ready") == 200
        failures = probe.probe(server.http_url, contract.PUBLIC_MODEL, 8, None, 10.0)
        assert failures and all("HTTP 500" in f for f in failures), failures
        assert any("not healthy" in f for f in failures), failures

        body, headers = huge_json.case.http_request()
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            br.send_http(server.http_url, contract.PUBLIC_MODEL, body, headers)
        deadline = time.monotonic() + 60
        while server.is_running() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not server.is_running() and server.returncode == -6  # SIGABRT
        assert "std::bad_alloc" in log.read_text(errors="replace")
    finally:
        server.stop()
