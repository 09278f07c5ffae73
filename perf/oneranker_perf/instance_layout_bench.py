"""One preferred engine instance against instances taken in turn, measured side by side.

    python -m oneranker_perf.instance_layout_bench --run-dir artifacts/runs/small \
        --export artifacts/model_repository/export --out perf/results/instance_layout

Two onnxruntime repositories rendered from one export, everything else `RenderSettings` defaults:

    plain      each engine model's instances in one group; the server runs without the rate
               limiter (local_server.scheduling_flags): Triton hands batches to free instances in turn
    preferred  the shipped layout (render.instance_group_block): one preferred instance and
               spill-over ones; the server runs with local_server.SCHEDULING_FLAGS

One tritonserver each, both up at once. The fused model of both is measured interleaved
(topology_bench.paired_comparison): concurrency 1 request by request and in rotating blocks,
saturation in rotating windows. Then, in `rounds` rounds of alternating order, each layout's fused
model served and the same serving code in process, interleaved call by call
(topology_bench.served_vs_in_process): served c1 p50 minus in-process p50 per layout; and an open
loop at MODERATE_LOAD of the lower saturated throughput, where the spill-over instance takes only
some batches. Writes results.md, results.json, results.png and summary.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import git_commit, machine, percentiles, reproduce_command, rotated
from .summary_file import write_summary
from .topology_bench import C1_BLOCK, bench_requests, latency_loop, paired_comparison, served_vs_in_process

LAYOUTS = ("plain", "preferred")
# Moderate load: an open loop at this fraction of the lower saturated throughput of the two layouts
# (measured earlier in the same run), between concurrency 1 and saturation.
MODERATE_LOAD = 0.4


def run(
    run_dir: Path,
    export_dir: Path,
    out: Path,
    n_latency: int,
    concurrency: int,
    seconds: float,
    n_requests: int,
    rounds: int = 2,
    command: str = "",
) -> dict:
    from oneranker_build.render import RenderSettings, render_repository
    from oneranker_client import contract
    from oneranker_client.client import OneRankerClient
    from oneranker_serving import artifacts
    from oneranker_serving.local_server import TritonServer

    _, raw, reqs = bench_requests(run_dir, n_requests)
    info = artifacts.read_export_info(export_dir)
    dims = contract.ContractDims(**info["dims"])
    settings = RenderSettings()
    model = contract.TOPOLOGY_MODELS["fused"]
    local = artifacts.load_recommender(export_dir, "onnxruntime", threads=settings.intra_op_threads, search="graph")
    latency_loop(lambda r: local.recommend([r]), raw, 10)  # warm-up: first calls allocate
    servers: dict = {}
    flags: dict = {}
    with tempfile.TemporaryDirectory(prefix="instance-layout-") as tmp:
        try:
            for layout in LAYOUTS:
                preferred = layout == "preferred"
                repo = render_repository(
                    export_dir,
                    Path(tmp) / layout,
                    "onnxruntime",
                    dims,
                    info["checkpoint_sha256"],
                    settings=RenderSettings(preferred_instance=preferred),
                )
                # the server takes the rate limiter flag only for a repository with priorities
                server = TritonServer(repo, log_file=Path(tmp) / f"{layout}.log")
                servers[layout] = server.start()
                flags[layout] = list(server.scheduling_flags)
            for server in servers.values():
                server.wait_ready(180)
                with OneRankerClient(server.grpc_url, model=model, retries=0) as client:
                    latency_loop(client.recommend, reqs, 10)  # warm-up
            print(f"[instance-layout] {' vs '.join(LAYOUTS)}: {model} interleaved ...", flush=True)
            measured = paired_comparison(
                {k: (s.grpc_url, model) for k, s in servers.items()},
                reqs,
                n_latency,
                concurrency,
                seconds,
                c1_block=C1_BLOCK,
            )
            rate = MODERATE_LOAD * min(m["throughput_rps"] for m in measured.values())
            print(f"[instance-layout] moderate load, {rate:.0f} req/s open loop, {rounds} rounds ...", flush=True)
            windows: dict = {k: [] for k in LAYOUTS}
            for r in range(rounds):
                for layout in rotated(list(LAYOUTS), r):
                    windows[layout].append(paced_loop(servers[layout].grpc_url, model, reqs, rate, seconds / rounds))
            moderate = {}  # per layout, the rounds' windows pooled
            for layout, ws in windows.items():
                answered = [t for w in ws for t in w["times_s"]]
                moderate[layout] = {
                    **percentiles(answered),
                    "rate_rps": len(answered) / sum(w["seconds"] for w in ws),
                    "errors": sum(w["errors"] for w in ws),
                }
            print(f"[instance-layout] served vs in process, call by call, {rounds} rounds ...", flush=True)
            call_by_call: dict = {k: [] for k in LAYOUTS}
            for r in range(rounds):
                for layout in rotated(list(LAYOUTS), r):
                    pair = served_vs_in_process(servers[layout].grpc_url, model, local, raw, reqs, n_latency)
                    call_by_call[layout].append(pair)
        finally:
            for server in servers.values():
                server.stop()
    results = {
        "machine": machine(),
        "commit": git_commit(),
        "command": command,
        "model": model,
        "requests": n_requests,
        "concurrency": concurrency,
        "scheduling_flags": flags,
        "measured": measured,
        "call_by_call": call_by_call,
        "moderate_load": {"fraction_of_saturation": MODERATE_LOAD, "target_rps": rate, **moderate},
    }
    write_report(results, out)
    return results


def paced_loop(url: str, model: str, requests: list, rate_rps: float, seconds: float, workers: int = 8) -> dict:
    """Open-loop load: request i is due at start + i / rate_rps, sent by one of `workers` threads
    (each with its own client); latency from its due time to its answer, so a request that waits
    for a free thread counts the wait. -> {"times_s": latencies, "seconds": elapsed, "errors"}."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from oneranker_client.client import OneRankerClient

    local = threading.local()
    n = max(1, int(rate_rps * seconds))
    times: list[float] = []
    errors = [0]

    def send(i: int, start: float) -> None:
        if not hasattr(local, "client"):
            local.client = OneRankerClient(url, model=model, retries=0)
        due = start + i / rate_rps
        time.sleep(max(0.0, due - time.perf_counter()))
        try:
            local.client.recommend(requests[i % len(requests)])
            times.append(time.perf_counter() - due)
        except Exception:  # counted, reported
            errors[0] += 1

    start = time.perf_counter() + 0.05
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda i: send(i, start), range(n)))
    return {"times_s": times, "seconds": time.perf_counter() - start, "errors": errors[0]}


def gaps(results: dict, layout: str) -> list[float]:
    """Served minus in-process p50 (ms) of each call-by-call round."""
    return [r["served"]["p50_ms"] - r["in_process"]["p50_ms"] for r in results["call_by_call"][layout]]


def summary(results: dict) -> dict:
    """summary.json: commit, machine, command and, per layout, the fused model's concurrency-1 p50/p99
    (interleaved request by request), p50 in blocks, saturated req/s, errors, the served minus
    in-process p50 of each call-by-call round with their mean, and at moderate load (open loop at
    MODERATE_LOAD of saturation) p50/p99, answered req/s and errors."""
    out = {"commit": results.get("commit"), "machine": results["machine"], "command": results.get("command")}
    for layout in LAYOUTS:
        m = results["measured"][layout]
        g = gaps(results, layout)
        out[layout] = {
            "c1_p50_ms": m["c1"]["p50_ms"],
            "c1_p99_ms": m["c1"]["p99_ms"],
            "c1_blocks_p50_ms": m["c1_blocks"]["p50_ms"],
            "saturated_rps": m["throughput_rps"],
            "errors": m["errors"],
            "served_minus_in_process_p50_ms": g,
            "served_minus_in_process_p50_ms_mean": float(np.mean(g)),
        }
        if "moderate_load" in results:
            load = results["moderate_load"][layout]
            out[layout].update({f"moderate_load_{k}": load[k] for k in ("p50_ms", "p99_ms", "rate_rps", "errors")})
    if "moderate_load" in results:
        out["moderate_load_target_rps"] = results["moderate_load"]["target_rps"]
    return out


def write_report(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    s = summary(results)
    plain, pref = s["plain"], s["preferred"]
    block = results["measured"]["preferred"]["c1_blocks"]["block"]

    def row(label: str, key: str, fmt: str = "{:.2f}") -> str:
        return f"| {label} | {fmt.format(plain[key])} | {fmt.format(pref[key])} | {pref[key] / plain[key]:.2f}x |"

    rounds = len(results["call_by_call"]["plain"])
    moderate_rows = []
    if "moderate_load" in results:
        load = results["moderate_load"]
        what = f"open loop at {load['target_rps']:.0f} req/s, {load['fraction_of_saturation']:.0%} of saturation"
        moderate_rows = [
            row(f"moderate load p50 ms ({what})", "moderate_load_p50_ms"),
            row("moderate load p99 ms", "moderate_load_p99_ms"),
            row("moderate load, answered req/s", "moderate_load_rate_rps", "{:.1f}"),
        ]
        plain_err, pref_err = plain["moderate_load_errors"], pref["moderate_load_errors"]
        moderate_rows.append(f"| moderate load errors | {plain_err} | {pref_err} | |")
    lines = [
        f"# One preferred engine instance vs instances in turn (`{results['model']}`)",
        "",
        f"Machine: {results['machine']}. Two tritonservers up at once, rendered from one export: **plain** "
        "(each engine model's two instances in one group, server without the rate limiter: Triton hands "
        "batches to free instances in turn) and **preferred** (the shipped layout: one preferred instance and "
        f"a spill-over one, server with `{' '.join(results['scheduling_flags']['preferred'])}`). "
        f"{results['requests']} test-split requests, the same client for both.",
        "",
        f"Reproduce: `{results.get('command') or 'python -m oneranker_perf.instance_layout_bench --help'}`.",
        "",
        "| | plain | preferred | preferred / plain |",
        "|---|---|---|---|",
        row("c1 p50 ms, interleaved request by request", "c1_p50_ms"),
        row("c1 p99 ms, interleaved request by request", "c1_p99_ms"),
        row(f"c1 p50 ms, blocks of {block}", "c1_blocks_p50_ms"),
        row(f"saturated req/s ({results['concurrency']} clients)", "saturated_rps", "{:.1f}"),
        *moderate_rows,
        row(
            f"served c1 p50 - in-process p50 ms, call by call (mean of {rounds} rounds)",
            "served_minus_in_process_p50_ms_mean",
        ),
        f"| the same, each round | {', '.join(f'{g:.2f}' for g in plain['served_minus_in_process_p50_ms'])} | "
        f"{', '.join(f'{g:.2f}' for g in pref['served_minus_in_process_p50_ms'])} | |",
        f"| errors | {plain['errors']} | {pref['errors']} | |",
        "",
        "Interleaved request by request: each request goes to both servers in turn, so each stub wakes after "
        f"the other server's processes ran. Blocks of {block}: {block} consecutive requests to one server, then "
        "the same to the other, rotating. Call by call: one server's fused model and the same serving code in "
        "this process (one engine thread, as one served instance has), in turn per request; the rounds "
        "alternate which layout goes first. Moderate load: each request due at a fixed rate, sent by one "
        "of 8 client threads, its latency counted from its due time; rounds of alternating layout order, "
        "pooled.",
        "",
    ]
    (out / "results.md").write_text("\n".join(lines))
    write_summary(out, s)

    labels = ["c1 p50\ninterleaved", f"c1 p50\nblocks of {block}", "served - in-process\ncall by call"]
    keys = ("c1_p50_ms", "c1_blocks_p50_ms", "served_minus_in_process_p50_ms_mean")
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (layout, values) in enumerate((("plain", plain), ("preferred", pref))):
        ax.bar(x + (i - 0.5) * 0.38, [values[k] for k in keys], width=0.38, label=layout)
    ax.set_xticks(x, labels)
    ax.set_ylabel("ms")
    ax.set_title(f"{results['model']}: one preferred instance vs instances in turn")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=120)
    plt.close(fig)
    print("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--export", type=Path, required=True, help="export dir of `oneranker build`")
    parser.add_argument("--out", type=Path, default=Path("perf/results/instance_layout"))
    parser.add_argument("--latency-requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=16.0)
    parser.add_argument("--requests", type=int, default=64, help="distinct test-split requests cycled through")
    parser.add_argument("--rounds", type=int, default=4, help="call-by-call rounds, alternating layout order")
    args = parser.parse_args(argv)
    run(
        args.run_dir,
        args.export,
        args.out,
        args.latency_requests,
        args.concurrency,
        args.seconds,
        args.requests,
        rounds=args.rounds,
        command=reproduce_command("oneranker_perf.instance_layout_bench", argv),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
