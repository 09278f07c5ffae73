"""The served ensemble on a real tritonserver over real gRPC: equality with the in-process
pipeline and the PyTorch reference, metrics, overload shedding (bad input over gRPC and HTTP:
test_bad_input.py)."""

from __future__ import annotations

import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from oneranker_client import contract
from oneranker_serving import artifacts
from oneranker_serving.recommender import Request
from oneranker_serving.triton.counters import DEFAULT_INTERVAL_MS

pytestmark = pytest.mark.triton


def make_inputs(fields: dict, dtypes: dict | None = None) -> list:
    """Raw request fields -> InferInputs with a batch dim of 1 (dtypes from the contract unless
    overridden, to craft bad requests)."""
    out = []
    for spec in contract.PUBLIC.inputs:
        if spec.name not in fields:
            continue
        dtype = (dtypes or {}).get(spec.name, spec.numpy_dtype)
        value = np.asarray(fields[spec.name], dtype=dtype)
        if value.ndim == len(spec.dims):
            value = value[None]
        wire = {np.int64: "INT64", np.int32: "INT32", np.float32: "FP32", np.float64: "FP64"}[np.dtype(dtype).type]
        tensor = grpcclient.InferInput(spec.name, list(value.shape), wire)
        tensor.set_data_from_numpy(value)
        out.append(tensor)
    return out


def fields_of(req: dict, **options) -> dict:
    out = dict(req)
    out["request_time"] = [req["request_time"]]
    for key, value in options.items():
        out[key] = [value] if np.isscalar(value) else value
    return out


def infer(url: str, fields: dict, dtypes=None):
    client = grpcclient.InferenceServerClient(url)
    result = client.infer(contract.PUBLIC_MODEL, make_inputs(fields, dtypes), client_timeout=60)
    return {spec.name: result.as_numpy(spec.name)[0] for spec in contract.PUBLIC.outputs}


@pytest.fixture(scope="module")
def in_process(tiny_export):
    """What the fused model serves: the generation and ranking graphs (beam search in the graph)."""
    return artifacts.load_recommender(tiny_export / "export", engine="onnxruntime", threads=1, search="graph")


@pytest.fixture(scope="module")
def in_process_numpy(tiny_export):
    """What `oneranker_numpy_beam` serves: decoder-state graphs, numpy beam search."""
    return artifacts.load_recommender(tiny_export / "export", engine="onnxruntime", threads=1, search="numpy")


def expected_for(model: str, in_process, in_process_numpy):
    from oneranker_build.render import DEFAULT_TOPOLOGY

    graph_topologies = ("fused", "graphs")
    graph_models = {contract.TOPOLOGY_MODELS[t] for t in graph_topologies} | (
        {contract.PUBLIC_MODEL} if DEFAULT_TOPOLOGY in graph_topologies else set()
    )
    return in_process if model in graph_models else in_process_numpy


def as_request(req: dict, **options) -> Request:
    return Request(
        user_features=np.array(req["user_features"]),
        item_ids=np.array(req["item_ids"]),
        actions=np.array(req["actions"]),
        timestamps=np.array(req["timestamps"]),
        request_time=req["request_time"],
        **options,
    )


def test_served_equals_in_process_pipeline(served_repository, in_process, in_process_numpy):
    expected = expected_for(contract.PUBLIC_MODEL, in_process, in_process_numpy)
    for req in served_repository.requests:
        served = infer(served_repository.grpc_url, fields_of(req))
        local = expected.recommend([as_request(req)])[0]
        np.testing.assert_array_equal(served["rec_item_ids"], local.item_ids)
        np.testing.assert_allclose(served["rec_scores"], local.scores, atol=1e-6)
        np.testing.assert_array_equal(served["rec_source_head"], local.source_head)


def test_served_matches_pytorch_reference_except_near_ties(served_repository):
    from oneranker.reference import load_reference

    reference = load_reference(served_repository.run_dir)
    mismatches = 0
    for req in served_repository.requests:
        served = infer(served_repository.grpc_url, fields_of(req, top_k=5))
        ref = reference.recommend([as_request(req, top_k=5)])[0]
        if served["rec_item_ids"].tolist() != ref.item_ids.tolist():
            gaps = np.diff(np.sort(ref.scores))
            assert gaps.min() < 1e-5, (served, ref)  # only a near-tie may reorder
            mismatches += 1
    assert mismatches <= max(1, len(served_repository.requests) // 100)


def test_options_change_the_answer(served_repository):
    req = served_repository.requests[0]
    base = infer(served_repository.grpc_url, fields_of(req, top_k=7, num_candidates=20, beam_width=8))
    assert len(base["rec_item_ids"]) == 7
    assert np.all(np.diff(base["rec_scores"]) <= 0)
    excluded = infer(
        served_repository.grpc_url,
        fields_of(req, top_k=7, num_candidates=20, beam_width=8, exclude_item_ids=base["rec_item_ids"][:3].tolist()),
    )
    assert not set(excluded["rec_item_ids"]) & set(base["rec_item_ids"][:3].tolist())


def test_concurrent_requests_equal_single_requests(served_repository):
    reqs = served_repository.requests[:12]
    single = [infer(served_repository.grpc_url, fields_of(r)) for r in reqs]
    with ThreadPoolExecutor(max_workers=6) as pool:
        together = list(pool.map(lambda r: infer(served_repository.grpc_url, fields_of(r)), reqs * 2))
    for i, got in enumerate(together):
        want = single[i % len(reqs)]
        np.testing.assert_array_equal(got["rec_item_ids"], want["rec_item_ids"])
        np.testing.assert_allclose(got["rec_scores"], want["rec_scores"], atol=1e-6)


def _metric(text: str, name: str, *labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(label in line for label in labels):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_stage_metrics_rise_per_request(served_repository):
    """Fused topology: custom per-stage counters; graphs topology: Triton's per-model counters
    of generation / ranking are the per-stage latencies."""

    def scrape():
        return urllib.request.urlopen(served_repository.metrics_url, timeout=10).read().decode()

    client = grpcclient.InferenceServerClient(served_repository.grpc_url)
    # counters of earlier tests' requests still pending in the stubs go out within one interval
    time.sleep(DEFAULT_INTERVAL_MS / 1e3 + 0.3)
    before = scrape()
    for req in served_repository.requests[:3]:
        for model in (
            contract.TOPOLOGY_MODELS["fused"],
            contract.NUMPY_BEAM_PUBLIC_MODEL,
            contract.TOPOLOGY_MODELS["graphs"],
        ):
            client.infer(model, make_inputs(fields_of(req)))
    graph = 'beam_search="graph"'
    paths = (graph, 'beam_search="numpy",system="unified"')  # the fused model, the numpy beam baseline

    def counted(text: str) -> dict:
        return {path: _metric(text, "oneranker_requests_total", *path.split(",")) for path in paths}

    expected = {path: n + 3 for path, n in counted(before).items()}

    # each model's counter thread sends its counters up to counter_interval_ms later: wait for both
    deadline = time.monotonic() + 10
    while counted(after := scrape()) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counted(after) == expected
    assert _metric(after, "oneranker_candidates_total", graph) > _metric(before, "oneranker_candidates_total", graph)
    # the in-graph path times generate and rank (its beam search is inside generate); the numpy
    # beam search baseline times its select stage on its own
    for stage, search in (("generate", "graph"), ("rank", "graph"), ("select", "numpy")):
        label = f'stage="{stage}"'
        assert _metric(after, "oneranker_stage_seconds_total", label, f'beam_search="{search}"') > _metric(
            before, "oneranker_stage_seconds_total", label, f'beam_search="{search}"'
        ), stage
    for model in (contract.GENERATION_MODEL, contract.RANKING_MODEL):
        label = f'model="{model}"'
        assert _metric(after, "nv_inference_compute_infer_duration_us", label) > _metric(
            before, "nv_inference_compute_infer_duration_us", label
        ), model


@pytest.mark.parametrize("model", sorted(contract.TOPOLOGY_MODELS.values()))
def test_every_topology_equals_in_process_pipeline(served_repository, in_process, in_process_numpy, model):
    expected = expected_for(model, in_process, in_process_numpy)
    for req in served_repository.requests[:8]:
        client = grpcclient.InferenceServerClient(served_repository.grpc_url)
        result = client.infer(model, make_inputs(fields_of(req, top_k=6)), client_timeout=60)
        local = expected.recommend([as_request(req, top_k=6)])[0]
        np.testing.assert_array_equal(result.as_numpy("rec_item_ids")[0], local.item_ids)
        np.testing.assert_allclose(result.as_numpy("rec_scores")[0], local.scores, atol=1e-5)


def test_graphs_topology_batches_mixed_requests_like_single_ones(served_repository, in_process):
    """`oneranker_graphs` under a concurrent burst: requests of different history buckets, top_k,
    candidate counts, beam widths and exclusion lists share dynamic batches of the generation and
    ranking models (padded together, cut apart again); each answer equals the in-process graph
    path on that request alone."""
    model = contract.TOPOLOGY_MODELS["graphs"]
    validator = artifacts.load_validator(served_repository.repository / contract.PREPROCESS_MODEL / "1" / "artifacts")
    ad_ids = validator.tables.ad_ids
    cases = []
    for i, req in enumerate(served_repository.requests[:16]):
        options = {"top_k": 1 + (i * 5) % 12, "num_candidates": 16 + (i * 7) % 40, "beam_width": 2 + i % 9}
        if i % 3 == 0:
            options["exclude_item_ids"] = np.asarray(ad_ids[i : i + 1 + i % 5], dtype=np.int64)
        cases.append((req, options))

    def one(case):
        req, options = case
        client = grpcclient.InferenceServerClient(served_repository.grpc_url)
        return client.infer(model, make_inputs(fields_of(req, **options)), client_timeout=60)

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(one, cases * 2))
    for (req, options), result in zip(cases * 2, results):
        local = in_process.recommend([as_request(req, **options)])[0]
        np.testing.assert_array_equal(result.as_numpy("rec_item_ids")[0], local.item_ids)
        np.testing.assert_allclose(result.as_numpy("rec_scores")[0], local.scores, atol=1e-5)
        np.testing.assert_array_equal(result.as_numpy("rec_source_head")[0], local.source_head)


def _serve(repository, log):
    from oneranker_serving.local_server import TritonServer

    server = TritonServer(repository, log_file=log)
    server.start()
    server.wait_ready(120)
    return server


def test_tensorrt_repository_wiring_on_cpu_placeholders(tiny_run, tiny_export, in_process, tmp_path):
    """The `tensorrt` repository's ensembles and tensor blocks, with Python placeholder models
    (same contract, ONNX Runtime inside) in place of the plans, load and answer correctly: the
    public entry and its `graphs` ensemble (preprocess -> generation plan -> ranking plan), the
    only topology there, as the in-process graph path."""
    import json

    from oneranker_build.render import render_repository

    info = json.loads((tiny_export / "export" / "export_info.json").read_text())
    repo = render_repository(
        tiny_export / "export",
        tmp_path / "trt",
        "tensorrt",
        contract.ContractDims(**info["dims"]),
        info["checkpoint_sha256"],
        placeholder_engine="onnxruntime",
    )
    native = tiny_export / "tensorrt_native"
    render_repository(
        tiny_export / "export",
        native,
        "tensorrt",
        contract.ContractDims(**info["dims"]),
        info["checkpoint_sha256"],
    )
    plans = (contract.GENERATION_MODEL, contract.RANKING_MODEL)
    native_plans = {c.parent.name for c in native.glob("*/config.pbtxt") if "tensorrt_plan" in c.read_text()}
    assert native_plans == set(plans)  # the graphs topology's two engines are the only plans
    for name in plans:  # placeholders have the plans' tensor blocks
        plan_cfg = (native / name / "config.pbtxt").read_text()
        placeholder_cfg = (repo / name / "config.pbtxt").read_text()
        assert 'platform: "tensorrt_plan"' in plan_cfg
        assert (
            plan_cfg[plan_cfg.index("input [") : plan_cfg.index("instance_group")]
            == placeholder_cfg[placeholder_cfg.index("input [") : placeholder_cfg.index("instance_group")]
        )
    server = _serve(repo, tmp_path / "trt.log")
    try:
        from conftest import request_dict

        from oneranker.cli import example_request

        for row in range(0, 40, 8):
            req = request_dict(example_request(tiny_run.prep, row))
            for model in (contract.PUBLIC_MODEL, contract.TOPOLOGY_MODELS["graphs"]):
                got = grpcclient.InferenceServerClient(server.grpc_url).infer(model, make_inputs(fields_of(req)))
                want = in_process.recommend([as_request(req)])[0]
                np.testing.assert_array_equal(got.as_numpy("rec_item_ids")[0], want.item_ids)
    finally:
        server.stop()


def test_overload_is_answered_quickly_with_unavailable(tiny_run, tiny_export, tmp_path):
    """Past saturation, bounded queues shed load with UNAVAILABLE instead of growing latency;
    the server keeps serving afterwards."""
    import json
    import time

    from conftest import request_dict

    from oneranker.cli import example_request
    from oneranker_build.render import RenderSettings, render_repository

    info = json.loads((tiny_export / "export" / "export_info.json").read_text())
    settings = RenderSettings(max_batch_size=1, queue_policy=True, max_queue_size=1, max_queue_delay_us=0)
    repo = render_repository(
        tiny_export / "export",
        tmp_path / "tight",
        "onnxruntime",
        contract.ContractDims(**info["dims"]),
        info["checkpoint_sha256"],
        settings=settings,
    )
    server = _serve(repo, tmp_path / "tight.log")
    try:
        fields = fields_of(request_dict(example_request(tiny_run.prep, 0)), num_candidates=256, beam_width=64)

        def one(_):
            start = time.perf_counter()
            try:
                grpcclient.InferenceServerClient(server.grpc_url).infer(
                    contract.PUBLIC_MODEL, make_inputs(fields), client_timeout=30
                )
                return "ok", time.perf_counter() - start
            except InferenceServerException as err:
                return err.status(), time.perf_counter() - start

        with ThreadPoolExecutor(max_workers=24) as pool:
            outcomes = list(pool.map(one, range(96)))
        statuses = [s for s, _ in outcomes]
        assert "ok" in statuses
        assert "StatusCode.UNAVAILABLE" in statuses, statuses
        rejected = [t for s, t in outcomes if s == "StatusCode.UNAVAILABLE"]
        served = [t for s, t in outcomes if s == "ok"]
        assert np.median(rejected) < np.median(served) + 1.0  # shed at once, not after a long queue
        assert set(statuses) <= {"ok", "StatusCode.UNAVAILABLE"}, set(statuses)
        assert one(0)[0] == "ok" and server.is_live()
    finally:
        server.stop()


def test_torch_repository_reaches_ready_and_answers(
    tiny_run, tiny_export, tiny_cascade, in_process, in_process_numpy, tmp_path
):
    """The `torch` engine repository (PyTorch runner inside the Python models; the graphs
    topology's generation model hands the KV to the ranking model by DLPack) reaches ready and
    answers like the ONNX Runtime pipeline up to float tolerance; so does its cascade baseline.
    (Load time is a benchmark figure, not asserted here.)"""
    import json

    from conftest import request_dict

    from oneranker.cli import example_request
    from oneranker_build.render import CascadeExports, RenderSettings, render_repository

    info = json.loads((tiny_export / "export" / "export_info.json").read_text())
    halves = tiny_export / "export_cascade"
    cascade = CascadeExports(halves / "generator", halves / "ranker")
    # one instance per engine model: every stub imports torch, which makes loading slow on 2 cores
    one_each = RenderSettings(recommender_instances=1, generation_instances=1, ranking_instances=1)
    repo = render_repository(
        tiny_export / "export",
        tmp_path / "torch",
        "torch",
        contract.ContractDims(**info["dims"]),
        info["checkpoint_sha256"],
        settings=one_each,
        cascade=cascade,
    )
    server = _serve(repo, tmp_path / "torch.log")
    try:
        req = request_dict(example_request(tiny_run.prep, 3))
        for model in contract.TOPOLOGY_MODELS.values():
            got = grpcclient.InferenceServerClient(server.grpc_url).infer(model, make_inputs(fields_of(req)))
            want = expected_for(model, in_process, in_process_numpy).recommend([as_request(req)])[0]
            np.testing.assert_allclose(got.as_numpy("rec_scores")[0], want.scores, atol=1e-4)
        got = grpcclient.InferenceServerClient(server.grpc_url).infer(
            contract.CASCADE_PUBLIC_MODEL, make_inputs(fields_of(req))
        )
        want = artifacts.load_cascade_recommender(halves, engine="onnxruntime", threads=1).recommend([as_request(req)])[
            0
        ]
        np.testing.assert_allclose(got.as_numpy("rec_scores")[0], want.scores, atol=1e-4)
    finally:
        server.stop()


# ------------------------------------------------------------------ the cascade baseline, served


@pytest.fixture(scope="module")
def cascade_in_process(tiny_export):
    return artifacts.load_cascade_recommender(tiny_export / "export_cascade", engine="onnxruntime", threads=1)


def test_served_cascade_equals_in_process_cascade(served_repository, cascade_in_process):
    """`oneranker_cascade` (same preprocess, cascade generator's candidates, independent ranker
    re-encoding the history) equals the in-process run of the same graphs and code exactly."""

    def cascade_requests():
        text = urllib.request.urlopen(served_repository.metrics_url, timeout=10).read().decode()
        return _metric(text, "oneranker_requests_total", 'system="cascade"')

    before = cascade_requests()
    client = grpcclient.InferenceServerClient(served_repository.grpc_url)
    for req in served_repository.requests:
        result = client.infer(contract.CASCADE_PUBLIC_MODEL, make_inputs(fields_of(req)), client_timeout=60)
        local = cascade_in_process.recommend([as_request(req)])[0]
        np.testing.assert_array_equal(result.as_numpy("rec_item_ids")[0], local.item_ids)
        np.testing.assert_allclose(result.as_numpy("rec_scores")[0], local.scores, atol=1e-6)
        np.testing.assert_array_equal(result.as_numpy("rec_source_head")[0], local.source_head)
    # its own labelled counters, sent by its counter thread up to counter_interval_ms later
    deadline = time.monotonic() + 10
    while cascade_requests() < before + len(served_repository.requests) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cascade_requests() >= before + len(served_repository.requests)


def test_served_cascade_matches_pytorch_cascade_except_near_ties(served_repository, tiny_cascade, in_process):
    from oneranker.cascade import load_cascade

    reference = load_cascade(tiny_cascade.run_dir)
    client = grpcclient.InferenceServerClient(served_repository.grpc_url)
    mismatches, differs_from_unified = 0, 0
    for req in served_repository.requests:
        result = client.infer(contract.CASCADE_PUBLIC_MODEL, make_inputs(fields_of(req, top_k=5)), client_timeout=60)
        ref = reference.recommend([as_request(req, top_k=5)])[0]
        if result.as_numpy("rec_item_ids")[0].tolist() != ref.item_ids.tolist():
            assert np.diff(np.sort(ref.scores)).min() < 1e-5, (result.as_numpy("rec_item_ids"), ref)
            mismatches += 1
        np.testing.assert_allclose(np.sort(result.as_numpy("rec_scores")[0]), np.sort(ref.scores), atol=1e-4)
        unified = in_process.recommend([as_request(req, top_k=5)])[0]
        differs_from_unified += unified.item_ids.tolist() != ref.item_ids.tolist()
    assert mismatches <= max(1, len(served_repository.requests) // 100)
    assert differs_from_unified > 0  # really another model, not the unified one under a second name


def test_cascade_rejects_bad_input_like_the_unified_model(served_repository):
    req = served_repository.requests[0]
    with pytest.raises(InferenceServerException, match="top_k"):
        grpcclient.InferenceServerClient(served_repository.grpc_url).infer(
            contract.CASCADE_PUBLIC_MODEL, make_inputs(fields_of(req, top_k=-3))
        )
    result = grpcclient.InferenceServerClient(served_repository.grpc_url).infer(
        contract.CASCADE_PUBLIC_MODEL, make_inputs(fields_of(req))
    )
    assert result.as_numpy("rec_item_ids").shape[1] > 0
