"""Data-parallel training with 2 CPU processes (torchrun + DDP over gloo), through the normal
`oneranker train` command: parameters stay identical across ranks after every step, the loss
falls, and rank 0's checkpoint reloads into (and resumes in) a single process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
STEPS = 14
OVERRIDES = ["train.warmup_steps=2", "train.lr=0.004", "train.batch_size=16", "train.log_every=1"]


def _env() -> dict:
    env = dict(os.environ)
    paths = [str(REPO / p) for p in ("training", "build", "client", "perf")]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    env["ONERANKER_CHECK_SYNC"] = "1"
    env["ONERANKER_DEVICE"] = "cpu"
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("ddp_run")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "oneranker.cli",
        "train",
        "--preset",
        "tiny",
        "--steps",
        str(STEPS),
        "--no-eval",
        "--run-dir",
        str(run_dir),
    ]
    for item in OVERRIDES:
        cmd += ["--set", item]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return run_dir


def test_params_identical_across_ranks_every_step(ddp_run):
    history = json.loads((ddp_run / "train_history.json").read_text())
    assert [h["step"] for h in history] == list(range(STEPS))
    for h in history:
        sums = h["param_checksums"]
        assert len(sums) == 2, h
        assert sums[0] == sums[1], f"ranks diverged at step {h['step']}: {sums}"
    # the parameters do change (a checksum that never moves would prove nothing)
    assert len({h["param_checksums"][0] for h in history}) == STEPS


def test_loss_falls(ddp_run):
    history = json.loads((ddp_run / "train_history.json").read_text())
    total = np.array([h["total"] for h in history])
    assert total[-4:].mean() < total[:3].mean(), total.round(3).tolist()


def test_rank0_checkpoint_reloads_single_process(ddp_run, tmp_path):
    from oneranker.checkpoint import load_run
    from oneranker.distributed import param_checksum
    from oneranker.pipeline import prepare, sample_arrays, to_batch
    from oneranker.train import train

    cfg, model, sids, manifest = load_run(ddp_run)
    assert manifest["world_size"] == 2 and manifest["step"] == STEPS
    assert not any(k.startswith("module.") for k in model.state_dict())
    history = json.loads((ddp_run / "train_history.json").read_text())
    assert param_checksum(model) == history[-1]["param_checksums"][0]

    prep = prepare(cfg, sids=sids)
    arrays = sample_arrays(prep, prep.splits["test"])
    with torch.no_grad():
        scores = model(to_batch(arrays, np.arange(8)))["scores"]
    assert torch.isfinite(scores).all()

    # resume the 2-process run in ONE process for 2 more steps
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for f in ddp_run.iterdir():
        if f.is_file():
            (resumed / f.name).write_bytes(f.read_bytes())
    import shutil

    shutil.copytree(ddp_run / "sids", resumed / "sids", dirs_exist_ok=True)
    cfg.train.steps = STEPS + 2
    result = train(cfg, resumed, prep=prep, resume=True, progress=False)
    assert result["summary"]["world_size"] == 1
    assert result["summary"]["manifest"]["step"] == STEPS + 2
    assert np.isfinite(result["summary"]["last_loss"]["total"])
