"""summary.json (the report's answers as numbers) and the provenance every output carries: the
commit of the checkout, the machine, the command that reproduces the run.

`runs_summary` is the schema of a study rebuilt from run files; `study_summary` reads the earlier
one-process results.json format of the committed folders that predate the run files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# the headline metrics of the report's Answers (and of summary.json), where a source has them
ANSWER_METRICS = (
    "HR@5",
    "NDCG@5",
    "vNDCG@5",
    "GAUC",
    "eGMV@5",
    "rGMV@5",
    "slate_HR@10",
    "slate_eGMV@10",
    "slate_rGMV@10",
)


def study_summary(summaries: list[dict], commit: str | None, machine: str, command: str) -> dict:
    """summary.json of a study folder in the earlier one-process format (results.json holding
    "summaries", no run files; `oneranker_perf.summaries` rebuilds committed ones with it):
    commit, machine, command and, per source, what the report's Answers state:
    OneRanker (full) minus the cascade / the HSTU generator / popularity on each ANSWER_METRICS
    metric as [delta, 95% CI low, high], how many of all compared metrics are significantly better /
    worse, the paper-ordering verdict counts per metric and L_DC's effects (full - w/o L_DC)."""
    sources: dict = {}
    for s in summaries:
        if s["skipped"]:
            sources[s["source"]] = {"skipped": s["skipped"]}
            continue
        src: dict = {}
        for b in ("cascade", "hstu", "popularity"):
            cmp = [c for c in s["comparisons"] if c["a"] == "full" and c["b"] == b]
            src[f"full_minus_{b}"] = {
                c["metric"]: [c["delta"], c["lo"], c["hi"]] for c in cmp if c["metric"] in ANSWER_METRICS
            }
            src[f"vs_{b}"] = {
                "better": int(sum(c["lo"] > 0 for c in cmp)),
                "worse": int(sum(c["hi"] < 0 for c in cmp)),
                "metrics": len(cmp),
            }
        tally: dict = {}
        for o in s["orderings"]:
            tally.setdefault(o["metric"], {}).setdefault(o["verdict"], 0)
            tally[o["metric"]][o["verdict"]] += 1
        src["paper_orderings"] = {m: dict(sorted(c.items())) for m, c in tally.items()}
        dc = s["dc"].get("full_minus_wo_dc", {})
        src["dc_full_minus_wo_dc"] = {k: [d["delta"], d["lo"], d["hi"]] for k, d in dc.items()}
        sources[s["source"]] = src
    return {"commit": commit, "machine": machine, "command": command, "sources": sources}


def _verdict_key(verdict: str) -> str:
    # a tie (difference exactly 0) does not show the paper's direction: counted with ns_opposite
    return {"reproduced": "reproduced", "reversed": "reversed", "n.s. (same sign)": "ns_same"}.get(
        verdict, "ns_opposite"
    )


def runs_summary(summaries: list[dict], ctx) -> dict:
    """summary.json of a study rebuilt from run files (the issue's schema):
    {"preset", "seeds", "data_seed", "protocol_hash", "protocol_commit", "runs_done", "runs_missing",
     "sources": {NAME: {"test_users", "split", "headroom_pct" (synthetic), "rows": {ROW: {METRIC:
     [mean, lo, hi]}}, "diffs": {"full-cascade" | "full-s2" | "full-hstu": {METRIC: [mean, lo, hi]}},
     "paper_pairs": {"hr@5" | "vndcg@5": {"reproduced", "ns_same", "ns_opposite", "reversed"}},
     "power" (synthetic)}}}
    plus the provenance every result folder carries ("commit", "machine", "command").
    METRIC names: protocol.SUMMARY_METRICS, where the source has them."""
    from .protocol import SUMMARY_METRICS

    sources: dict = {}
    for s in summaries:
        info = s.get("info") or {}
        src: dict = {
            "test_users": (info.get("samples") or {}).get("test"),
            "split": s.get("split"),
        }
        if s["source"] == "synthetic":
            src["headroom_pct"] = s.get("headroom_pct")
        if s["skipped"]:
            src.update(rows={}, diffs={}, paper_pairs={}, skipped=s["skipped"])
            sources[s["source"]] = src
            continue
        src["rows"] = {
            row: {name: [c["mean"], c["lo"], c["hi"]] for name, m in SUMMARY_METRICS.items() if (c := cells.get(m))}
            for row, cells in s["rows"].items()
        }
        diffs: dict = {}
        for c in s["comparisons"]:
            if c["a"] == "full" and c["b"] in ("cascade", "s2", "hstu"):
                name = next((k for k, v in SUMMARY_METRICS.items() if v == c["metric"]), None)
                if name:
                    diffs.setdefault(f"full-{c['b']}", {})[name] = [c["delta"], c["lo"], c["hi"]]
        src["diffs"] = diffs
        pairs: dict = {}
        for o in s["orderings"]:
            name = {"HR@5": "hr@5", "vNDCG@5": "vndcg@5"}.get(o["metric"])
            if name:
                tally = pairs.setdefault(name, {"reproduced": 0, "ns_same": 0, "ns_opposite": 0, "reversed": 0})
                tally[_verdict_key(o["verdict"])] += 1
        src["paper_pairs"] = pairs
        if s.get("power") is not None:
            src["power"] = s["power"]
        sources[s["source"]] = src
    machines = sorted({m for s in summaries for m in s.get("machines", []) if m})
    return {
        "preset": ctx.spec.preset,
        "seeds": list(ctx.spec.seeds),
        "data_seed": ctx.spec.data_seed,
        "protocol_hash": ctx.check.hash,
        "protocol_commit": ctx.check.commit,
        "runs_done": list(ctx.done),
        "runs_missing": list(ctx.missing),
        "sources": sources,
        "commit": git_commit() or None,
        "machine": "; ".join(machines) or None,
        "command": ctx.command,
    }


def write_summary(summaries: list[dict], ctx, out: Path) -> Path:
    """OUT/summary.json: `runs_summary` of the report just built."""
    (out / "summary.json").write_text(json.dumps(jsonable(runs_summary(summaries, ctx)), indent=2) + "\n")
    return out / "summary.json"


def git_commit() -> str:
    """HEAD of the checkout (read-only), '+dirty' when study-relevant files differ; '' without git."""
    import subprocess

    root = Path(__file__).resolve().parents[3]  # the checkout: study/ -> oneranker/ -> training/ -> root
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "training"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except Exception:  # noqa: BLE001
        return ""
    return f"{head}{' + uncommitted changes under training/' if dirty else ''}" if head else ""


def jsonable(x):
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if np.isnan(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    return x
