"""How long the dynamic batcher may wait for a batch (`max_queue_delay_microseconds`), measured.

    python -m oneranker_perf.queue_delay_bench --run-dir artifacts/runs/small \
        --export artifacts/model_repository/small/export --delays 0,100,500 --out perf/results/queue_delay

One onnxruntime repository per delay (everything else as `RenderSettings` defaults), one
tritonserver per repository, all up at once; the fused default (`oneranker_fused`, one composing
model) and the `graphs` ensemble (preprocess, generation, ranking: three composing models, so
three waits) of every server are measured interleaved (topology_bench.paired_comparison):
latency at concurrency 1 and throughput at saturation.
At concurrency 1 a batch never fills, so every composing model waits the full delay; at
saturation requests queue while the instance is busy and batch anyway. Writes results.md,
results.json, results.png and summary.json (`summary`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from .common import git_commit, machine, reproduce_command
from .summary_file import write_summary
from .topology_bench import bench_requests, paired_comparison


def run(
    run_dir: Path,
    export_dir: Path,
    delays: list[int],
    out: Path,
    n_latency: int,
    concurrency: int,
    seconds: float,
    n_requests: int,
    command: str = "",
) -> dict:
    from oneranker_build.render import RenderSettings, render_repository
    from oneranker_client import contract
    from oneranker_serving import artifacts
    from oneranker_serving.local_server import TritonServer

    cfg, _, reqs = bench_requests(run_dir, n_requests)
    info = artifacts.read_export_info(export_dir)
    dims = contract.ContractDims(**info["dims"])
    paths = {"fused": contract.TOPOLOGY_MODELS["fused"], "graphs": contract.TOPOLOGY_MODELS["graphs"]}
    servers, targets = [], {}
    with tempfile.TemporaryDirectory(prefix="queue-delay-") as tmp:
        try:
            for delay in delays:
                repo = render_repository(
                    export_dir,
                    Path(tmp) / f"delay{delay}",
                    "onnxruntime",
                    dims,
                    info["checkpoint_sha256"],
                    settings=RenderSettings(max_queue_delay_us=delay),
                )
                server = TritonServer(repo, log_file=Path(tmp) / f"delay{delay}.log")
                server.start()
                servers.append(server)
                server.wait_ready(180)
                print(f"[queue-delay] {delay} us: server ready at {server.grpc_url}", flush=True)
                for path, model in paths.items():
                    targets[f"{path} @ {delay} us"] = (server.grpc_url, model)
            for url, model in targets.values():  # warm-up
                from oneranker_client.client import OneRankerClient

                with OneRankerClient(url, model=model, retries=0) as client:
                    for req in reqs[:10]:
                        client.recommend(req)
            print(
                f"[queue-delay] {len(targets)} targets interleaved: {n_latency} requests each at concurrency 1, "
                f"then {seconds:.0f}s of saturation each ...",
                flush=True,
            )
            measured = paired_comparison(targets, reqs, n_latency, concurrency, seconds)
        finally:
            for server in servers:
                server.stop()
    results = {
        "machine": machine(),
        "commit": git_commit(),
        "command": command,
        "preset": cfg.name,
        "delays_us": delays,
        "concurrency": concurrency,
        "paths": paths,
        "measured": measured,
    }
    write_report(results, out)
    return results


def summary(results: dict) -> dict:
    """summary.json: commit, machine, command, the saturation concurrency and, per "PATH @ DELAY us"
    target, its concurrency-1 p50/p99 ms, saturated req/s and errors (the report's table without
    the ratios, which follow from these)."""
    return {
        "commit": results.get("commit"),
        "machine": results["machine"],
        "command": results.get("command"),
        "concurrency": results["concurrency"],
        "targets": {
            f"{path} @ {delay} us": {
                "c1_p50_ms": t["c1"]["p50_ms"],
                "c1_p99_ms": t["c1"]["p99_ms"],
                "saturated_rps": t["throughput_rps"],
                "errors": t["errors"],
            }
            for path in results["paths"]
            for delay in results["delays_us"]
            for t in [results["measured"][f"{path} @ {delay} us"]]
        },
    }


def write_report(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    m, delays, base = results["measured"], results["delays_us"], max(results["delays_us"])
    lines = [
        f"# Dynamic batching queue delay ({results['preset']} model, onnxruntime repository)",
        "",
        f"Machine: {results['machine']}. One tritonserver per delay, all up at once; every target measured "
        f"interleaved (each concurrency-1 request sent to all, rotating order; saturation with "
        f"{results['concurrency']} threads in rotating windows). Ratios are against {base} us.",
        "",
        f"Reproduce: `{results.get('command') or 'python -m oneranker_perf.queue_delay_bench --help'}`.",
        "",
        "| path | max_queue_delay_us | c1 p50 ms | c1 p99 ms | saturated req/s | errors | c1 p50 vs "
        f"{base} us | req/s vs {base} us |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for path in results["paths"]:
        ref = m[f"{path} @ {base} us"]
        for delay in delays:
            t = m[f"{path} @ {delay} us"]
            lines.append(
                f"| {path} | {delay} | {t['c1']['p50_ms']:.2f} | {t['c1']['p99_ms']:.2f} | "
                f"{t['throughput_rps']:.1f} | {t['errors']} | {t['c1']['p50_ms'] / ref['c1']['p50_ms']:.2f}x | "
                f"{t['throughput_rps'] / ref['throughput_rps']:.2f}x |"
            )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    write_summary(out, summary(results))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(delays))
    width = 0.8 / len(results["paths"])
    for i, path in enumerate(results["paths"]):
        axes[0].bar(x + i * width, [m[f"{path} @ {d} us"]["c1"]["p50_ms"] for d in delays], width, label=path)
        axes[1].bar(x + i * width, [m[f"{path} @ {d} us"]["throughput_rps"] for d in delays], width, label=path)
    for ax, label in ((axes[0], "c1 p50 ms"), (axes[1], "saturated req/s")):
        ax.set_xticks(x + width * (len(results["paths"]) - 1) / 2, [f"{d} us" for d in delays])
        ax.set_xlabel("max_queue_delay_microseconds")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle(f"dynamic batching delay ({results['preset']}, {results['machine'].split('(')[0].strip()})")
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=120)
    plt.close(fig)
    print((out / "results.md").read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--export", type=Path, required=True, help="the export folder `oneranker build` wrote")
    parser.add_argument("--delays", default="0,100,500", help="max_queue_delay_microseconds values")
    parser.add_argument("--out", type=Path, default=Path("perf/results/queue_delay"))
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0, help="saturation seconds per target")
    parser.add_argument("--requests", type=int, default=64)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    command = reproduce_command("oneranker_perf.queue_delay_bench", argv)
    run(
        args.run_dir,
        args.export,
        [int(d) for d in args.delays.split(",")],
        args.out,
        args.latency_requests,
        args.concurrency,
        args.seconds,
        args.requests,
        command=command,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
