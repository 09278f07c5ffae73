"""What one Python-backend IPC call adds to a served request, measured.

    python -m oneranker_perf.backend_ipc_bench --out perf/results/backend_ipc [--requests 1500] [--calls 3]

A Python-backend model runs in its own stub process; `request.is_cancelled()` and a custom
metric's `increment()` each send a message to the server process and wait for its answer. The
fused model makes cancellation checks at up to three stage boundaries of every batch; its four
counter increments (two stage timers, candidates, requests) are summed in the stub and sent by a
background thread once per interval (oneranker_serving.triton.counters), so only the checks are
part of a request's "served minus in-process" (`FUSED_CALLS`).

Probe models, identical except for those calls (a temporary repository, `max_batch_size` 8, one
CPU instance, echo of a [4] float tensor):
    none          no call
    is_cancelled  `calls` x request.is_cancelled() per request
    metric        `calls` x Metric.increment(1.0) per request (`calls` distinct counters)
one local tritonserver, gRPC at concurrency 1, the probes interleaved (one request to each per
round, rotating order). Per-call cost = (p50 of the probe - p50 of `none`) / calls.
Writes results.json, results.md, results.png and summary.json (`summary`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import git_commit, machine, percentiles, reproduce_command
from .summary_file import write_summary

PROBES = ("none", "is_cancelled", "metric")
# the most calls the fused model makes before a request's answer leaves, at concurrency 1 (one
# request per batch, serving.triton.models) with the default cancel_check_interval_us: a
# cancellation check before each engine call (none on arrival: the interval counts from it) and no
# counter (a background thread sends them, oneranker_serving.triton.counters)
FUSED_CALLS = {"is_cancelled": 2, "metric": 0}

_CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "x", data_type: TYPE_FP32, dims: [ 4 ] }} ]
output [ {{ name: "y", data_type: TYPE_FP32, dims: [ 4 ] }} ]
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
parameters: {{ key: "probe", value: {{ string_value: "{probe}" }} }}
parameters: {{ key: "calls", value: {{ string_value: "{calls}" }} }}
"""

_MODEL = """import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"])["parameters"]
        self.probe = params["probe"]["string_value"]
        self.calls = int(params["calls"]["string_value"])
        self.family = pb_utils.MetricFamily(
            name="ipc_probe_total", description="probe counter", kind=pb_utils.MetricFamily.COUNTER
        )
        self.metrics = [
            self.family.Metric(labels={"probe": args["model_name"], "i": str(i)}) for i in range(self.calls)
        ]

    def execute(self, requests):
        out = []
        for request in requests:
            if self.probe == "is_cancelled":
                for _ in range(self.calls):
                    request.is_cancelled()
            elif self.probe == "metric":
                for metric in self.metrics:
                    metric.increment(1.0)
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x)]))
        return out
"""


def write_repository(root: Path, calls: int) -> Path:
    """ROOT/ipc_<probe>/{config.pbtxt, 1/model.py} for every probe."""
    for probe in PROBES:
        model = root / f"ipc_{probe}"
        (model / "1").mkdir(parents=True, exist_ok=True)
        (model / "config.pbtxt").write_text(_CONFIG.format(name=model.name, probe=probe, calls=calls))
        (model / "1" / "model.py").write_text(_MODEL)
    return root


def measure(requests: int, calls: int, warmup: int = 50) -> dict:
    """{probe: percentiles of gRPC round trips} from one server, probes interleaved."""
    import tritonclient.grpc as grpcclient

    from oneranker_serving.local_server import TritonServer

    with tempfile.TemporaryDirectory() as tmp:
        repo = write_repository(Path(tmp) / "repository", calls)
        with TritonServer(repo) as server:
            client = grpcclient.InferenceServerClient(f"localhost:{server.grpc_port}")
            x = grpcclient.InferInput("x", [1, 4], "FP32")
            x.set_data_from_numpy(np.ones((1, 4), np.float32))
            times: dict[str, list[float]] = {p: [] for p in PROBES}
            for i in range(warmup + requests):
                order = PROBES[i % len(PROBES) :] + PROBES[: i % len(PROBES)]
                for probe in order:
                    t = time.perf_counter()
                    client.infer(f"ipc_{probe}", [x])
                    if i >= warmup:
                        times[probe].append(time.perf_counter() - t)
    return {p: percentiles(t) for p, t in times.items()}


def summary(results: dict) -> dict:
    m, calls = results["measured"], results["calls"]
    base = m["none"]["p50_ms"]
    per_call_us = {p: 1000 * (m[p]["p50_ms"] - base) / calls for p in PROBES if p != "none"}
    return {
        "commit": results.get("commit"),
        "machine": results["machine"],
        "command": results["command"],
        "calls_per_probe_request": calls,
        "p50_ms": {p: m[p]["p50_ms"] for p in PROBES},
        "per_call_us": per_call_us,
        "fused_calls_per_request_c1": dict(FUSED_CALLS),
        "fused_ipc_ms_per_request_c1": sum(per_call_us[p] * n for p, n in FUSED_CALLS.items()) / 1000,
    }


def write_report(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    s, m = summary(results), results["measured"]
    lines = [
        "# Python-backend IPC calls: what each adds to a served request",
        "",
        f"Machine: {results['machine']}. One local tritonserver, gRPC at concurrency 1, the probe models "
        f"interleaved ({m['none']['n']} requests each). {results.get('load') or ''}".rstrip(),
        "",
        f"Reproduce: `{results['command']}`.",
        "",
        "| probe | calls per request | p50 ms | p90 ms | p99 ms | per call, us (p50 - none) / calls |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for p in PROBES:
        per = "" if p == "none" else f"{s['per_call_us'][p]:.1f}"
        n = 0 if p == "none" else results["calls"]
        lines.append(f"| {p} | {n} | {m[p]['p50_ms']:.3f} | {m[p]['p90_ms']:.3f} | {m[p]['p99_ms']:.3f} | {per} |")
    lines += [
        "",
        f"Before a request's answer leaves, the fused model at concurrency 1 makes at most "
        f"{FUSED_CALLS['is_cancelled']} cancellation checks (before each engine call, once "
        "`cancel_check_interval_us` has passed since the batch arrived or was last checked) and "
        f"{FUSED_CALLS['metric']} counter increments (a background thread sends them): at most "
        f"**{s['fused_ipc_ms_per_request_c1']:.2f} ms** of each served request at these prices.",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    write_summary(out, s)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(list(PROBES), [m[p]["p50_ms"] for p in PROBES], color=["tab:gray", "tab:blue", "tab:orange"])
    ax.set_ylabel("gRPC round trip p50, ms")
    ax.set_title(f"{results['calls']} IPC calls per request")
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m oneranker_perf.backend_ipc_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("perf/results/backend_ipc"))
    p.add_argument("--requests", type=int, default=1500, help="timed requests per probe")
    p.add_argument("--calls", type=int, default=3, help="IPC calls per request in each calling probe")
    p.add_argument("--load", default="", help="a sentence on what else ran on the machine, for the report")
    args = p.parse_args(argv)
    results = {
        "machine": machine(),
        "commit": git_commit(),
        "command": reproduce_command("oneranker_perf.backend_ipc_bench", argv),
        "calls": args.calls,
        "load": args.load,
        "measured": measure(args.requests, args.calls),
    }
    write_report(results, args.out)
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
