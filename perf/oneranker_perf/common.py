"""Helpers every benchmark shares: the machine line, percentiles, the rotating order of an
interleaved measurement, the commit, the reproduce command, and the compute floor of one request
(its FLOPs and the matmul rate torch reaches here)."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time

import numpy as np

from .summary_file import git_commit as git_commit  # re-exported: the benches import it from here


def rotated(labels: list, i: int) -> list:
    """`labels` starting at position i (mod its length): the order of round i of an interleaved
    measurement, so no target always goes first."""
    k = i % len(labels)
    return labels[k:] + labels[:k]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def percentiles(times_s: list[float]) -> dict:
    """p50/p90/p99/mean in ms and the count; NaN figures for no times at all (a saturation window
    in which nothing completed is a measurement, not a crash: its errors still get reported)."""
    ms = np.asarray(times_s, dtype=float) * 1e3
    if ms.size == 0:
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan"), "n": 0}
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "n": int(len(ms)),
    }


def reproduce_command(module: str, argv) -> str:
    """The command line that reproduces a bench's report: `python -m MODULE ARGS`."""
    return f"python -m {module} " + shlex.join(sys.argv[1:] if argv is None else list(argv))


def matmul_gflops(threads: int, size: int = 512, repeats: int = 20) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def flops(cfg, length: int, n: int) -> dict:
    """Multiply-add FLOPs (2 per MAC) of one request, by stage (dominant terms)."""
    m, d = cfg.model, cfg.model.d_model
    f = cfg.data.num_profile_features + cfg.data.num_context_features
    N = f + length
    t2 = m.num_step2_tokens
    S = N + t2
    step1 = m.g_layers * (2 * N * d * 4 * d + 4 * N * N * d + 2 * N * d * d)
    step2 = m.h_layers * (
        2 * t2 * d * d * 2
        + 2 * N * d * 2 * d
        + 4 * t2 * N * d  # cross-attention
        + 2 * t2 * d * 4 * d
        + 4 * t2 * t2 * d  # self-attention
        + 4 * t2 * d * m.ffn_mult * d
    )  # FFN
    kv = m.r_layers * 2 * S * d * 2 * d
    step3 = (
        m.r_layers * (4 * n * d * d + 4 * n * S * d + 2 * n * d * 3 * d + 4 * n * d * m.ffn_mult * d) + 2 * n * d * d
    )
    return {"generate": step1 + step2 + kv, "rank": step3, "reencode": step1 + kv}
