"""Serving topologies, served vs in-process, measured side by side in one run.

    python -m oneranker_perf.topology_bench --run-dir artifacts/runs/small \
        --repository artifacts/model_repository/onnxruntime --out perf/results/topology

For each topology ensemble (fused / numpy_beam / graphs) on one tritonserver: latency of single
requests at concurrency 1 (p50/p99) and throughput at saturation (a timed gRPC loop with
`--concurrency` threads), plus the in-process pipeline (same ONNX graphs, same serving code)
and the PyTorch reference at concurrency 1. The default topology is the one with the
highest throughput whose saturated p99 stays <= 2x its own concurrency-1 p50. When the
repository was built with `--cascade-run`, the cascade baseline `oneranker_cascade` is measured
on the same server in the same run (unified vs cascade, both served, same requests). The compute
floor of one request (its FLOPs over the matmul rate torch reaches here, same run) is reported
beside the measured latencies. Writes results.md, results.json, results.png and summary.json.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .common import flops, git_commit, machine, matmul_gflops, percentiles, reproduce_command, rotated
from .topology_report import contract_names, write_report

# stub<->server copies of the kv per request (graphs: out of the generation stub, into the ranking one)
KV_CROSSINGS = {"fused": 0, "numpy_beam": 0, "graphs": 2}


def scrape_metrics(url: str) -> list[tuple[str, str, float]]:
    """Triton's Prometheus text -> (metric name, label text, value) rows."""
    import urllib.request

    rows = []
    for line in urllib.request.urlopen(url, timeout=10).read().decode().splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        rows.append((name, labels, float(value)))
    return rows


def _delta(before, after, name: str, *labels: str) -> float:
    def total(rows):
        return sum(v for n, text, v in rows if n == name and all(lab in text for lab in labels))

    return total(after) - total(before)


def settled_metrics(url: str, before, ensemble: str, expected: int, timeout_s: float = 5.0, labels=None):
    """Scrape until the ensemble's success counter shows all `expected` requests, and, for a
    fused-style path (`labels` given), its recommender's own request counter too: Triton counts a
    request after its response is sent, and the fused model's counters go out from a background
    thread up to `counter_interval_ms` later (a batch's stage seconds in the same send as, and
    before, its request count), so a scrape right after the last answer can miss either."""
    deadline = time.monotonic() + timeout_s
    while True:
        after = scrape_metrics(url)
        done = _delta(before, after, "nv_inference_request_success", f'model="{ensemble}"') >= expected
        if labels is not None:
            done = done and _delta(before, after, "oneranker_requests_total", *labels) >= expected
        if done or time.monotonic() > deadline:
            return after
        time.sleep(0.05)


def stage_breakdown(before, after, models: list[str], ensemble: str, labels: tuple | None) -> dict:
    """Server-side mean ms per request over a window, from Triton's counters: the ensemble's
    request time, each composing model's compute and queue time and, inside a fused-style model,
    its own generate / select / rank counters (`labels`: label=value filters, e.g. system, beam_search)."""
    out: dict = {}
    served = _delta(before, after, "nv_inference_request_success", f'model="{ensemble}"')
    if served <= 0:
        return out
    out["requests"] = served
    out["ensemble_request_ms"] = (
        _delta(before, after, "nv_inference_request_duration_us", f'model="{ensemble}"') / served / 1e3
    )
    for model in models:
        label = f'model="{model}"'
        out[f"{model}_compute_ms"] = (
            _delta(before, after, "nv_inference_compute_infer_duration_us", label) / served / 1e3
        )
        out[f"{model}_queue_ms"] = _delta(before, after, "nv_inference_queue_duration_us", label) / served / 1e3
    if labels:
        for stage in ("generate", "select", "rank"):
            seconds = _delta(before, after, "oneranker_stage_seconds_total", f'stage="{stage}"', *labels)
            out[f"{stage}_ms"] = seconds / served * 1e3
    return out


def config_parameter(config_path: Path, key: str, default: str | None = None) -> str:
    """A string parameter of a rendered model config (`default` when the config has none)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    cfg = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
    if key not in cfg.parameters and default is not None:
        return default
    return cfg.parameters[key].string_value


def served_threads(config_path: Path) -> int:
    """The `intra_op_threads` parameter of a rendered model config."""
    return int(config_parameter(config_path, "intra_op_threads"))


def counter_lag_s(config_path: Path) -> float:
    """How long a recommender model's counters may trail its answers (its `counter_interval_ms`,
    oneranker_serving.triton.counters), plus a margin for the sending itself."""
    from oneranker_serving.triton.counters import DEFAULT_INTERVAL_MS

    return float(config_parameter(config_path, "counter_interval_ms", str(DEFAULT_INTERVAL_MS))) / 1e3 + 0.3


def latency_loop(call, requests: list, n: int) -> dict:
    times = []
    for i in range(n):
        start = time.perf_counter()
        call(requests[i % len(requests)])
        times.append(time.perf_counter() - start)
    return percentiles(times)


def saturation_loop(make_call, requests: list, concurrency: int, seconds: float) -> dict:
    """`concurrency` threads, each with its own call (its own gRPC client), for `seconds`."""
    deadline = time.perf_counter() + seconds
    times: list[float] = []
    errors = [0]

    def worker(offset: int):
        call = make_call()
        i = offset
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                call(requests[i % len(requests)])
                times.append(time.perf_counter() - start)
            except Exception:  # counted, reported: overload answers UNAVAILABLE by design
                errors[0] += 1
            i += concurrency

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    elapsed = time.perf_counter() - began
    out = percentiles(times)
    out.update({"throughput_rps": len(times) / elapsed, "errors": errors[0], "concurrency": concurrency})
    return out


def paired_in_process(calls: dict, requests: list, n: int) -> dict:
    """In-process latency of several callables measured interleaved (order rotating per request):
    `paired_c1` with blocks of one."""
    return paired_c1(calls, requests, n, block=1)


# requests per block when the new/old pair is measured again as back-to-back streams (paired_c1)
C1_BLOCK = 25


def paired_c1(calls: dict, requests: list, n: int, block: int) -> dict:
    """Concurrency-1 latency of several callables ({label: call(request)}: a client's recommend,
    or an in-process path) interleaved in rotating blocks: block 1 sends each request to every
    target in turn; block b sends b consecutive requests to one target, then the same b to the
    next. -> {label: percentiles}."""
    labels = list(calls)
    times: dict = {k: [] for k in labels}
    for b in range(-(-n // block)):
        rows = range(b * block, min(n, (b + 1) * block))
        for k in rotated(labels, b):
            for i in rows:
                start = time.perf_counter()
                calls[k](requests[i % len(requests)])
                times[k].append(time.perf_counter() - start)
    return {k: percentiles(v) for k, v in times.items()}


def served_vs_in_process(grpc_url: str, model: str, local, raw: list, reqs: list, n: int) -> dict:
    """One path served (gRPC, `model`) and in process (`local`, a Recommender), interleaved call by
    call on the same request (order rotating), so machine noise falls on both sides alike.
    -> {"served": percentiles, "in_process": percentiles}."""
    from oneranker_client.client import OneRankerClient

    client = OneRankerClient(grpc_url, model=model, retries=0)
    try:
        calls = {"served": lambda i: client.recommend(reqs[i]), "in_process": lambda i: local.recommend([raw[i]])}
        return paired_in_process(calls, list(range(len(reqs))), n)
    finally:
        client.close()


def paired_comparison(
    targets: dict[str, tuple[str, str]],
    requests: list,
    n_latency: int,
    concurrency: int,
    seconds: float,
    rounds: int = 4,
    c1_block: int = 1,
) -> dict:
    """Two or more served models ({label: (grpc url, model)}) measured interleaved, so machine
    noise falls on all alike: at concurrency 1 each request goes to every target (order rotating;
    `c1`), and, when c1_block > 1, again in rotating blocks of c1_block requests per target
    (`c1_blocks`: each target sees a back-to-back stream, as perf_analyzer's concurrency 1 does);
    at saturation, `rounds` rotating windows of seconds/rounds per target, pooled."""
    from oneranker_client.client import OneRankerClient

    labels = list(targets)
    clients = {k: OneRankerClient(url, model=model, retries=0) for k, (url, model) in targets.items()}
    recommend = {k: c.recommend for k, c in clients.items()}
    c1 = paired_c1(recommend, requests, n_latency, block=1)
    out: dict = {k: {"c1": c1[k], "served": 0, "seconds": 0.0, "errors": 0} for k in labels}
    if c1_block > 1:
        for k, p in paired_c1(recommend, requests, n_latency, block=c1_block).items():
            out[k]["c1_blocks"] = {**p, "block": c1_block}
    for r in range(rounds):
        for k in rotated(labels, r):
            url, model = targets[k]
            began = time.perf_counter()
            sat = saturation_loop(
                lambda: OneRankerClient(url, model=model, retries=0).recommend, requests, concurrency, seconds / rounds
            )
            elapsed = time.perf_counter() - began
            out[k]["served"] += int(round(sat["throughput_rps"] * elapsed))
            out[k]["seconds"] += elapsed
            out[k]["errors"] += sat["errors"]
    for k in labels:
        out[k]["throughput_rps"] = out[k]["served"] / out[k]["seconds"]
        clients[k].close()
    return out


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (tritonserver + Python stubs), MiB."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for proc in [root] + root.children(recursive=True):
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


class RssSampler:
    """Peak tree RSS while a load runs (sampled every 50 ms in a thread)."""

    def __init__(self, pid: int):
        import threading

        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_mb(self.pid))
            self._stop.wait(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def kv_bytes(info: dict, length_bucket: int) -> int:
    d = info["dims"]
    return d["R2"] * (d["F"] + length_bucket + info["num_step2_tokens"]) * d["DM"] * 4


def bench_requests(run_dir: Path, n_requests: int) -> tuple:
    """n test-split requests spread over the split -> (config, raw Requests, client RecommendRequests)."""
    from oneranker.checkpoint import load_run
    from oneranker.cli import example_request
    from oneranker.pipeline import prepare
    from oneranker_client.messages import RecommendRequest

    cfg, _, sids, _ = load_run(run_dir)
    prep = prepare(cfg, sids=sids)
    rows = np.linspace(0, len(prep.splits["test"]) - 1, n_requests).astype(int)
    raw = [example_request(prep, int(r)) for r in rows]
    reqs = [
        RecommendRequest(
            user_features=r.user_features.tolist(),
            item_ids=r.item_ids.tolist(),
            actions=r.actions.tolist(),
            timestamps=r.timestamps.tolist(),
            request_time=int(r.request_time),
        )
        for r in raw
    ]
    return cfg, raw, reqs


def run(
    run_dir: Path,
    repository: Path,
    out: Path,
    n_latency: int,
    concurrency: int,
    seconds: float,
    n_requests: int,
    command: str = "",
) -> dict:
    from oneranker.reference import load_reference
    from oneranker_client import contract
    from oneranker_client.client import OneRankerClient
    from oneranker_serving import artifacts
    from oneranker_serving.local_server import TritonServer
    from oneranker_serving.tokenize import bucket_for

    cfg, raw, reqs = bench_requests(run_dir, n_requests)
    info = artifacts.read_export_info(repository / contract.FUSED_MODEL / "1" / "artifacts")
    buckets = info["serve"]["length_buckets"]
    mean_kv = float(np.mean([kv_bytes(info, bucket_for(len(r.item_ids), buckets)) for r in raw]))

    results: dict = {
        "machine": machine(),
        "commit": git_commit(),
        "command": command,
        "preset": cfg.name,
        "requests": n_requests,
        "repository": str(repository),
        "mean_history": float(np.mean([len(r.item_ids) for r in raw])),
        "topologies": {},
    }
    # in-process runs with the threads one served instance has, so served - in-process is overhead
    threads = served_threads(repository / contract.FUSED_MODEL / "config.pbtxt")
    lag_s = counter_lag_s(repository / contract.FUSED_MODEL / "config.pbtxt")
    results["intra_op_threads"] = threads
    print(f"[bench] in-process pipelines (concurrency 1, {threads} engine threads) ...", flush=True)
    fused_artifacts = repository / contract.FUSED_MODEL / "1" / "artifacts"
    local = artifacts.load_recommender(fused_artifacts, "onnxruntime", threads=threads, search="graph")
    local_old = artifacts.load_recommender(fused_artifacts, "onnxruntime", threads=threads, search="numpy")
    for rec in (local, local_old):  # warm-up: first calls allocate
        latency_loop(lambda r, rec=rec: rec.recommend([r]), raw, 10)
    in_process = {"new": lambda r: local.recommend([r]), "old": lambda r: local_old.recommend([r])}
    results["in_process_new_vs_old"] = paired_in_process(in_process, raw, n_latency)
    # the same pair again, each path a back-to-back stream in rotating blocks (as served below)
    results["in_process_new_vs_old_blocks"] = {
        k: {**p, "block": C1_BLOCK} for k, p in paired_c1(in_process, raw, n_latency, block=C1_BLOCK).items()
    }
    results["in_process_onnxruntime"] = results["in_process_new_vs_old"]["new"]
    reference = load_reference(run_dir)
    results["in_process_torch_reference"] = latency_loop(lambda r: reference.recommend([r]), raw, n_latency)

    cascade_dir = repository / contract.CASCADE_MODEL / "1" / "artifacts"
    if cascade_dir.exists():
        local_cascade = artifacts.load_cascade_recommender(cascade_dir, "onnxruntime", threads=threads)
        results["in_process_cascade_onnxruntime"] = latency_loop(lambda r: local_cascade.recommend([r]), raw, n_latency)
        del local_cascade
    results["compute_floor"] = compute_floor(cfg, [bucket_for(len(r.item_ids), buckets) for r in raw])

    from oneranker_build.render import cascade_steps, topology_steps

    def measure(server, model: str, steps: list, labels: tuple | None) -> dict:
        client = OneRankerClient(server.grpc_url, model=model, retries=0)
        latency_loop(client.recommend, reqs, 10)  # warm-up
        time.sleep(lag_s)  # the warm-up's counters land before the `before` scrape
        print(f"[bench] {model}: concurrency 1 ...", flush=True)
        before = scrape_metrics(server.metrics_url)
        c1 = latency_loop(client.recommend, reqs, n_latency)
        c1["stages"] = stage_breakdown(
            before,
            settled_metrics(server.metrics_url, before, model, n_latency, labels=labels),
            [step[0] for step in steps],
            model,
            labels,
        )
        print(f"[bench] {model}: saturation, {concurrency} threads for {seconds:.0f}s ...", flush=True)
        rest = tree_rss_mb(server.pid)
        with RssSampler(server.pid) as rss:
            sat = saturation_loop(
                lambda: OneRankerClient(server.grpc_url, model=model, retries=0).recommend, reqs, concurrency, seconds
            )
        sat.update(
            {"rss_at_rest_mb": rest, "rss_peak_mb": rss.peak, "rss_per_in_flight_mb": (rss.peak - rest) / concurrency}
        )
        client.close()
        return {"model": model, "c1": c1, "saturation": sat}

    log = out / "tritonserver.log"
    server = TritonServer(repository, log_file=log)
    server.start()
    try:
        server.wait_ready(180)
        for topology, model in contract.TOPOLOGY_MODELS.items():
            labels = {
                "fused": ('system="unified"', 'beam_search="graph"'),
                "numpy_beam": ('system="unified"', 'beam_search="numpy"'),
            }.get(topology)
            results["topologies"][topology] = {
                **measure(server, model, topology_steps(topology), labels),
                "kv_bytes_crossing_per_request": KV_CROSSINGS[topology] * mean_kv,
            }
        if cascade_dir.exists():
            results["cascade"] = {
                **measure(server, contract.CASCADE_PUBLIC_MODEL, cascade_steps(), ('system="cascade"',)),
                "kv_bytes_crossing_per_request": 0,
            }
            pair = (contract.TOPOLOGY_MODELS["fused"], contract.CASCADE_PUBLIC_MODEL)
            print(f"[bench] {pair[0]} vs {pair[1]}, interleaved ...", flush=True)
            results["unified_vs_cascade"] = paired_comparison(
                {m: (server.grpc_url, m) for m in pair}, reqs, n_latency, concurrency, seconds
            )
        pair = contract_names()
        print(f"[bench] {pair[0]} (in-graph beam search) vs {pair[1]} (numpy beam search), interleaved ...", flush=True)
        results["new_vs_old"] = paired_comparison(
            {m: (server.grpc_url, m) for m in pair}, reqs, n_latency, concurrency, seconds, c1_block=C1_BLOCK
        )
        print("[bench] served vs in-process of each path, call by call ...", flush=True)
        results["served_vs_in_process"] = {
            label: served_vs_in_process(server.grpc_url, model, rec, raw, reqs, n_latency)
            for label, model, rec in (("new", pair[0], local), ("old", pair[1], local_old))
        }
    finally:
        server.stop()
    results["default_topology"] = choose_default(results["topologies"])
    write_report(results, out)
    return results


def compute_floor(cfg, length_buckets: list[int]) -> dict:
    """FLOPs of one request (mean over the benchmark's requests, padded to their length bucket,
    default num_candidates) and the time they take at the matmul rate torch reaches here."""
    n = cfg.serve.num_candidates
    per = [flops(cfg, length, n) for length in length_buckets]
    unified = float(np.mean([f["generate"] + f["rank"] for f in per]))
    cascade = float(np.mean([2 * f["generate"] + f["rank"] for f in per]))  # generator + ranker both encode
    rate = matmul_gflops(2)
    return {
        "matmul_gflops": rate,
        "candidates": n,
        "unified_gflop": unified / 1e9,
        "cascade_gflop": cascade / 1e9,
        "unified_floor_ms": unified / 1e9 / rate * 1e3,
        "cascade_floor_ms": cascade / 1e9 / rate * 1e3,
    }


def choose_default(topologies: dict) -> str:
    """Highest saturated throughput among topologies whose saturated p99 <= 2x their c1 p50."""
    ok = {name: t for name, t in topologies.items() if t["saturation"]["p99_ms"] <= 2 * t["c1"]["p50_ms"]}
    pool = ok or topologies
    return max(pool, key=lambda name: pool[name]["saturation"]["throughput_rps"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--repository", type=Path, required=True, help="rendered onnxruntime repository")
    parser.add_argument("--out", type=Path, default=Path("perf/results/topology"))
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--requests", type=int, default=64, help="distinct test-split requests cycled through")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    run(
        args.run_dir,
        args.repository,
        args.out,
        args.latency_requests,
        args.concurrency,
        args.seconds,
        args.requests,
        command=reproduce_command("oneranker_perf.topology_bench", argv),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
