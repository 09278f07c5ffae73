"""The GPU check's steps, run by ``perf/gpu/gpu_check.py`` inside the venv it makes from the
unpacked carry (see that script for the commands).

1. a randomly initialised model of the preset (latency does not depend on the weights):
   ``oneranker.train.init_run`` + ``oneranker build --engine torch`` (exported programs only) with
   the instance kind of the device (KIND_GPU on CUDA);
2. the carried tritonserver serves that repository (explicit model control: the public ensemble
   ``oneranker`` and its fused model ``recommender``, nothing else is loaded);
3. served answers (HTTP, ``http_v2``) against the same exported programs run in this process
   (``load_recommender(..., "torch", search="graph")`` on the same device), one request at a time so
   both sides run the same shapes: items identical, scores within ``SCORE_TOL``;
4. latency in process (``Recommender.recommend`` of B requests: validation, tokenization, both
   graphs) and served (B concurrent HTTP requests of one user each, the dynamic batcher forming
   the batches; latency = until the last answer) for every history x batch, at ``CANDIDATES``;
5. ``report.md``, ``summary.json`` and ``latency.png`` in the output folder.
"""

from __future__ import annotations

import json
import platform
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from oneranker_client import contract
from oneranker_client.http_v2 import HttpV2Client, InferError
from oneranker_client.messages import RecommendRequest, request_arrays

from .common import machine, percentiles

HISTORIES = (512, 2048)
CANDIDATES = 256
BATCHES = (1, 8)
SCORE_TOL = 1e-4
TIME_BUDGET_S = 300
# The paper preset's data sizes only shrink the synthetic LOG (users, sessions): the model, the
# tokenizer and the catalogue (20000 ads, 10000 contents, 256 codes per level) stay the paper's,
# so the graphs, the trie and the item tables are the paper's; building its 20000-user log
# would take minutes and change nothing measured here.
PAPER_LOG = {"num_users": 1000, "sessions_per_user": (8, 16)}
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Plan:
    preset: str
    device: str  # torch device of the served instances and of the in-process run
    instance_kind: str
    warmup: int
    iters: int
    case_budget_s: float  # per case and path: stop timing early past this
    compare: int  # random-length requests compared served vs in process


def make_plan(dry_run: bool, preset: str | None, device: str | None) -> Plan:
    device = device or ("cpu" if dry_run else "cuda:0")
    kind = "KIND_CPU" if device == "cpu" else "KIND_GPU"
    if dry_run:
        return Plan(preset or "tiny", device, kind, warmup=1, iters=5, case_budget_s=5, compare=6)
    return Plan(preset or "paper", device, kind, warmup=5, iters=100, case_budget_s=10, compare=16)


class Log:
    def __init__(self):
        self.start = time.perf_counter()
        self.steps: dict[str, float] = {}
        self._last = self.start

    def __call__(self, message: str, step: str | None = None) -> None:
        now = time.perf_counter()
        if step:
            self.steps[step] = round(now - self._last, 2)
        self._last = now
        print(f"[gpu-check +{now - self.start:6.1f}s] {message}", flush=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


# ---------------------------------------------------------------------------------------------
# Model and repository
# ---------------------------------------------------------------------------------------------
def untrained_release_config(preset_name: str):
    """The preset, with PAPER_LOG's smaller synthetic log for paper: what a latency check builds
    its untrained release from."""
    from oneranker.config import preset

    cfg = preset(preset_name)
    if preset_name == "paper":
        for key, value in PAPER_LOG.items():
            setattr(cfg.data, key, value)
    return cfg.validate()


def build_repository(plan: Plan, cfg, work: Path) -> tuple[Path, dict]:
    """Untrained run -> exported programs -> torch repository rendered with the default settings
    (README "Batching and threads"); returns the repository and those settings."""
    from oneranker.train import init_run
    from oneranker_build.cli import build
    from oneranker_build.render import RenderSettings

    init_run(cfg, work / "run")
    build(work / "run", work / "build", ["torch"], plan.instance_kind, onnx_too=False)
    s = RenderSettings(instance_kind=plan.instance_kind)
    keys = ("instance_kind", "recommender_instances", "intra_op_threads", "max_batch_size", "max_queue_delay_us")
    return work / "build" / "torch", {k: getattr(s, k) for k in keys}


def synthetic_request(rng, tables, num_features: int, cardinality: int, length: int, now=1_700_000_000):
    """A valid raw request: `length` events over the catalogue (content views and ad actions)."""
    n_ads, n_contents = len(tables.ad_ids), len(tables.content_ids)
    is_content = rng.random(length) < n_contents / (n_ads + n_contents)
    items = np.where(
        is_content,
        tables.content_ids[rng.integers(0, max(n_contents, 1), length)],
        tables.ad_ids[rng.integers(0, n_ads, length)],
    )
    actions = np.where(is_content, contract.ACTION_CONTENT_VIEW, rng.choice(contract.AD_ACTIONS, length))
    timestamps = now - np.cumsum(rng.integers(5, 3600, length))[::-1]
    return RecommendRequest(
        user_features=rng.integers(0, cardinality, num_features),
        item_ids=items,
        actions=actions,
        timestamps=timestamps,
        request_time=now,
        num_candidates=CANDIDATES,
    )


def to_request(req: RecommendRequest):
    """The Request the fused model builds from the same arrays."""
    from oneranker_serving.triton.arrays import request_from_arrays

    return request_from_arrays(request_arrays(req))


# ---------------------------------------------------------------------------------------------
# Served vs in process
# ---------------------------------------------------------------------------------------------
def compare(client: HttpV2Client, recommender, requests: list) -> dict:
    mismatched, max_diff, lengths, ranked = [], 0.0, [], []
    for i, req in enumerate(requests):
        served = client.infer(contract.PUBLIC_MODEL, request_arrays(req))
        local = recommender.recommend([to_request(req)])[0]
        if isinstance(local, Exception):
            raise RuntimeError(f"request {i} (history {len(req.item_ids)}) refused in process: {local}")
        items, scores = served["rec_item_ids"][0], served["rec_scores"][0]
        lengths.append(len(req.item_ids))
        ranked.append(local.num_candidates)
        if items.shape != local.item_ids.shape or not np.array_equal(items, local.item_ids):
            mismatched.append({"request": i, "served": items.tolist(), "in_process": local.item_ids.tolist()})
            continue
        max_diff = max(max_diff, float(np.abs(scores - local.scores).max()))
    return {
        "requests": len(requests),
        "history_lengths": lengths,
        "candidates_asked": CANDIDATES,
        "candidates_ranked": [min(ranked), max(ranked)],
        "items_identical": len(requests) - len(mismatched),
        "max_abs_score_diff": max_diff,
        "score_tolerance": SCORE_TOL,
        "mismatches": mismatched[:5],
        "ok": not mismatched and max_diff <= SCORE_TOL,
    }


def _timed(fn, rounds: list, plan: Plan) -> dict:
    for i in range(plan.warmup):
        fn(rounds[i % len(rounds)])
    times, start = [], time.perf_counter()
    for i in range(plan.iters):
        t0 = time.perf_counter()
        fn(rounds[i % len(rounds)])
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > plan.case_budget_s:
            break
    return percentiles(times)


def _metric(text: str, name: str, model: str) -> float:
    prefix = f'{name}{{model="{model}",'
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def latency(plan: Plan, url: str, metrics_url: str, recommender, requests: dict, batches) -> list[dict]:
    """requests: history -> list of RecommendRequest (enough for 4 distinct rounds of the largest batch)."""
    local_clients, clients = threading.local(), []

    def served_one(req):
        if not hasattr(local_clients, "client"):
            local_clients.client = HttpV2Client(url)
            clients.append(local_clients.client)
        return local_clients.client.infer(contract.PUBLIC_MODEL, request_arrays(req))

    def counters() -> tuple[float, float]:
        text = _NO_PROXY.open(metrics_url, timeout=10).read().decode()
        return (
            _metric(text, "nv_inference_request_success", contract.FUSED_MODEL),
            _metric(text, "nv_inference_exec_count", contract.FUSED_MODEL),
        )

    rows = []
    with ThreadPoolExecutor(max_workers=max(batches)) as pool:
        for history, pool_requests in requests.items():
            for batch in batches:
                rounds = [pool_requests[i * batch : (i + 1) * batch] for i in range(len(pool_requests) // batch)]
                local_rounds = [[to_request(r) for r in rnd] for rnd in rounds]
                row = {"history": history, "batch": batch, "candidates": CANDIDATES, "served": None}
                row["in_process"] = _timed(recommender.recommend, local_rounds, plan)
                before = counters()
                send = (lambda rnd: served_one(rnd[0])) if batch == 1 else (lambda rnd: list(pool.map(served_one, rnd)))
                try:
                    row["served"] = _timed(send, rounds, plan)
                except InferError as err:  # e.g. queue timeouts when a batch takes seconds (CPU)
                    row["served_error"] = str(err)
                after = counters()
                executions = after[1] - before[1]
                row["served_mean_batch"] = (after[0] - before[0]) / executions if executions else None
                rows.append(row)
                a, b = row["in_process"], row["served"]
                served = f"p50 {b['p50_ms']:8.2f} ms p99 {b['p99_ms']:8.2f}" if b else row["served_error"]
                print(
                    f"[gpu-check] history {history:5d} batch {batch}: in process p50 {a['p50_ms']:8.2f} ms "
                    f"p99 {a['p99_ms']:8.2f} | served {served} (mean served batch {row['served_mean_batch'] or 0:.1f})",
                    flush=True,
                )
    for client in clients:  # an open keep-alive connection holds tritonserver's shutdown for 30 s
        client.close()
    return rows


# ---------------------------------------------------------------------------------------------
# The whole check
# ---------------------------------------------------------------------------------------------
def environment(plan: Plan, carry_manifest: dict) -> dict:
    import torch

    cuda = plan.device.startswith("cuda")
    return {
        "device": torch.cuda.get_device_name(plan.device) if cuda else machine().split(", Python")[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "numpy": np.__version__,
        "nvidia_pytriton": carry_manifest.get("nvidia_pytriton"),
    }


def run(plan: Plan, carry: Path, work: Path, out: Path) -> int:
    """The check, inside the venv `gpu_carry.make_env` made; `carry`: where `gpu_carry.unpack` put
    the server (site/) and the carry's manifest."""
    import torch

    from oneranker_serving.artifacts import load_recommender, read_export_info
    from oneranker_serving.local_server import TritonServer

    from .gpu_report import write_report

    log = Log()
    out.mkdir(parents=True, exist_ok=True)
    if plan.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"no CUDA device visible to torch {torch.__version__}: run with --dry-run (CPU, tiny)")
    if not torch.from_numpy(np.arange(3)).sum().item() == 3:  # the torch <-> numpy bridge works with numpy 1.x
        raise SystemExit(f"torch {torch.__version__} cannot use numpy {np.__version__}")
    cfg = untrained_release_config(plan.preset)
    max_history = cfg.serve.max_history
    histories = tuple(sorted({min(h, max_history) for h in HISTORIES}))
    log(f"{plan.preset} preset on {plan.device} ({plan.instance_kind}); histories {histories}, {CANDIDATES} candidates")
    repo, serving = build_repository(plan, cfg, work)
    artifacts = repo / contract.FUSED_MODEL / "1" / "artifacts"
    log(f"untrained run exported and rendered -> {repo}", step="build_s")

    server = TritonServer(
        repo,
        triton_root=carry / "site",
        log_file=out / "tritonserver.log",
        backend_dir=work / "backends",
        model_control_mode="explicit",
        load_models=[contract.FUSED_MODEL, contract.PUBLIC_MODEL],
        ready_timeout=240,
    )
    server.start()
    try:
        server.wait_ready()
        server.wait_model_ready(contract.PUBLIC_MODEL)
        log(f"tritonserver ready (http {server.http_url}, log {server.log_file})", step="server_start_s")
        recommender = load_recommender(artifacts, "torch", threads=1, device=plan.device, search="graph")
        info = read_export_info(artifacts)
        tables = recommender.tables
        rng = np.random.default_rng(0)
        new = lambda length: synthetic_request(rng, tables, info["dims"]["F"], info["feature_cardinality"], length)
        lengths = [int(x) for x in rng.integers(1, max_history + 1, plan.compare)] + list(histories)
        client = HttpV2Client(server.http_url)
        comparison = compare(client, recommender, [new(n) for n in lengths])
        client.close()
        log(
            f"served vs in process: {comparison['items_identical']}/{comparison['requests']} top-k identical, "
            f"max |score diff| {comparison['max_abs_score_diff']:.2e}",
            step="compare_s",
        )
        pools = {h: [new(h) for _ in range(4 * max(BATCHES))] for h in histories}
        rows = latency(plan, server.http_url, server.metrics_url, recommender, pools, BATCHES)
        log("latency measured", step="latency_s")
    finally:
        server.stop()
    ok = comparison["ok"] and all(r["served"] for r in rows)
    summary = {
        "status": "ok" if ok else "FAIL",
        "plan": asdict(plan),
        "environment": environment(plan, json.loads((carry / "carry.json").read_text())),
        "model": {
            "preset": cfg.name,
            "d_model": cfg.model.d_model,
            "layers": [cfg.model.g_layers, cfg.model.h_layers, cfg.model.r_layers],
            "max_history": max_history,
            "length_buckets": list(cfg.serve.length_buckets),
            "codebook_size": cfg.tokenizer.codebook_size,
            "num_ads": cfg.data.num_ads,
            "beam_width": cfg.serve.beam_width,
            "log_overrides": PAPER_LOG if plan.preset == "paper" else {},
        },
        "serving": serving,
        "histories": list(histories),
        "history_note": None
        if histories == HISTORIES
        else f"the {plan.preset} preset serves at most {max_history} events: measured at {list(histories)}",
        "comparison": comparison,
        "latency": rows,
        "steps_s": log.steps,
        "total_s": round(log.elapsed, 1),
        "time_budget_s": TIME_BUDGET_S,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(summary, out)
    log(f"{summary['status']}: {out / 'report.md'} ({summary['total_s']:.0f} s in all)")
    return 0 if ok else 1
