"""Aggregation of one source: SourceResult (per-user values [seeds, U] per row and metric) -> the
summary dict the report, plots, results.json and summary.json read: per-row means and CIs, the
paper orderings, OneRanker vs the systems it replaces, value lift over the cascade, L_DC effects."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .rows import PAPER, ROWS, paper_orderings
from .stats import bootstrap_ci, iqr_diff_ci, verdict

if TYPE_CHECKING:
    from .runs import SourceResult


def summarize(res: SourceResult, n_boot: int) -> dict:
    """Point estimates, per-seed values and bootstrap CIs; orderings; DC; lifts."""
    out: dict = {"source": res.source, "skipped": res.skipped, "info": res.info}
    if res.skipped:
        return out
    rows: dict = {}
    for key, metrics in res.per_user.items():
        rows[key] = {}
        for name, values in metrics.items():
            point, lo, hi = bootstrap_ci(values, n_boot)
            rows[key][name] = {"mean": point, "lo": lo, "hi": hi, "seeds": [float(v.mean()) for v in values]}
        auc = res.pooled_auc[key]
        rows[key]["AUC"] = {
            "mean": float(np.mean(auc)),
            "lo": float("nan"),
            "hi": float("nan"),
            "seeds": [float(a) for a in auc],
        }
    out["rows"] = rows
    has_value = "vNDCG@5" in res.per_user["full"]
    metrics = ["HR@5", "NDCG@5"] + (["vNDCG@5"] if has_value else [])
    orderings = []
    for a, b, table in paper_orderings():
        for m in metrics:
            if m not in res.per_user[a] or m not in res.per_user[b]:
                continue
            diff = res.per_user[a][m] - res.per_user[b][m]
            point, lo, hi = bootstrap_ci(diff, n_boot)
            paper_m = "NDCG@5" if m == "vNDCG@5" else m
            pa, pb = PAPER[a].get(paper_m), PAPER[b].get(paper_m)
            orderings.append(
                {
                    "a": a,
                    "b": b,
                    "table": table,
                    "metric": m,
                    "delta": point,
                    "lo": lo,
                    "hi": hi,
                    "paper_delta": (pa - pb) if pa is not None and pb is not None else None,
                    "verdict": verdict(lo, hi, point),
                }
            )
    out["orderings"] = orderings
    # the systems: OneRanker vs what it replaces
    comparisons = []
    sys_metrics = [
        m
        for m in (
            "HR@1",
            "HR@5",
            "HR@10",
            "NDCG@5",
            "NDCG@10",
            "vNDCG@5",
            "GAUC",
            "eCPM@5",
            "eGMV@5",
            "rGMV@5",
            "gen_R@10",
            "gen_R@50",
            "slate_HR@10",
            "slate_eCPM@10",
            "slate_eGMV@10",
            "slate_rGMV@10",
        )
        if m in res.per_user["full"]
    ]
    for a, b in (
        ("full", "cascade"),
        ("full", "hstu"),
        ("full", "popularity"),
        ("cascade", "popularity"),
        ("hstu", "popularity"),
    ):
        for m in sys_metrics:
            if m not in res.per_user[b]:
                continue
            point, lo, hi = bootstrap_ci(res.per_user[a][m] - res.per_user[b][m], n_boot)
            comparisons.append(
                {"a": a, "b": b, "metric": m, "delta": point, "lo": lo, "hi": hi, "verdict": verdict(lo, hi, point)}
            )
    out["comparisons"] = comparisons
    # value lift vs the cascade (relative, paired bootstrap of the ratio of means)
    lifts = []
    value_metrics = [
        m
        for m in ("eGMV@5", "eCPM@5", "rGMV@5", "slate_eGMV@10", "slate_eCPM@10", "slate_rGMV@10")
        if m in res.per_user["full"]
    ]
    for key in [r.key for r in ROWS if r.key != "cascade"]:
        for m in value_metrics:
            if m not in res.per_user[key]:
                continue
            point, lo, hi = bootstrap_ci(res.per_user[key][m], n_boot, ratio_to=res.per_user["cascade"][m])
            lifts.append({"row": key, "metric": m, "lift": point, "lo": lo, "hi": hi})
    out["lifts"] = lifts
    # distribution consistency (Fig. 3)
    dc = {}
    for key, d in res.dc.items():
        absd = d["abs_diff"]  # [seeds, U, n]
        q1, med, q3 = np.percentile(absd.reshape(-1), [25, 50, 75])
        dc[key] = {
            "iqr": float(q3 - q1),
            "q1": float(q1),
            "median": float(med),
            "q3": float(q3),
            "mean_abs_diff": float(absd.mean()),
            "iqr_seeds": [float(np.subtract(*np.percentile(s.reshape(-1), [75, 25]))) for s in absd],
            "overlap": d["overlap"].mean((0, 1)).tolist(),
        }
    if "full" in res.dc and "wo_dc" in res.dc:
        diffs = {}
        for k in (1, 5, 10):
            delta = res.dc["full"]["overlap"][:, :, k - 1] - res.dc["wo_dc"]["overlap"][:, :, k - 1]
            point, lo, hi = bootstrap_ci(delta, n_boot)
            diffs[f"overlap@{k}"] = {"delta": point, "lo": lo, "hi": hi, "verdict": verdict(lo, hi, point)}
        point, lo, hi = iqr_diff_ci(res.dc["full"]["abs_diff"], res.dc["wo_dc"]["abs_diff"], n_boot)
        diffs["iqr_abs_rank_diff"] = {"delta": point, "lo": lo, "hi": hi, "verdict": verdict(-hi, -lo, -point)}
        per_user_abs = res.dc["full"]["abs_diff"].mean(2) - res.dc["wo_dc"]["abs_diff"].mean(2)
        point, lo, hi = bootstrap_ci(per_user_abs, n_boot)
        diffs["mean_abs_rank_diff"] = {"delta": point, "lo": lo, "hi": hi, "verdict": verdict(-hi, -lo, -point)}
        dc["full_minus_wo_dc"] = diffs
    out["dc"] = dc
    out["train_seconds"] = {k: float(np.sum(v)) for k, v in res.train_seconds.items()}
    out["eval_seconds"] = res.eval_seconds
    return out
