"""Session fixtures: data is built, a model trained, exported and served ONCE per test session.

tiny_prep          the `tiny` preset's dataset, splits and semantic IDs
tiny_run           a trained tiny run directory (+ its model, prep and training summary)
tiny_cascade       the cascade baseline on the same data and semantic IDs (short: 12 steps each)
tiny_export        ONNX graphs + generation tables of that run (and of the cascade's two runs)
tiny_other_decoder the same tiny run with the other semantic-ID decoder, trained and exported
tiny_repository    rendered onnxruntime Triton repository (with `oneranker_cascade`)
served_repository  a real tritonserver on free ports serving it (grpc_url, run_dir, requests)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_cfg():
    from oneranker.config import preset

    return preset("tiny")


@pytest.fixture(scope="session")
def tiny_prep(tiny_cfg):
    from oneranker.pipeline import prepare

    return prepare(tiny_cfg)


@dataclass
class TrainedRun:
    run_dir: Path
    model: object
    prep: object
    summary: dict


@pytest.fixture(scope="session")
def tiny_run(tiny_cfg, tiny_prep, tmp_path_factory) -> TrainedRun:
    from oneranker.train import train

    run_dir = tmp_path_factory.mktemp("tiny_run")
    result = train(tiny_cfg, run_dir, prep=tiny_prep, progress=False)
    return TrainedRun(run_dir, result["model"], result["prep"], result["summary"])


@pytest.fixture(scope="session")
def tiny_cascade(tiny_cfg, tiny_prep, tmp_path_factory):
    """oneranker.cascade.CascadeRun: generator and independent ranker, 12 steps each (enough to
    test wiring and equality, not quality)."""
    import copy

    from oneranker.cascade import train_cascade

    cfg = copy.deepcopy(tiny_cfg)
    cfg.train.steps, cfg.train.warmup_steps = 12, 2
    return train_cascade(cfg, tmp_path_factory.mktemp("cascade"), prep=tiny_prep, progress=False)


@pytest.fixture(scope="session")
def tiny_export(tiny_run, tiny_cascade, tmp_path_factory) -> Path:
    from oneranker_build.cli import build

    out = tmp_path_factory.mktemp("tiny_build")
    build(tiny_run.run_dir, out, ["onnxruntime"], cascade_run=tiny_cascade.run_dir)
    return out


@pytest.fixture(scope="session")
def tiny_other_decoder(tiny_cfg, tiny_prep, tmp_path_factory) -> tuple[TrainedRun, Path]:
    """(run, build folder) of the tiny preset with the decoder that is NOT the default, so both
    decoders are exported and checked against the reference on a trained model."""
    import copy

    from oneranker.config import DECODERS
    from oneranker.train import train
    from oneranker_build.cli import build

    cfg = copy.deepcopy(tiny_cfg)
    cfg.model.decoder = next(d for d in DECODERS if d != tiny_cfg.model.decoder)
    run_dir = tmp_path_factory.mktemp("tiny_other_decoder")
    result = train(cfg, run_dir, prep=tiny_prep, progress=False)
    out = tmp_path_factory.mktemp("tiny_other_decoder_build")
    build(run_dir, out, ["onnxruntime"])
    return TrainedRun(run_dir, result["model"], result["prep"], result["summary"]), out


@pytest.fixture(scope="session")
def tiny_repository(tiny_export) -> Path:
    return tiny_export / "onnxruntime"


@dataclass
class Served:
    grpc_url: str
    http_url: str
    metrics_url: str
    run_dir: Path
    repository: Path
    requests: list = field(default_factory=list)
    server: object = None


def request_dict(req) -> dict:
    return {
        "user_features": np.asarray(req.user_features).tolist(),
        "item_ids": np.asarray(req.item_ids).tolist(),
        "actions": np.asarray(req.actions).tolist(),
        "timestamps": np.asarray(req.timestamps).tolist(),
        "request_time": int(req.request_time),
    }


@pytest.fixture(scope="session")
def served_repository(tiny_run, tiny_repository, tmp_path_factory):
    from oneranker.cli import example_request
    from oneranker_serving.local_server import TritonServer

    log = tmp_path_factory.mktemp("triton_logs") / "tritonserver.log"
    server = TritonServer(tiny_repository, log_file=log)
    server.start()
    try:
        server.wait_ready(120)
        n = len(tiny_run.prep.splits["test"])
        rows = np.linspace(0, n - 1, num=min(n, 24)).astype(int)
        requests = [request_dict(example_request(tiny_run.prep, int(r))) for r in rows]
        yield Served(
            server.grpc_url, server.http_url, server.metrics_url, tiny_run.run_dir, tiny_repository, requests, server
        )
    finally:
        server.stop()


def require_tritonserver() -> None:
    """Skip unless the bootstrap installed tritonserver (ONERANKER_REQUIRE_TRITON=1 makes it fail)."""
    from oneranker_serving import triton_install

    try:
        triton_install.find_tritonserver()
    except RuntimeError as e:
        if os.environ.get("ONERANKER_REQUIRE_TRITON") == "1":
            raise
        pytest.skip(str(e))


def read_until(proc, prefix: str, timeout: float = 60.0) -> list[str]:
    """Lines of a subprocess's stdout up to (and with) the first one starting with `prefix`, or
    all it printed before exiting or `timeout` seconds."""
    import time

    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith(prefix):
            break
    return lines
