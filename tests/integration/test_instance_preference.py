"""The preferred-instance layout on a real tritonserver: at concurrency 1 every batch of the fused
model runs on its preferred instance; under concurrent load the spill-over instance takes batches.

Which instance ran a batch is read from the server's verbose log (the Python backend logs
"model <m>, instance <i>, executing <n> requests" per batch). Without the rate limiter flag
(local_server.SCHEDULING_FLAGS) or the rendered priorities, Triton hands batches to the instances
in turn, and the first test fails.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import request_dict, require_tritonserver

from oneranker_client import contract
from oneranker_client.client import OneRankerClient
from oneranker_client.messages import RecommendRequest
from oneranker_perf.topology_bench import scrape_metrics, settled_metrics

pytestmark = pytest.mark.triton

EXECUTING = re.compile(r"model (\S+), instance (\S+), executing (\d+) requests")


def batches_by_instance(log: Path, start: int, model: str) -> dict[str, int]:
    """Batches each instance of `model` ran, from byte `start` of the log on."""
    with open(log, "rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    counts: dict[str, int] = {}
    for m, instance, _ in EXECUTING.findall(text):
        if m == model:
            counts[instance] = counts.get(instance, 0) + 1
    return counts


@pytest.fixture(scope="module")
def verbose_fused_server(tiny_run, tiny_repository, tmp_path_factory):
    from oneranker.cli import example_request
    from oneranker_serving.local_server import TritonServer

    require_tritonserver()
    log = tmp_path_factory.mktemp("preference") / "tritonserver.log"
    server = TritonServer(
        tiny_repository,
        log_file=log,
        log_verbose=1,
        model_control_mode="explicit",
        load_models=[contract.FUSED_MODEL],
    )
    server.start()
    try:
        server.wait_ready(120)
        n = len(tiny_run.prep.splits["test"])
        requests = [RecommendRequest(**request_dict(example_request(tiny_run.prep, i % n))) for i in range(8)]
        yield server, log, requests
    finally:
        server.stop()


def test_concurrency_one_runs_on_the_preferred_instance(verbose_fused_server):
    server, log, requests = verbose_fused_server
    model = contract.FUSED_MODEL
    client = OneRankerClient(server.grpc_url, model=model, retries=0)
    start = log.stat().st_size
    for i in range(30):
        before = scrape_metrics(server.metrics_url)
        client.recommend(requests[i % len(requests)])
        # Triton counts the request, and frees its instance, just after the answer has left: a
        # request sent in that instant would find the preferred instance busy. Wait for the
        # count, as a client with any pause would.
        settled_metrics(server.metrics_url, before, model, 1)
        time.sleep(0.002)
    client.close()
    counts = batches_by_instance(log, start, model)
    assert sum(counts.values()) == 30, counts
    # instances taken in turn would give the preferred one about 15
    assert counts.get(f"{model}_preferred_0", 0) >= 29, counts


def test_concurrent_load_spills_to_the_other_instance(verbose_fused_server):
    server, log, requests = verbose_fused_server
    model = contract.FUSED_MODEL
    start = log.stat().st_size

    def worker(offset: int) -> None:
        client = OneRankerClient(server.grpc_url, model=model, retries=0)
        for i in range(25):
            client.recommend(requests[(offset + i) % len(requests)])
        client.close()

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(worker, range(4)))
    counts = batches_by_instance(log, start, model)
    assert counts.get(f"{model}_preferred_0", 0) > 0 and counts.get(f"{model}_spill_0", 0) > 0, counts
