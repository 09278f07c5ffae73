"""A release rolled out under load on a real tritonserver (explicit model control, as compose runs).

Release 1 is the session's onnxruntime repository; release 2 is a second tiny run whose
tokenizer seed differs, so its semantic IDs (and so its tokens and answers) differ. While client
threads call three ensembles, release 2 is promoted beside release 1 and loaded with the
project's rollout tooling (models first, ensembles last). Every answer must be exactly the answer
of the release it reports (`model_version`): an ensemble whose steps came from two releases
(preprocess tokens of one fed to the graphs of the other) would answer neither. Failed requests
stay under 0.1%.
"""

from __future__ import annotations

import copy
import threading
import time

import numpy as np
import pytest
from conftest import request_dict, require_tritonserver

from oneranker_client import contract

pytestmark = pytest.mark.triton

ENSEMBLES = (contract.PUBLIC_MODEL, contract.TOPOLOGY_MODELS["graphs"], contract.TOPOLOGY_MODELS["numpy_beam"])
MAX_FAILED_SHARE = 0.001


@pytest.fixture(scope="module")
def second_release(tiny_cfg, tmp_path_factory):
    """A release with other semantic IDs over the same catalogue: tokenizer seed 1, a short run."""
    from oneranker.pipeline import prepare
    from oneranker.train import train
    from oneranker_build.cli import build

    cfg = copy.deepcopy(tiny_cfg)
    cfg.tokenizer.seed = 1
    cfg.train.steps = 40
    run_dir = tmp_path_factory.mktemp("release2_run")
    train(cfg, run_dir, prep=prepare(cfg), progress=False)
    out = tmp_path_factory.mktemp("release2_build")
    build(run_dir, out, ["onnxruntime"])
    return out / "onnxruntime"


def _call(client, model: str, req: dict):
    """-> (model_version, rec_item_ids) of one answer."""
    import tritonclient.grpc as grpcclient

    inputs = []
    for spec in contract.PUBLIC.inputs:
        if spec.name in req:
            arr = np.asarray(req[spec.name], dtype=spec.numpy_dtype).reshape(1, -1)
            inputs.append(grpcclient.InferInput(spec.name, list(arr.shape), spec.wire_dtype))
            inputs[-1].set_data_from_numpy(arr)
    result = client.infer(model, inputs, client_timeout=30)
    return int(result.as_numpy("model_version").reshape(-1)[0]), tuple(result.as_numpy("rec_item_ids").reshape(-1))


def test_a_rollout_under_load_never_mixes_releases(tiny_run, tiny_repository, second_release, tmp_path):
    require_tritonserver()
    import tritonclient.grpc as grpcclient

    from oneranker.cli import example_request
    from oneranker_deploy import rollout
    from oneranker_serving.local_server import TritonServer

    live = tmp_path / "live"
    assert rollout.promote(tiny_repository, live) == 1
    requests = [request_dict(example_request(tiny_run.prep, row)) for row in range(4)]
    server = TritonServer(live, model_control_mode="explicit", load_models=["*"], log_file=tmp_path / "triton.log")
    server.start()
    try:
        server.wait_ready(240)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        expected = {1: {(m, i): _call(client, m, r)[1] for m in ENSEMBLES for i, r in enumerate(requests)}}
        answers, failures, stop = [], [], threading.Event()

        def load(model: str) -> None:
            own = grpcclient.InferenceServerClient(server.grpc_url)
            i = 0
            while not stop.is_set():
                key = (model, i % len(requests))
                try:
                    answers.append((key, *_call(own, model, requests[key[1]])))
                except Exception as err:  # counted, reported below
                    failures.append((key, str(err)[:200]))
                i += 1

        threads = [threading.Thread(target=load, args=(m,), daemon=True) for m in ENSEMBLES]
        for t in threads:
            t.start()
        time.sleep(1.0)
        assert rollout.promote(second_release, live) == 2
        rollout.load_models(server.http_url, rollout.load_order(live), timeout=300)
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(60)
        expected[2] = {(m, i): _call(client, m, r) for m in ENSEMBLES for i, r in enumerate(requests)}
        assert {v for v, _ in expected[2].values()} == {2}, "after the rollout every ensemble answers release 2"
        expected[2] = {k: items for k, (_, items) in expected[2].items()}
    finally:
        server.stop()

    assert any(expected[1][k] != expected[2][k] for k in expected[1]), "the releases answer alike: nothing to mix"
    total = len(answers) + len(failures)
    assert len(failures) <= MAX_FAILED_SHARE * total, (len(failures), total, failures[:3])
    versions = {v for _, v, _ in answers}
    assert versions == {1, 2}, f"answers seen from releases {versions} (load too short to span the rollout?)"
    mixed = [(key, v) for key, v, items in answers if items != expected[v][key]]
    assert not mixed, f"{len(mixed)} of {len(answers)} answers match no single release, e.g. {mixed[:3]}"
