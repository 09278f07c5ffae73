"""Realistic load for the public model: request JSONL (client batch mode, locust) and
perf_analyzer ``--input-data`` JSON, both from the dataset of a trained run.

    python -m oneranker_perf.make_inputs --run-dir artifacts/runs/tiny --n 64 \\
        --out-dir artifacts/perf [--split test] [--top-k 10 --num-candidates 64 --beam-width 16]
    python -m oneranker_perf.make_inputs --from-jsonl requests.jsonl --out-dir artifacts/perf

writes ``requests.jsonl`` (one :class:`oneranker_client.RecommendRequest` JSON object a line) and
``perf_data.json``::

    {"data": [{"user_features": {"content": [...], "shape": [F]},
               "item_ids": {"content": [...], "shape": [L]}, ...}, ...]}

Every input of ``contract.PUBLIC`` that a request sets gets an explicit ``content`` and
``shape``; shapes exclude the batch dimension (perf_analyzer adds it with ``-b 1``; giving it
here breaks, see triton-inference-server/server issue 4068). Requests differ in history length,
so each data step carries its own shapes.

Only :func:`requests_from_run` needs torch (it loads the run); the rest is numpy + the client.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from oneranker_client import contract
from oneranker_client.messages import RecommendRequest, request_arrays

__all__ = [
    "perf_analyzer_data",
    "requests_from_run",
    "read_requests_jsonl",
    "write_perf_data",
    "write_requests_jsonl",
    "main",
]

REQUESTS_FILE = "requests.jsonl"
PERF_DATA_FILE = "perf_data.json"


def _as_request(r: RecommendRequest | Mapping[str, Any]) -> RecommendRequest:
    return r if isinstance(r, RecommendRequest) else RecommendRequest.from_json(r)


def perf_analyzer_step(req: RecommendRequest | Mapping[str, Any]) -> dict:
    """One perf_analyzer data step: ``{input: {"content": flat list, "shape": dims without batch}}``
    for every input the request sets (names and dtypes from ``contract.PUBLIC``)."""
    arrays = request_arrays(_as_request(req))  # [1, n] each, contract dtypes
    step = {}
    for spec in contract.PUBLIC.inputs:
        if spec.name in arrays:
            arr = arrays[spec.name][0]  # drop the batch dim
            step[spec.name] = {"content": arr.reshape(-1).tolist(), "shape": list(arr.shape)}
    return step


def perf_analyzer_data(requests: Iterable[RecommendRequest | Mapping[str, Any]]) -> dict:
    """perf_analyzer ``--input-data`` JSON document for a list of requests.

    All steps must set the same inputs (perf_analyzer sends one fixed set per model); a mix of
    set and unset optional inputs is refused."""
    steps = [perf_analyzer_step(r) for r in requests]
    if not steps:
        raise ValueError("no requests")
    names = set(steps[0])
    for i, s in enumerate(steps):
        if set(s) != names:
            raise ValueError(
                f"request {i} sets inputs {sorted(s)}, request 0 sets {sorted(names)}: perf_analyzer "
                "needs the same inputs in every step (set the optional ones in all or in none)"
            )
    return {"data": steps}


def write_perf_data(requests: Iterable, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(perf_analyzer_data(requests)))
    return path


def write_requests_jsonl(requests: Iterable, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in requests:
            f.write(json.dumps(_as_request(r).to_json()) + "\n")
    return path


def read_requests_jsonl(path: str | Path) -> list[dict]:
    """Request dicts of a JSONL file (validated; an "id" key is dropped)."""
    out = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        obj = json.loads(line)
        obj.pop("id", None)
        try:
            out.append(RecommendRequest.from_json(obj).to_json())
        except ValueError as e:
            raise ValueError(f"{path} line {lineno}: {e}") from None
    return out


def requests_from_run(
    run_dir: str | Path,
    n: int,
    split: str = "test",
    top_k: int | None = None,
    num_candidates: int | None = None,
    beam_width: int | None = None,
) -> list[dict]:
    """``n`` raw requests (RecommendRequest JSON dicts) of the samples of ``split`` of the run's
    dataset, rows spread evenly over the split, built by ``oneranker.cli.example_request`` (the
    way a client sends them: item ids, actions, timestamps). Histories longer than the largest
    serving bucket keep their most recent events."""
    from oneranker.checkpoint import load_run
    from oneranker.cli import example_request
    from oneranker.pipeline import prepare

    if n < 1:
        raise ValueError("n must be >= 1")
    cfg, _model, sids, _manifest = load_run(Path(run_dir))
    prep = prepare(cfg, sids=sids)
    if split not in prep.splits:
        raise ValueError(f"unknown split {split!r}; the run has {sorted(prep.splits)}")
    if split != "test":  # example_request reads the "test" split: point it at the one asked for
        prep = dataclasses.replace(prep, splits={**prep.splits, "test": prep.splits[split]})
    total = len(prep.splits["test"])
    if total == 0:
        raise ValueError(f"split {split!r} is empty")
    max_history = int(cfg.serve.length_buckets[-1])
    rows = [int(i * total / n) % total for i in range(n)] if n <= total else [i % total for i in range(n)]
    out = []
    for row in rows:
        req = example_request(prep, row)
        hist = slice(max(0, len(req.item_ids) - max_history), None)
        out.append(
            RecommendRequest(
                user_features=req.user_features,
                item_ids=req.item_ids[hist],
                actions=req.actions[hist],
                timestamps=req.timestamps[hist],
                request_time=int(req.request_time),
                top_k=top_k,
                num_candidates=num_candidates,
                beam_width=beam_width,
            ).to_json()
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m oneranker_perf.make_inputs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-dir", type=Path, help="trained run whose dataset gives the requests")
    src.add_argument("--from-jsonl", type=Path, help="convert an existing requests JSONL instead")
    ap.add_argument("--n", type=int, default=64, help="number of requests (default 64)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--top-k", type=int)
    ap.add_argument("--num-candidates", type=int)
    ap.add_argument("--beam-width", type=int)
    ap.add_argument("--out-dir", type=Path, default=Path("artifacts/perf"))
    args = ap.parse_args(argv)
    try:
        if args.run_dir is not None:
            reqs = requests_from_run(args.run_dir, args.n, args.split, args.top_k, args.num_candidates, args.beam_width)
        else:
            reqs = read_requests_jsonl(args.from_jsonl)
            for r in reqs:
                for name in ("top_k", "num_candidates", "beam_width"):
                    if getattr(args, name) is not None:
                        r[name] = getattr(args, name)
        jsonl = write_requests_jsonl(reqs, args.out_dir / REQUESTS_FILE)
        data = write_perf_data(reqs, args.out_dir / PERF_DATA_FILE)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    lengths = [len(r["item_ids"]) for r in reqs]
    print(f"{len(reqs)} requests (history {min(lengths)}-{max(lengths)} events) -> {jsonl}, {data}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
