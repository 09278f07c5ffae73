"""The request lifecycle on a real tritonserver: warm-up before ready, cancellation and deadlines.

One server over the session's onnxruntime repository, started with a per-stage delay
(`ONERANKER_STAGE_DELAY_S`, fault injection) so that a cancellation or a deadline lands between
stages:
  * ready only after warm-up: every Python model has answered its warm-up sample (Triton's
    counts at ready; the fused model's own counter follows within its send interval) before the
    first client request;
  * a gRPC-cancelled request to the directly called fused model stops at the next stage boundary
    (`oneranker_cancelled_total{stage}` +1) and its later stages never run;
  * inside an ensemble the composing models never see the cancellation; Triton's own
    between-step check drops the request (the next step's execution count does not move);
  * a short client deadline yields DEADLINE_EXCEEDED and the model's counter shows the work
    was dropped.
"""

from __future__ import annotations

import time
import urllib.request

import numpy as np
import pytest
from conftest import require_tritonserver

from oneranker_build.render import RenderSettings
from oneranker_client import contract
from oneranker_serving.triton.counters import DEFAULT_INTERVAL_MS
from oneranker_serving.triton.models import STAGE_DELAY_ENV

pytestmark = pytest.mark.triton

DELAY_S = 0.4  # per stage; a cancel sent 0.15 s after the request lands in the first pause
# a counter of the fused model shows up to one send interval after the work it counts
COUNTER_WAIT_S = 5 * DELAY_S + DEFAULT_INTERVAL_MS / 1e3


@pytest.fixture(scope="module")
def delayed_server(tiny_repository, served_repository, tmp_path_factory):
    require_tritonserver()
    from oneranker_serving.local_server import TritonServer

    log = tmp_path_factory.mktemp("lifecycle_logs") / "tritonserver.log"
    server = TritonServer(tiny_repository, log_file=log, env={STAGE_DELAY_ENV: str(DELAY_S)})
    server.start()
    try:
        server.wait_ready(180)
        server.metrics_at_ready = _scrape(server.metrics_url)
        # the fused model's own counters of its warm-up go out within one send interval: wait, so
        # that no test reads them arriving late as work of its own requests
        server.warmups_counted = _wait_for(
            lambda: (
                _metric(_scrape(server.metrics_url), "oneranker_requests_total", *FUSED[1:], 'system="unified"')
                == RenderSettings().recommender_instances
            ),
            DEFAULT_INTERVAL_MS / 1e3 + 5,
        )
        server.requests = served_repository.requests
        yield server
    finally:
        server.stop()


def _scrape(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return opener.open(url, timeout=5).read().decode()


def _metric(text: str, name: str, *labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(label in line for label in labels):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _inputs(req: dict) -> list:
    import tritonclient.grpc as grpcclient

    out = []
    for spec in contract.PUBLIC.inputs:
        if spec.name in req:
            arr = np.asarray(req[spec.name], dtype=spec.numpy_dtype).reshape(1, -1)
            inp = grpcclient.InferInput(spec.name, list(arr.shape), spec.wire_dtype)
            inp.set_data_from_numpy(arr)
            out.append(inp)
    return out


def _wait_for(fn, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


FUSED = ('model="recommender"', 'beam_search="graph"')


def test_ready_only_after_every_model_warmed_up(delayed_server):
    """At the moment the server reports ready, before any client request: every non-ensemble
    model has answered its warm-up sample once per instance (Triton's success count) and no
    ensemble has been called; the fused model's own request counter reaches one per instance
    within its send interval."""
    text, s = delayed_server.metrics_at_ready, RenderSettings()
    instances = {
        contract.PREPROCESS_MODEL: s.preprocess_instances,
        contract.FUSED_MODEL: s.recommender_instances,
        contract.NUMPY_BEAM_MODEL: s.recommender_instances,
        contract.CASCADE_MODEL: s.recommender_instances,
        contract.GENERATION_MODEL: s.generation_instances,
        contract.RANKING_MODEL: s.ranking_instances,
    }
    warmed = {m: _metric(text, "nv_inference_request_success", f'model="{m}"') for m in instances}
    assert warmed == {m: float(n) for m, n in instances.items()}

    assert delayed_server.warmups_counted, "the fused model's counter never showed its warm-up"
    for ensemble in contract.ENSEMBLES:
        assert _metric(text, "nv_inference_request_success", f'model="{ensemble}"') == 0, ensemble


def test_a_cancelled_request_to_the_fused_model_stops_at_the_next_stage(delayed_server):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(delayed_server.grpc_url)
    before = _scrape(delayed_server.metrics_url)
    call = client.async_infer(contract.FUSED_MODEL, _inputs(delayed_server.requests[0]), callback=lambda r, e: None)
    time.sleep(0.15)  # validated, now in the pause before the generation graph
    call.cancel()  # (tritonclient does not call the callback of a cancelled request)

    def cancelled_at_generate():
        return _metric(_scrape(delayed_server.metrics_url), "oneranker_cancelled_total", 'stage="generate"', *FUSED[1:])

    base = _metric(before, "oneranker_cancelled_total", 'stage="generate"', *FUSED[1:])
    assert _wait_for(lambda: cancelled_at_generate() == base + 1, COUNTER_WAIT_S), "the model did not see the cancel"
    time.sleep(3 * DELAY_S)  # long enough for the later stages, had they run
    after = _scrape(delayed_server.metrics_url)
    for stage in ("generate", "rank"):
        seconds = (f'stage="{stage}"', 'beam_search="graph"')
        assert _metric(after, "oneranker_stage_seconds_total", *seconds) == _metric(
            before, "oneranker_stage_seconds_total", *seconds
        ), f"stage {stage} ran for a cancelled request"
    assert _metric(after, "oneranker_cancelled_total", 'stage="rank"') == _metric(
        before, "oneranker_cancelled_total", 'stage="rank"'
    )
    # and the server answers the next request normally
    answer = client.infer(contract.FUSED_MODEL, _inputs(delayed_server.requests[1]))
    assert answer.as_numpy("rec_item_ids").shape[1] > 0


def test_a_cancelled_ensemble_request_is_dropped_between_steps_by_triton(delayed_server):
    """The graphs ensemble: cancelled while preprocess pauses -> preprocess (which cannot see the
    cancel inside an ensemble) runs to its end, then Triton cancels the generation step's request
    before it executes (its CANCELED failure count +1, its execution count unchanged)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(delayed_server.grpc_url)
    model = contract.TOPOLOGY_MODELS["graphs"]
    before = _scrape(delayed_server.metrics_url)
    call = client.async_infer(model, _inputs(delayed_server.requests[2]), callback=lambda r, e: None)
    time.sleep(0.15)
    call.cancel()
    generation = 'model="generation"'

    def cancelled() -> float:
        text = _scrape(delayed_server.metrics_url)
        return _metric(text, "nv_inference_request_failure", generation, 'reason="CANCELED"')

    base = _metric(before, "nv_inference_request_failure", generation, 'reason="CANCELED"')
    assert _wait_for(lambda: cancelled() == base + 1, 5 * DELAY_S), "Triton did not cancel the next step"
    after = _scrape(delayed_server.metrics_url)
    executions = [_metric(text, "nv_inference_exec_count", generation) for text in (before, after)]
    assert executions[0] == executions[1], "the generation step executed for a cancelled request"
    assert _metric(after, "nv_inference_request_success", 'model="preprocess"') == 1 + _metric(
        before, "nv_inference_request_success", 'model="preprocess"'
    )


def test_a_short_deadline_is_deadline_exceeded_and_the_work_is_dropped(delayed_server):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(delayed_server.grpc_url)
    before = _scrape(delayed_server.metrics_url)
    with pytest.raises(InferenceServerException) as info:
        client.infer(contract.FUSED_MODEL, _inputs(delayed_server.requests[3]), client_timeout=0.15)
    assert "DEADLINE_EXCEEDED" in str(info.value.status()).upper() or "Deadline" in str(info.value)

    def dropped() -> float:
        text = _scrape(delayed_server.metrics_url)
        return sum(
            _metric(text, "oneranker_cancelled_total", f'stage="{s}"', 'beam_search="graph"')
            - _metric(before, "oneranker_cancelled_total", f'stage="{s}"', 'beam_search="graph"')
            for s in ("validate", "generate", "rank")
        )

    assert _wait_for(lambda: dropped() >= 1, COUNTER_WAIT_S), "the model never saw the expired deadline"
