"""Start tritonserver on a rendered repository, run the perf_analyzer sweep of the public model
and a headless locust run against it, stop it. Used by perf/reproduce.sh.

    python -m oneranker_perf.serve_and_load --repository artifacts/model_repository/small/onnxruntime \
        --inputs artifacts/perf --out perf/results [--run-dir artifacts/runs/small] [--pin]

`--run-dir` adds the compute floor of one request (FLOPs over the matmul rate measured now) to
every report. `--pin` adds a second perf_analyzer sweep of the public model with the server on
all cores but the last and perf_analyzer on the last (perf/results/perf_analyzer_pinned): the
client no longer takes CPU from the server, which in exchange has one core less.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def floor_note(run_dir: Path, requests_jsonl: Path) -> str:
    """One line: the compute floor of the benchmark's requests on this machine."""
    from oneranker.checkpoint import load_run
    from oneranker_serving.tokenize import bucket_for

    from .topology_bench import compute_floor

    cfg = load_run(run_dir)[0]
    lengths = [len(json.loads(line)["item_ids"]) for line in requests_jsonl.read_text().splitlines() if line.strip()]
    floor = compute_floor(cfg, [bucket_for(n, cfg.serve.length_buckets) for n in lengths])
    return (
        f"Compute floor of one request ({floor['candidates']} candidates, histories padded to their bucket): "
        f"{floor['unified_gflop'] * 1e3:.2f} MFLOP = {floor['unified_floor_ms']:.3f} ms at the "
        f"{floor['matmul_gflops']:.1f} GFLOP/s torch.matmul reaches on this machine now."
    )


def main(argv=None) -> int:
    from oneranker_client import contract
    from oneranker_serving.local_server import TritonServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--inputs", type=Path, required=True, help="folder with perf_data.json and requests.jsonl")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--concurrency",
        default="1,2,4",
        help="levels (2 cores: 4 in-flight requests already saturate the server; 8 does not settle)",
    )
    parser.add_argument("--locust-users", type=int, default=4)
    parser.add_argument("--locust-time", default="20s")
    parser.add_argument("--run-dir", type=Path, help="the served run: adds the compute floor to every report")
    parser.add_argument("--pin", action="store_true", help="also a pinned sweep (server / client on separate cores)")
    args = parser.parse_args(argv)
    notes = []
    if args.run_dir:
        notes = ["--note", floor_note(args.run_dir, args.inputs / "requests.jsonl")]
    pa_common = [
        "--input-data",
        str(args.inputs / "perf_data.json"),
        "--concurrency",
        args.concurrency,
        "--measurement-interval",
        "3000",
        *notes,
    ]

    def serve_and_run(runs: list[list[str]], cpus=None) -> int:
        rc = 0
        server = TritonServer(args.repository, log_file=args.out / "tritonserver.log", cpus=cpus)
        server.start()
        try:
            server.wait_ready(180)
            for cmd in runs:
                cmd = [c.replace("{url}", server.grpc_url) for c in cmd]
                print("[perf] " + " ".join(cmd[2:4]) + " ...", flush=True)
                rc = subprocess.call(cmd) or rc
        finally:
            server.stop()
        return rc

    suite = [sys.executable, "-m", "oneranker_perf.perf_analyzer_suite", "--url", "{url}"]
    rc = serve_and_run(
        [
            suite + ["--model", contract.PUBLIC_MODEL, "--out", str(args.out / "perf_analyzer"), *pa_common],
            [
                sys.executable,
                "-m",
                "oneranker_perf.locust_run",
                "--host",
                "{url}",
                "--users",
                str(args.locust_users),
                "--spawn-rate",
                str(args.locust_users),
                "--run-time",
                args.locust_time,
                "--out",
                str(args.out / "locust"),
                "--requests",
                str(args.inputs / "requests.jsonl"),
                *notes,
            ],
        ]
    )
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            print("[perf] --pin needs at least 2 CPUs; pinned sweep skipped", flush=True)
        else:
            server_cpus, client_cpu = cpus[:-1], cpus[-1]
            server_text = ",".join(str(c) for c in server_cpus)
            rc = (
                serve_and_run(
                    [
                        suite
                        + [
                            "--model",
                            contract.PUBLIC_MODEL,
                            "--out",
                            str(args.out / "perf_analyzer_pinned"),
                            *pa_common,
                            "--client-cpus",
                            str(client_cpu),
                            "--server-cpus",
                            server_text,
                        ]
                    ],
                    cpus=server_cpus,
                )
                or rc
            )
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
