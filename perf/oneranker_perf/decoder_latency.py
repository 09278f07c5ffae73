"""The price of conditioning: request latency of the two semantic-ID decoders, side by side.

    python -m oneranker_perf.decoder_latency --run factorized=RUN_A --run conditioned=RUN_B \
        --out perf/results/decoder

RUN_A and RUN_B are two trained runs of the same preset that differ only in
`ModelConfig.decoder` (`decoder_bench --source synthetic --keep-run DIR [--max-steps 20]` writes
them; the cost does not depend on the weights, so a short run serves). Each is
built (ONNX, onnxruntime repository) and measured in ONE run, the two decoders interleaved
request by request so that machine noise falls on both:

  * in_process_p50   the fused path in process (`artifacts.load_recommender(..., search="graph")`:
                     validation, tokenization, generation graph with the beam search inside,
                     ranking graph), concurrency 1, the engine threads one served instance has;
  * served_c1_p50    the public ensemble over gRPC, two tritonservers up at once, concurrency 1;
  * paper_generation_p50  the `paper` preset (K = 256 codes per level, beam width 64, history
                     512, 20,000 ads): Steps 1-2 + the trie beam search of an untrained model in
                     eager PyTorch (cost does not depend on the weights); paper_search_p50 the
                     beam search alone, where the decoder's share of the work is largest.

torch's OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE, as the torch engine sets it):
spinning threads on shared cores made single timings vary 20x.

Ratios (conditioned / factorized) are the figures to quote; absolute milliseconds are this
machine's. Writes `latency.json` (read by `decoder_bench --report`).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (module docstring)
from pathlib import Path

import numpy as np

from .common import git_commit, machine, percentiles, reproduce_command, rotated
from .topology_bench import bench_requests, paired_in_process, served_threads

DECODERS = ("factorized", "conditioned")


def paired_served(clients: dict, requests: list, n: int) -> dict:
    """Concurrency-1 latency of several clients, interleaved (order rotating per request)."""
    labels = list(clients)
    for client in clients.values():  # warm-up
        for req in requests[:10]:
            client.recommend(req)
    times: dict = {k: [] for k in labels}
    for i in range(n):
        for k in rotated(labels, i):
            start = time.perf_counter()
            clients[k].recommend(requests[i % len(requests)])
            times[k].append(time.perf_counter() - start)
    return {k: percentiles(v) for k, v in times.items()}


def trained_paths(runs: dict[str, Path], work: Path, n_latency: int, n_requests: int) -> dict:
    from oneranker_build.cli import build
    from oneranker_client import contract
    from oneranker_client.client import OneRankerClient
    from oneranker_serving import artifacts
    from oneranker_serving.local_server import TritonServer

    repos = {}
    for decoder, run_dir in runs.items():
        build(run_dir, work / decoder, ["onnxruntime"])
        repos[decoder] = work / decoder / "onnxruntime"
    _, raw, reqs = bench_requests(runs[DECODERS[0]], n_requests)
    threads = served_threads(repos[DECODERS[0]] / contract.FUSED_MODEL / "config.pbtxt")
    local = {
        d: artifacts.load_recommender(
            repos[d] / contract.FUSED_MODEL / "1" / "artifacts", "onnxruntime", threads=threads, search="graph"
        )
        for d in runs
    }
    for rec in local.values():  # warm-up: first calls allocate
        for r in raw[:10]:
            rec.recommend([r])
    in_process = paired_in_process(
        {d: (lambda r, rec=rec: rec.recommend([r])) for d, rec in local.items()}, raw, n_latency
    )
    servers = {d: TritonServer(repos[d], log_file=work / f"tritonserver-{d}.log") for d in runs}
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            server.wait_ready(180)
        clients = {d: OneRankerClient(s.grpc_url, retries=0) for d, s in servers.items()}
        served = paired_served(clients, reqs, n_latency)
        for client in clients.values():
            client.close()
    finally:
        for server in servers.values():
            server.stop()
    return {"in_process": in_process, "served_c1": served, "engine_threads": threads}


def paper_generation(repeats: int, length: int = 512, threads: int = 2) -> dict:
    """Eager Steps 1-2 + beam search at the paper preset, both decoders interleaved."""
    import torch

    from oneranker.beam_search import StreamDecoder, TrieBeamSearch, stream_matrix
    from oneranker.config import preset
    from oneranker.tokenizer import build_trie
    from oneranker_build.export import example_generator_inputs

    from .scaling_bench import _untrained_model

    torch.set_num_threads(threads)
    cfg = preset("paper")
    t = cfg.tokenizer
    rng = np.random.default_rng(0)
    sizes = [t.codebook_size] * t.num_levels + [t.max_collisions]
    paths = np.unique(np.stack([rng.integers(0, s, cfg.data.num_ads * 2) for s in sizes], 1), axis=0)
    paths = paths[rng.permutation(len(paths))[: cfg.data.num_ads]]
    trie = build_trie(paths, t.max_codes)
    streams = stream_matrix(cfg.model.num_interest_tokens, cfg.model.num_value_tokens)
    graphs = {}
    for decoder in DECODERS:
        cfg.model.decoder = decoder
        torch.manual_seed(0)
        model = _untrained_model(cfg)
        graphs[decoder] = (model, TrieBeamSearch(StreamDecoder(model.decoder, streams), trie).eval())
    inputs = example_generator_inputs(graphs[DECODERS[0]][0], 1, length)
    inputs["hist_len"][:] = length
    knobs = (torch.tensor([cfg.serve.beam_width]), torch.tensor([cfg.serve.num_candidates]), torch.full((1, 1), -1))

    times: dict = {d: {"generation": [], "search": []} for d in DECODERS}
    with torch.inference_mode():
        states = {d: graphs[d][0].encode_user(*inputs.values()).decoder_state for d in DECODERS}
        for d in DECODERS:  # warm-up
            graphs[d][1](states[d], *knobs)
        for i in range(repeats):
            for d in DECODERS[i % 2 :] + DECODERS[: i % 2]:
                model, search = graphs[d]
                start = time.perf_counter()
                search(model.encode_user(*inputs.values()).decoder_state, *knobs)
                middle = time.perf_counter()
                search(states[d], *knobs)
                times[d]["generation"].append(middle - start)
                times[d]["search"].append(time.perf_counter() - middle)
    return {
        "history": length,
        "beam_width": cfg.serve.beam_width,
        "num_candidates": cfg.serve.num_candidates,
        "codes_per_level": t.max_codes,
        "ads": int(len(paths)),
        "threads": threads,
        **{d: {k: percentiles(v) for k, v in times[d].items()} for d in DECODERS},
    }


def run(runs: dict[str, Path], out: Path, n_latency: int, n_requests: int, repeats: int, command: str) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="decoder-latency-") as tmp:
        trained = trained_paths(runs, Path(tmp), n_latency, n_requests)
    paper = paper_generation(repeats)
    result = {
        "commit": git_commit(),
        "machine": machine(),
        "command": command,
        "runs": {d: str(p) for d, p in runs.items()},
        "requests": n_latency,
        "trained": trained,
        "paper_generation": paper,
        "latency_ms": {
            d: {
                "in_process_p50": trained["in_process"][d]["p50_ms"],
                "served_c1_p50": trained["served_c1"][d]["p50_ms"],
                "paper_generation_p50": paper[d]["generation"]["p50_ms"],
                "paper_search_p50": paper[d]["search"]["p50_ms"],
            }
            for d in DECODERS
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, help="DECODER=RUN_DIR, once per decoder")
    parser.add_argument("--out", type=Path, default=Path("perf/results/decoder"))
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--requests", type=int, default=64, help="distinct test-split requests cycled through")
    parser.add_argument("--repeats", type=int, default=20, help="paper-preset generation timings per decoder")
    args = parser.parse_args(argv)
    runs = dict(item.split("=", 1) for item in args.run)
    if sorted(runs) != sorted(DECODERS):
        parser.error(f"give one --run per decoder: {', '.join(DECODERS)}")
    runs = {d: Path(runs[d]) for d in DECODERS}
    result = run(
        runs,
        args.out,
        args.latency_requests,
        args.requests,
        args.repeats,
        reproduce_command("oneranker_perf.decoder_latency", argv),
    )
    print(json.dumps(result["latency_ms"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
