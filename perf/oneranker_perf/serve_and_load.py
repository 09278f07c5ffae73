"""Start tritonserver on a rendered repository, run the perf_analyzer sweep (public model and
core models) and a headless locust run against it, stop it. Used by perf/reproduce.sh.

    python -m oneranker_perf.serve_and_load --repository artifacts/model_repository/small/onnxruntime \
        --inputs artifacts/perf --out perf/results
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def main(argv=None) -> int:
    from oneranker_build.tritonserver import TritonServer
    from oneranker_client import contract

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--inputs", type=Path, required=True, help="folder with perf_data.json and requests.jsonl")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--locust-users", type=int, default=4)
    parser.add_argument("--locust-time", default="20s")
    args = parser.parse_args(argv)
    server = TritonServer(args.repository, log_file=args.out / "tritonserver.log")
    server.start()
    rc = 0
    try:
        server.wait_ready(180)
        runs = [
            [sys.executable, "-m", "oneranker_perf.perf_analyzer_suite", "--url", server.grpc_url,
             "--model", contract.PUBLIC_MODEL, "--input-data", str(args.inputs / "perf_data.json"),
             "--concurrency", args.concurrency, "--out", str(args.out / "perf_analyzer"),
             "--measurement-interval", "3000"],
            [sys.executable, "-m", "oneranker_perf.perf_analyzer_suite", "--url", server.grpc_url,
             "--model", contract.TOPOLOGY_MODELS["bls"], "--input-data", str(args.inputs / "perf_data.json"),
             "--concurrency", args.concurrency, "--out", str(args.out / "perf_analyzer_bls"),
             "--measurement-interval", "3000",
             "--bls-composing-models", f"{contract.GENERATOR_MODEL},{contract.RANKER_MODEL}"],
            [sys.executable, "-m", "oneranker_perf.locust_run", "--host", server.grpc_url, "--users",
             str(args.locust_users), "--spawn-rate", str(args.locust_users), "--run-time", args.locust_time,
             "--out", str(args.out / "locust"), "--requests", str(args.inputs / "requests.jsonl")],
        ]
        for cmd in runs:
            print("[perf] " + " ".join(cmd[2:4]) + " ...", flush=True)
            rc = subprocess.call(cmd) or rc
    finally:
        server.stop()
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
