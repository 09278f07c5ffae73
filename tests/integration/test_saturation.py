"""Saturated load on a real tritonserver: no request is held for the dynamic batcher's 500 ms wait.

With a default_queue_policy on a model's dynamic batching, Triton 2.51's batcher under saturation
sometimes held a whole batch for its fixed 500 ms re-check wait (one instance: about once a
second; two instances: rarely on a quiet machine, often with a core taken by another process),
README "Batching and threads". The shipped repository renders no queue policy; this test
saturates the topologies with the most batched models and fails if any request takes as long as
that wait, or if any request fails. It failed on the shipped repository of one instance with the
policy (the fused model), and with two instances with the policy while another process held a core.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from oneranker_client import contract
from oneranker_client.client import OneRankerClient

pytestmark = pytest.mark.triton

STALL_S = 0.45  # a held batch answers after >= ~0.5 s; a served tiny request takes ~10 ms saturated
CLIENTS = 8  # one full batch (max_batch_size) in flight, so the instances are always busy
SECONDS = 4.0


def saturate(url: str, model: str, requests: list, clients: int, seconds: float) -> tuple[list[float], list[str]]:
    """`clients` threads, each with its own gRPC client, sending back to back for `seconds`."""
    times: list[float] = []
    errors: list[str] = []
    deadline = time.perf_counter() + seconds

    def worker(offset: int) -> None:
        client = OneRankerClient(url, model=model, retries=0)
        i = offset
        try:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    client.recommend(requests[i % len(requests)])
                    times.append(time.perf_counter() - start)
                except Exception as err:  # reported by the assertion below
                    errors.append(repr(err))
                i += clients
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times, errors


@pytest.mark.parametrize("topology", ["fused", "numpy_beam"])
def test_saturated_requests_are_never_held_for_the_batcher_wait(served_repository, topology):
    model = contract.TOPOLOGY_MODELS[topology]
    times, errors = saturate(served_repository.grpc_url, model, served_repository.requests, CLIENTS, SECONDS)
    assert not errors, errors[:3]
    assert len(times) > 100, f"only {len(times)} requests answered in {SECONDS} s"
    held = [round(t, 3) for t in times if t >= STALL_S]
    assert not held, (
        f"{model}: {len(held)} of {len(times)} requests took >= {STALL_S} s ({held[:8]}); "
        f"p50 {np.median(times) * 1e3:.1f} ms"
    )
