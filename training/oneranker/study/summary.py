"""summary.json (the report's answers as numbers) and the provenance every output carries: the
commit of the checkout, the machine, the command that reproduces the run."""

from __future__ import annotations

import json
import os
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
    """summary.json: commit, machine, command and, per source, what the report's Answers state:
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


def write_summary(summaries: list[dict], args, out: Path) -> Path:
    """OUT/summary.json: study_summary of this run (commit of the checkout, machine, command)."""
    summary = study_summary(summaries, git_commit() or None, machine_description(args), study_command(args))
    (out / "summary.json").write_text(json.dumps(jsonable(summary), indent=2) + "\n")
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


def study_command(args) -> str:
    return f"python -m oneranker.study {' '.join(args.argv)}"


def machine_description(args) -> str:
    return f"{os.cpu_count()} CPU cores visible, torch threads {args.threads}"


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
