"""Training throughput: examples/s and tokens/s of a full optimizer step (forward, backward, AdamW)
for the `small` and `paper` models at history 128, 512 and 2048, with 1 and 2 processes (DDP over
gloo on CPU, NCCL on GPU), the fraction of padding the length buckets leave, and the achieved
fraction of this machine's matmul peak measured in the same run.

    python -m oneranker_perf.train_bench --out perf/results/train            # full grid
    python -m oneranker_perf.train_bench --out perf/results/train --quick    # small model, 128/512

Writes OUT/table.md (Markdown table under a description of the machine and the command),
OUT/results.json (every number), OUT/train_bench.png (tokens/s and % of peak per config) and
OUT/summary.json (`summary`).

Method
------
* Every (preset, history, processes) configuration runs in fresh processes (torch.multiprocessing
  spawn, `oneranker.distributed` for the process group: the same DDP wrapper, per-rank bucket
  sampler and thread split as `oneranker train` under torchrun). A multi-process run uses
  max(1, cores // processes) intra-op threads per process; the 1-process runs are measured with
  1 thread and with all cores (`--single-threads`), since on a busy machine 2 OpenMP threads can
  be slower than 1.
* Inputs are synthetic batches of the right shapes and value ranges (random semantic IDs,
  actions, time gaps, candidates, head targets) for the preset's model with
  model.max_history = history; history lengths are log-uniform in [8, history] (a long-tailed
  length distribution like real logs) so the length buckets matter. Buckets: history / 8, / 4,
  / 2, / 1. A batch is padded to its longest history (the CPU training path); "padding" is the
  padded fraction of the history slots fed, "padding w/o buckets" what padding every batch to the
  full history would waste.
* Batch per process = min(preset batch, --token-budget // history, --pair-budget // history^2)
  (memory: the HSTU attention keeps B x heads x L^2 tensors for backward); global batch =
  batch x processes. examples/s and tokens/s (real, non-padded history tokens) count all processes.
* FLOPs: `torch.utils.flop_counter.FlopCounterMode` (matmul-class ops: mm, bmm, addmm, attention)
  over one forward+backward, fitted exactly as f(B, L) = B (a + b L + c L^2) + k from four counts
  at small batches (every matmul in the model is linear in B x N or B x N^2 or batch-independent),
  then summed over the timed steps' actual shapes. Achieved FLOP/s = total / wall time.
* Peak: the best fp32 GFLOP/s of square torch.mm (1024 and 2048) measured by every process at the
  start of the same configuration run, with the same threads, all processes concurrently; the
  machine peak of a configuration is the sum over its processes. "% of peak" = achieved / peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from oneranker_perf.summary_file import git_commit, write_summary

HISTORIES = (128, 512, 2048)
PRESETS = ("small", "paper")


@dataclass
class Spec:
    preset: str
    history: int
    procs: int
    steps: int
    warmup: int
    token_budget: int
    device: str = "cpu"
    seed: int = 0
    pool: int = 512
    threads: int = 0  # intra-op threads per process; 0 = max(1, cores // procs)
    pair_budget: int = 1 << 23  # batch <= pair_budget // history^2 (attention memory is B x L^2)


@dataclass
class Result:
    preset: str
    history: int
    procs: int
    batch_per_proc: int
    threads_per_proc: int
    device: str
    steps: int
    seconds: float
    step_ms_median: float
    examples_per_s: float
    tokens_per_s: float
    padding_fraction: float
    padding_no_buckets: float
    gflop_per_step: float
    achieved_gflops: float
    peak_gflops: float
    fraction_of_peak: float
    max_rss_mib: float
    params: int
    status: str = "ok"
    error: str = ""
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------------


def _config(preset_name: str, history: int):
    from oneranker.config import preset

    cfg = preset(preset_name)
    cfg.model.max_history = cfg.data.max_history = history
    cfg.serve.length_buckets = tuple(
        sorted({max(8, history // 8), max(8, history // 4), max(8, history // 2), history})
    )
    return cfg.validate()


class _FakeSids:
    """What build_model needs from SemanticIds: fake-item centroids and level code features."""

    def __init__(self, cfg, rng):
        k, dim = cfg.tokenizer.num_fake_items, cfg.tokenizer.embedding_dim
        c = rng.normal(size=(k, dim))
        self.centroids = (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float32)
        self.level_code_features = rng.uniform(
            -1, 1, size=(cfg.tokenizer.sid_depth, cfg.tokenizer.max_codes, k)
        ).astype(np.float32)


def make_arrays(cfg, n: int, rng, lengths: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Synthetic `sample_arrays`-style inputs for n examples (see module docstring)."""
    from oneranker.pipeline import level_sizes

    L = cfg.model.max_history
    sizes = np.array(level_sizes(cfg))
    D = sizes.size
    if lengths is None:
        lo = min(8, L)
        lengths = np.exp(rng.uniform(np.log(lo), np.log(L), size=n)).astype(np.int64).clip(1, L)
    d = cfg.data
    n_cand, H = d.num_train_candidates, cfg.model.num_task_tokens
    feats = np.concatenate(
        [
            rng.integers(0, d.profile_cardinality, size=(n, d.num_profile_features)),
            rng.integers(0, d.context_cardinality, size=(n, d.num_context_features)),
        ],
        axis=1,
    )
    valid = np.arange(L)[None, :] < lengths[:, None]
    hist_sids = (rng.random((n, L, D)) * sizes).astype(np.int64) * valid[..., None]
    actions = rng.integers(2, 5, size=(n, L)) * valid
    dt = np.sort(rng.exponential(3600.0, size=(n, L)), axis=1)[:, ::-1].astype(np.float32) * valid
    values = rng.random((n, n_cand)).astype(np.float32)
    values[:, 0] = values.max(1) + 1
    return {
        "user_features": feats.astype(np.int64),
        "hist_sids": hist_sids,
        "hist_actions": actions.astype(np.int64),
        "hist_dt": np.ascontiguousarray(dt),
        "hist_len": lengths.astype(np.int64),
        "cand_sids": (rng.random((n, n_cand, D)) * sizes).astype(np.int64),
        "cand_attrs": np.stack(
            [rng.integers(0, d.num_advertisers, size=(n, n_cand)), rng.integers(0, d.num_categories, size=(n, n_cand))],
            axis=-1,
        ).astype(np.int64),
        "cand_bid": rng.uniform(0.1, 2.0, size=(n, n_cand)).astype(np.float32),
        "cand_values": values,
        "head_paths": (rng.random((n, H, D)) * sizes).astype(np.int64),
        "head_valid": rng.random((n, H)) < 0.9,
    }


def matmul_peak_gflops(seconds: float = 0.6, sizes=(1024, 2048)) -> float:
    """Best fp32 GFLOP/s of square torch.mm on this process's threads."""
    import torch

    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        reps, t0 = 0, time.perf_counter()
        while True:
            t1 = time.perf_counter()
            torch.mm(a, b)
            dt = time.perf_counter() - t1
            best = max(best, 2 * n**3 / dt / 1e9)
            reps += 1
            if time.perf_counter() - t0 > seconds / len(sizes) and reps >= 2:
                break
    return best


def _count_flops(step_module, batch) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        terms = step_module(batch, 10**6)
        terms["total"].backward()
    step_module.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def fit_flops(step_module, cfg, rng) -> tuple[np.ndarray, dict]:
    """Coefficients (a, b, c, k) of flops(B, L) = B (a + b L + c L^2) + k (see module docstring)."""
    from oneranker.pipeline import to_batch

    L = cfg.model.max_history
    ls = sorted({max(2, L // 8), max(3, L // 2), L})
    while len(ls) < 3:
        ls.append(ls[-1] + 1)
    points = [(1, ls[0]), (1, ls[1]), (1, ls[2]), (2, ls[0])]
    rows, ys = [], []
    for B, length in points:
        arrays = make_arrays(cfg, B, rng, lengths=np.full(B, min(length, L)))
        batch = to_batch(arrays, np.arange(B))
        ys.append(_count_flops(step_module, batch))
        rows.append([B, B * length, B * length**2, 1.0])
    coef = np.linalg.solve(np.array(rows, dtype=np.float64), np.array(ys))
    return coef, {"points": points, "flops": ys}


def flops_of(coef: np.ndarray, B: int, L: int) -> float:
    return float(coef[0] * B + coef[1] * B * L + coef[2] * B * L * L + coef[3])


def _worker(rank: int, world: int, spec: Spec, port: int, out_dir: str) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world),
            "ONERANKER_DEVICE": spec.device,
        }
    )
    result_path = Path(out_dir) / f"rank{rank}.json"
    try:
        res = _run_worker(rank, world, spec)
    except BaseException as err:  # noqa: BLE001 - reported in the table
        res = {"status": "error", "error": f"{type(err).__name__}: {err}"[:400]}
    result_path.write_text(json.dumps(res))


def _run_worker(rank: int, world: int, spec: Spec) -> dict:
    import torch

    from oneranker import distributed as D
    from oneranker.pipeline import build_model
    from oneranker.train import loss_terms, optimizer_step

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = spec.threads or max(1, cores // world)
    torch.set_num_threads(threads)
    ctx = D.init()
    try:
        cfg = _config(spec.preset, spec.history)
        cfg.train.steps = spec.steps + spec.warmup
        rng = np.random.default_rng([spec.seed, rank])
        torch.manual_seed(spec.seed)
        model = build_model(
            cfg, _FakeSids(cfg, np.random.default_rng(spec.seed)), cfg.data.num_advertisers, cfg.data.num_categories
        )
        step_module = D.TrainStep(model, cfg, loss_terms)
        coef, fit_info = (
            fit_flops(step_module, cfg, rng) if ctx.device.type == "cpu" or rank == 0 else (np.zeros(4), {})
        )
        model.to(ctx.device)
        batch_size = max(
            1, min(cfg.train.batch_size, spec.token_budget // spec.history, spec.pair_budget // spec.history**2)
        )
        arrays = make_arrays(cfg, spec.pool, rng)
        sampler = D.make_sampler(arrays["hist_len"], cfg.serve.length_buckets, batch_size, spec.seed, ctx)
        pin = ctx.device.type == "cuda"
        batches = D.Prefetcher(
            arrays, sampler, spec.steps + spec.warmup, ctx.device, cfg.serve.length_buckets, pin_shapes=pin
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)

        D.barrier(ctx)
        peak = matmul_peak_gflops()
        D.barrier(ctx)
        net = None
        times, shapes, tokens = [], [], []
        t_start = None
        for step, batch in enumerate(batches):
            if net is None:
                net = D.wrap(step_module, ctx, batch if ctx.enabled else None, step)
            if step == spec.warmup:
                D.barrier(ctx)
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize()
                t_start = time.perf_counter()
            t0 = time.perf_counter()
            optimizer_step(net, model, optimizer, batch, step, cfg)
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
            if step >= spec.warmup:
                times.append(time.perf_counter() - t0)
                shapes.append(tuple(batch["hist_actions"].shape))
                tokens.append(int(batch["hist_len"].sum()))
        if ctx.enabled:
            D.barrier(ctx)
        elapsed = time.perf_counter() - t_start
        batches.close()
        pad = 1.0 - sum(tokens) / max(1, sum(b * length for b, length in shapes))
        no_bucket = 1.0 - float(np.mean(arrays["hist_len"])) / spec.history
        flops = sum(flops_of(coef, B, L) for B, L in shapes)
        out = {
            "status": "ok",
            "elapsed": elapsed,
            "times": times,
            "shapes": shapes,
            "tokens": sum(tokens),
            "examples": sum(s[0] for s in shapes),
            "flops": flops,
            "peak_gflops": peak,
            "padding": pad,
            "padding_no_buckets": no_bucket,
            "batch": batch_size,
            "threads": threads,
            "device": str(ctx.device),
            "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "params": int(sum(p.numel() for p in model.parameters())),
            "flop_fit": fit_info,
            "flop_coef": coef.tolist(),
        }
    except BaseException:
        D.shutdown(ctx, failed=True)
        raise
    D.shutdown(ctx)
    return out


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(spec: Spec, scratch: Path, timeout: float) -> Result:
    import torch.multiprocessing as mp

    scratch.mkdir(parents=True, exist_ok=True)
    for f in scratch.glob("rank*.json"):
        f.unlink()
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, spec.procs, spec, port, str(scratch))) for r in range(spec.procs)]
    for p in procs:
        p.start()
    deadline = time.time() + timeout
    for p in procs:
        p.join(max(1.0, deadline - time.time()))
    timed_out = any(p.is_alive() for p in procs)
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(5)
    ranks = []
    for r in range(spec.procs):
        f = scratch / f"rank{r}.json"
        ranks.append(
            json.loads(f.read_text())
            if f.exists()
            else {"status": "error", "error": "timed out" if timed_out else f"rank {r} died (exit {procs[r].exitcode})"}
        )
    return summarize(spec, ranks)


def summarize(spec: Spec, ranks: list[dict]) -> Result:
    bad = [r for r in ranks if r.get("status") != "ok"]
    if bad:
        return Result(
            spec.preset,
            spec.history,
            spec.procs,
            0,
            0,
            spec.device,
            spec.steps,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            status="error",
            error=bad[0].get("error", ""),
        )
    elapsed = max(r["elapsed"] for r in ranks)
    examples = sum(r["examples"] for r in ranks)
    tokens = sum(r["tokens"] for r in ranks)
    if ranks[0]["device"].startswith("cuda"):
        flops = ranks[0]["flops"] * len(ranks)  # rank 0 counted (same shapes on every rank: pinned)
    else:
        flops = sum(r["flops"] for r in ranks)
    peak = sum(r["peak_gflops"] for r in ranks)
    achieved = flops / elapsed / 1e9
    r0 = ranks[0]
    step_ms = float(np.median([t for r in ranks for t in r["times"]]) * 1000)
    return Result(
        preset=spec.preset,
        history=spec.history,
        procs=spec.procs,
        batch_per_proc=r0["batch"],
        threads_per_proc=r0["threads"],
        device=r0["device"],
        steps=spec.steps,
        seconds=elapsed,
        step_ms_median=step_ms,
        examples_per_s=examples / elapsed,
        tokens_per_s=tokens / elapsed,
        padding_fraction=float(np.mean([r["padding"] for r in ranks])),
        padding_no_buckets=r0["padding_no_buckets"],
        gflop_per_step=flops / max(1, spec.steps * len(ranks)) / 1e9,
        achieved_gflops=achieved,
        peak_gflops=peak,
        fraction_of_peak=achieved / peak if peak else 0.0,
        max_rss_mib=max(r["max_rss_mib"] for r in ranks),
        params=r0["params"],
        extra={"flop_fit": r0["flop_fit"], "flop_coef": r0["flop_coef"]},
    )


def machine() -> dict:
    import torch

    info = {
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "os": f"{platform.system()} {platform.release()}",
    }
    try:
        info["usable_cores"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _fmt(x: float, digits: int = 1) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def two_process_speedups(results: list[Result]) -> dict[str, tuple[float, int]]:
    """{"preset@history": (2-process tokens/s over the faster 1-process layout's, its threads)}."""
    out = {}
    for r2 in results:
        ones = [
            r for r in results if r.procs == 1 and r.status == "ok" and (r.preset, r.history) == (r2.preset, r2.history)
        ]
        if r2.procs == 2 and r2.status == "ok" and ones:
            r1 = max(ones, key=lambda r: r.tokens_per_s)
            out[f"{r2.preset}@{r2.history}"] = (r2.tokens_per_s / r1.tokens_per_s, r1.threads_per_proc)
    return out


def summary(results: list[Result], info: dict, command: str, commit: str | None) -> dict:
    """summary.json: commit, machine, command and, per configuration "PRESET history L, P proc x T
    threads", examples/s, tokens/s, fraction of matmul peak, median step ms and status; plus the
    2-process speedups in tokens/s over the faster 1-process layout."""
    cores = info.get("usable_cores") or info.get("cpu_count")
    machine = f"{cores} cores ({info.get('cpu_model', '?')}), torch {info.get('torch')}" + (
        f", {info['gpu']}" if info.get("gpu") else ""
    )
    configs = {
        f"{r.preset} history {r.history}, {r.procs} proc x {r.threads_per_proc} threads": {
            "examples_per_s": r.examples_per_s,
            "tokens_per_s": r.tokens_per_s,
            "fraction_of_peak": r.fraction_of_peak,
            "step_ms_median": r.step_ms_median,
            "status": r.status,
        }
        for r in results
    }
    speedups = {k: ratio for k, (ratio, _) in two_process_speedups(results).items()}
    return {
        "commit": commit,
        "machine": machine,
        "command": command,
        "configs": configs,
        "two_process_speedup": speedups,
    }


def write_table(results: list[Result], info: dict, command: str, out: Path, commit: str | None = None) -> str:
    """OUT/table.md and OUT/summary.json; -> the table's text."""
    lines = [
        "# OneRanker training throughput",
        "",
        f"Command: `{command}`",
        "",
        "Machine: " + ", ".join(f"{k}={v}" for k, v in info.items()),
        "",
    ]
    load = info.get("load_average_at_start")
    cores = info.get("usable_cores") or info.get("cpu_count") or 1
    if load and load[0] > 0.5 * cores:
        lines += [
            f"**Shared machine**: load average {load[0]} on {cores} cores when the run started; other jobs "
            "took CPU time during the measurement, so absolute numbers and 1-vs-2-process ratios vary "
            "from run to run (each row's peak was measured under the same conditions as its step times).",
            "",
        ]
    lines += [
        "One step = forward + backward + AdamW. Batch is per process; examples/s and tokens/s count "
        "all processes (tokens = real, non-padded history tokens). Padding = padded share of the history "
        "slots fed with length buckets (L/8, L/4, L/2, L; batches padded to their longest history); "
        '"w/o buckets" = padding everything to L. Peak = best fp32 `torch.mm` GFLOP/s measured by the '
        "same processes at the start of the same run (sum over processes); % of peak = FlopCounterMode "
        "matmul FLOPs / wall time / peak. Inputs are synthetic tensors (see `train_bench.py`).",
        "",
        "| model | history | procs | batch/proc | threads/proc | examples/s | tokens/s | padding | padding w/o buckets "
        "| GFLOP/step | achieved GFLOP/s | peak GFLOP/s | % of peak | step ms (median) | max RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.status != "ok":
            lines.append(
                f"| {r.preset} | {r.history} | {r.procs} | - | - | - | - | - | - | - | - | - | - | - | "
                f"- |  <!-- {r.status}: {r.error} -->"
            )
            continue
        lines.append(
            f"| {r.preset} | {r.history} | {r.procs} | {r.batch_per_proc} | {r.threads_per_proc} | "
            f"{_fmt(r.examples_per_s)} | {_fmt(r.tokens_per_s)} | {r.padding_fraction:.1%} | "
            f"{r.padding_no_buckets:.1%} | {_fmt(r.gflop_per_step, 2)} | {_fmt(r.achieved_gflops)} | "
            f"{_fmt(r.peak_gflops)} | {r.fraction_of_peak:.1%} | {_fmt(r.step_ms_median)} | {r.max_rss_mib:,.0f} |"
        )
    errors = [r for r in results if r.status != "ok"]
    if errors:
        lines += ["", "Failed configurations:"] + [
            f"- {r.preset} history {r.history} x{r.procs}: {r.error}" for r in errors
        ]
    speed = [
        f"{k}: {ratio:.2f}x (vs 1 process x {t} threads)" for k, (ratio, t) in two_process_speedups(results).items()
    ]
    if speed:
        lines += ["", "2 processes vs the faster 1-process layout (tokens/s): " + ", ".join(speed)]
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    write_summary(out, summary(results, info, command, commit))
    return text


def plot(results: list[Result], out: Path) -> Path | None:
    ok = [r for r in results if r.status == "ok"]
    if not ok:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted(
        {(r.preset, r.history) for r in ok}, key=lambda x: (PRESETS.index(x[0]) if x[0] in PRESETS else 9, x[1])
    )
    procs = sorted({(r.procs, r.threads_per_proc) for r in ok})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(procs))
    for i, (p, t) in enumerate(procs):
        sel = [
            next((r for r in ok if (r.preset, r.history) == lab and (r.procs, r.threads_per_proc) == (p, t)), None)
            for lab in labels
        ]
        tok = [r.tokens_per_s if r else 0 for r in sel]
        frac = [100 * r.fraction_of_peak if r else 0 for r in sel]
        name = f"{p} process{'es' if p > 1 else ''} x {t} thread{'s' if t > 1 else ''}"
        axes[0].bar(x + i * width, tok, width, label=name)
        axes[1].bar(x + i * width, frac, width, label=name)
    for ax, title in ((axes[0], "training tokens/s (real history tokens)"), (axes[1], "% of matmul peak (same run)")):
        ax.set_xticks(x + width * (len(procs) - 1) / 2)
        ax.set_xticklabels([f"{a}\nL={b}" for a, b in labels])
        ax.set_title(title)
        ax.legend()
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_yscale("log")
    fig.tight_layout()
    path = out / "train_bench.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m oneranker_perf.train_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("perf/results/train"))
    parser.add_argument("--quick", action="store_true", help="small model, history 128 and 512, 2 timed steps")
    parser.add_argument("--presets", default=None, help="comma list (default small,paper; quick: small)")
    parser.add_argument("--histories", default=None, help="comma list (default 128,512,2048; quick: 128,512)")
    parser.add_argument("--procs", default="1,2", help="process counts to compare (default 1,2)")
    parser.add_argument(
        "--single-threads",
        default="1,all",
        help="thread counts of the 1-process runs: 1 and/or all cores (default 1,all); "
        "multi-process runs use cores // processes threads each",
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps per config (default 4; quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1)")
    parser.add_argument(
        "--token-budget",
        type=int,
        default=8192,
        help="batch per process = min(preset batch, budget // history) (default 8192)",
    )
    parser.add_argument(
        "--pair-budget",
        type=int,
        default=1 << 23,
        help="also batch <= budget // history^2: attention memory (default 8388608: 2 at 2048)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda", "auto"],
        help="cpu (default), cuda (NCCL; 2 processes need 2 GPUs) or auto",
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite table.md, summary.json and the PNG from OUT/results.json"
    )
    args = parser.parse_args(argv)
    if args.render_only:
        saved = json.loads((args.out / "results.json").read_text())
        results = [Result(**r) for r in saved["results"]]
        print(write_table(results, saved["machine"], saved["command"], args.out, saved.get("commit")))
        plot(results, args.out)
        return 0
    presets = (args.presets or ("small" if args.quick else "small,paper")).split(",")
    histories = [int(h) for h in (args.histories or ("128,512" if args.quick else "128,512,2048")).split(",")]
    procs = [int(p) for p in args.procs.split(",")]
    steps = args.steps or (2 if args.quick else 4)
    warmup = args.warmup if args.warmup is not None else 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    layouts = []
    for p in procs:
        if p == 1:
            for t in args.single_threads.split(","):
                t = cores if t.strip() == "all" else int(t)
                if (1, t) not in layouts:
                    layouts.append((1, t))
        else:
            layouts.append((p, 0))
    args.out.mkdir(parents=True, exist_ok=True)
    info, commit = machine(), git_commit()
    command = "python -m oneranker_perf.train_bench " + " ".join(argv if argv is not None else sys.argv[1:])
    results: list[Result] = []
    for preset_name in presets:
        for history in histories:
            for p, threads in layouts:
                spec = Spec(
                    preset_name,
                    history,
                    p,
                    steps,
                    warmup,
                    args.token_budget,
                    device=args.device,
                    threads=threads,
                    pair_budget=args.pair_budget,
                )
                t0 = time.time()
                res = run_config(spec, args.out / "scratch", args.timeout)
                results.append(res)
                status = (
                    res.status
                    if res.status != "ok"
                    else (
                        f"{res.examples_per_s:.1f} ex/s, {res.tokens_per_s:,.0f} tok/s, "
                        f"pad {res.padding_fraction:.1%}, "
                        f"{res.fraction_of_peak:.1%} of {res.peak_gflops:.0f} GFLOP/s peak"
                    )
                )
                print(
                    f"[train_bench] {preset_name} L={history} x{p} ({res.threads_per_proc} thr): {status} "
                    f"({time.time() - t0:.0f}s)" + (f" {res.error}" if res.error else ""),
                    flush=True,
                )
                (args.out / "results.json").write_text(
                    json.dumps(
                        {
                            "machine": info,
                            "commit": commit,
                            "command": command,
                            "results": [asdict(r) for r in results],
                        },
                        indent=1,
                    )
                )
    for f in (args.out / "scratch").glob("rank*.json"):
        f.unlink()
    try:
        (args.out / "scratch").rmdir()
    except OSError:
        pass
    print(write_table(results, info, command, args.out, commit))
    png = plot(results, args.out)
    if png:
        print(f"wrote {args.out / 'table.md'}, {png}, {args.out / 'results.json'}")
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
