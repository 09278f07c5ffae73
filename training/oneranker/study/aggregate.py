"""Aggregation of one source: SourceData (per-user values per row, seed and metric) -> the summary
dict the report, plots, results.json and summary.json read.

Every interval carries training variance: a row's metric is `stats.seed_user_interval` of its
[S, U] values (t over the S seed means in quadrature with a user bootstrap), a difference between
two rows is `paired_seed_user_interval` over the seeds both have. Rows with missing units use the
seeds they have (the report states S per row). Also: the paper orderings, OneRanker vs the
systems it replaces, value lift over the cascade, L_DC effects (Fig. 3) and, on synthetic, the
power of the full - cascade slate eGMV@10 comparison.
"""

from __future__ import annotations

import math

import numpy as np

from .collect import SourceData
from .rows import PAPER, ROWS, paper_orderings
from .stats import iqr, iqr_diff_ci, paired_seed_user_interval, seed_user_interval, t_quantile, verdict

SYSTEM_METRICS = (
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
VALUE_METRICS = ("eGMV@5", "eCPM@5", "rGMV@5", "slate_eGMV@10", "slate_eCPM@10", "slate_rGMV@10")
COMPARISONS = (
    ("full", "cascade"),
    ("full", "s2"),
    ("full", "hstu"),
    ("full", "popularity"),
    ("cascade", "popularity"),
    ("hstu", "popularity"),
)
POWER = ("full", "cascade", "slate_eGMV@10")  # the issue's power requirement (synthetic)


def _t_half(values: list[float], level: float) -> float:
    """Half-width of the t-interval of the mean of per-seed values (0 with one seed)."""
    if len(values) < 2:
        return 0.0
    return t_quantile(0.5 + level / 2, len(values) - 1) * float(np.std(values, ddof=1)) / math.sqrt(len(values))


class _Intervals:
    def __init__(self, d: SourceData, n_boot: int, level: float):
        self.d, self.n_boot, self.level = d, n_boot, level

    def row(self, row: str, metric: str) -> dict:
        values = self.d.values(row, metric)
        mean, lo, hi = seed_user_interval(values, self.level, self.n_boot)
        seeds = self.d.seeds(row)
        return {"mean": mean, "lo": lo, "hi": hi, "seeds": [float(v.mean()) for v in values], "seed_ids": seeds}

    def diff(self, a: str, b: str, metric: str) -> dict | None:
        seeds = self.d.common_seeds(a, b)
        if not seeds or not self.d.has(a, metric) or not self.d.has(b, metric):
            return None
        va, vb = self.d.values(a, metric, seeds), self.d.values(b, metric, seeds)
        mean, lo, hi = paired_seed_user_interval(va, vb, self.level, self.n_boot)
        return {"delta": mean, "lo": lo, "hi": hi, "seeds": len(seeds), "base_mean": float(vb.mean())}


def _power(d: SourceData, iv: _Intervals, target_pct: float) -> dict | None:
    """Interval half-width of full - cascade slate eGMV@10 as % of full's mean, its seed part, and
    the seed count (t quantile, the seed SD as measured) that would reach the target."""
    a, b, metric = POWER
    diff = iv.diff(a, b, metric)
    if diff is None:
        return None
    seeds = d.common_seeds(a, b)
    full_mean = float(d.values(a, metric, seeds).mean())
    per_seed = (d.values(a, metric, seeds) - d.values(b, metric, seeds)).mean(1)
    half = (diff["hi"] - diff["lo"]) / 2
    h_seed = _t_half(list(per_seed), iv.level)
    h_user = math.sqrt(max(0.0, half**2 - h_seed**2))
    target = target_pct / 100 * abs(full_mean)
    sd = float(np.std(per_seed, ddof=1)) if len(seeds) >= 2 else None

    def seeds_needed(with_users: bool) -> int | None:
        """Smallest S in [2, 1000] whose half-width meets the target (it falls with S: bisection)."""
        if sd is None:
            return None

        def fits(s: int) -> bool:
            h = t_quantile(0.5 + iv.level / 2, s - 1) * sd / math.sqrt(s)
            return math.sqrt(h**2 + (h_user**2 if with_users else 0.0)) <= target

        lo, hi = 2, 1000
        if not fits(hi):
            return None
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
        return lo

    met = half <= target
    users = d.info.get("samples", {}).get("test")
    users_needed = None
    if not met and users and h_user > 0 and target > h_seed:
        users_needed = int(math.ceil(users * (h_user / math.sqrt(target**2 - h_seed**2)) ** 2))
    return {
        "pair": f"{a}-{b}",
        "metric": metric,
        "seeds": len(seeds),
        "test_users": users,
        "full_mean": full_mean,
        "diff": [diff["delta"], diff["lo"], diff["hi"]],
        "half_width": half,
        "half_width_pct": 100 * half / abs(full_mean) if full_mean else None,
        "seed_half_width": h_seed,
        "seed_half_width_pct": 100 * h_seed / abs(full_mean) if full_mean else None,
        "user_half_width": h_user,
        "seed_sd": sd,
        "target_pct": target_pct,
        "met": met,
        "seeds_needed": None if met else seeds_needed(True),
        "seeds_needed_seed_part_only": None if met else seeds_needed(False),
        "test_users_needed_at_these_seeds": users_needed,
    }


def _dc(d: SourceData, iv: _Intervals) -> dict:
    out = {}
    for key, by_seed in d.dc.items():
        seeds = sorted(by_seed)
        absd = np.stack([by_seed[s]["abs_diff"] for s in seeds])  # [S, U, n]
        q1, med, q3 = np.percentile(absd.reshape(-1), [25, 50, 75])
        out[key] = {
            "iqr": float(q3 - q1),
            "q1": float(q1),
            "median": float(med),
            "q3": float(q3),
            "mean_abs_diff": float(absd.mean()),
            "iqr_seeds": [iqr(s.reshape(-1)) for s in absd],
            "overlap": np.mean([by_seed[s]["overlap"].mean(0) for s in seeds], axis=0).tolist(),
        }
    if "full" in d.dc and "wo_dc" in d.dc:
        seeds = [s for s in sorted(d.dc["full"]) if s in d.dc["wo_dc"]]
        if seeds:
            full = {k: np.stack([d.dc["full"][s][k] for s in seeds]) for k in ("abs_diff", "overlap")}
            wo = {k: np.stack([d.dc["wo_dc"][s][k] for s in seeds]) for k in ("abs_diff", "overlap")}
            diffs = {}
            for k in (1, 5, 10):
                mean, lo, hi = paired_seed_user_interval(
                    full["overlap"][:, :, k - 1], wo["overlap"][:, :, k - 1], iv.level, iv.n_boot
                )
                diffs[f"overlap@{k}"] = {"delta": mean, "lo": lo, "hi": hi, "verdict": verdict(lo, hi, mean)}
            # IQR of the pooled |rank diff|: user bootstrap (iqr_diff_ci) in quadrature with the t over seeds
            point, ulo, uhi = iqr_diff_ci(full["abs_diff"], wo["abs_diff"], iv.n_boot)
            per_seed = [iqr(f.reshape(-1)) - iqr(w.reshape(-1)) for f, w in zip(full["abs_diff"], wo["abs_diff"])]
            half = math.sqrt(((uhi - ulo) / 2) ** 2 + _t_half(per_seed, iv.level) ** 2)
            lo, hi = point - half, point + half
            diffs["iqr_abs_rank_diff"] = {"delta": point, "lo": lo, "hi": hi, "verdict": verdict(-hi, -lo, -point)}
            mean, lo, hi = paired_seed_user_interval(
                full["abs_diff"].mean(2), wo["abs_diff"].mean(2), iv.level, iv.n_boot
            )
            diffs["mean_abs_rank_diff"] = {"delta": mean, "lo": lo, "hi": hi, "verdict": verdict(-hi, -lo, -mean)}
            out["full_minus_wo_dc"] = diffs
    return out


def summarize(d: SourceData, n_boot: int, level: float = 0.95, power_target_pct: float = 1.5) -> dict:
    """Per-row intervals, paired comparisons, orderings, lifts, DC and power of one source."""
    out: dict = {"source": d.source, "info": d.info, "skipped": "" if d.per_user else "no run files yet"}
    if not d.per_user:
        return out
    iv = _Intervals(d, n_boot, level)
    rows: dict = {}
    for key in [r.key for r in ROWS if r.key in d.per_user]:
        metrics = sorted({m for per_seed in d.per_user[key].values() for m in per_seed})
        rows[key] = {m: iv.row(key, m) for m in metrics}
        auc = [d.pooled_auc[key][s] for s in d.seeds(key)]
        half = _t_half(auc, level)
        mean = float(np.mean(auc))
        rows[key]["AUC"] = {
            "mean": mean,
            "lo": mean - half if len(auc) > 1 else float("nan"),
            "hi": mean + half if len(auc) > 1 else float("nan"),
            "seeds": auc,
            "seed_ids": d.seeds(key),
        }
    out["rows"] = rows
    orderings = []
    for a, b, table in paper_orderings():
        for m in ("HR@5", "NDCG@5", "vNDCG@5"):
            diff = iv.diff(a, b, m) if a in rows and b in rows else None
            if diff is None:
                continue
            paper_m = "NDCG@5" if m == "vNDCG@5" else m
            pa, pb = PAPER[a].get(paper_m), PAPER[b].get(paper_m)
            orderings.append(
                {
                    "a": a,
                    "b": b,
                    "table": table,
                    "metric": m,
                    **diff,
                    "paper_delta": (pa - pb) if pa is not None and pb is not None else None,
                    "verdict": verdict(diff["lo"], diff["hi"], diff["delta"]),
                }
            )
    out["orderings"] = orderings
    comparisons = []
    for a, b in COMPARISONS:
        if a not in rows or b not in rows:
            continue
        for m in SYSTEM_METRICS:
            diff = iv.diff(a, b, m)
            if diff is not None:
                comparisons.append(
                    {"a": a, "b": b, "metric": m, **diff, "verdict": verdict(diff["lo"], diff["hi"], diff["delta"])}
                )
    out["comparisons"] = comparisons
    # lift over the cascade = paired difference / the cascade's mean (the denominator taken as known)
    lifts = []
    if "cascade" in rows:
        for key in [r.key for r in ROWS if r.key != "cascade" and r.key in rows]:
            for m in VALUE_METRICS:
                diff = iv.diff(key, "cascade", m)
                if diff is None or not diff["base_mean"]:
                    continue
                base = diff["base_mean"]
                lifts.append(
                    {
                        "row": key,
                        "metric": m,
                        "lift": diff["delta"] / base,
                        "lo": diff["lo"] / base,
                        "hi": diff["hi"] / base,
                    }
                )
    out["lifts"] = lifts
    out["dc"] = _dc(d, iv)
    out["power"] = _power(d, iv, power_target_pct) if d.info.get("has_ground_truth") else None
    out["headroom_pct"] = d.headroom_pct
    out["train_seconds"] = {
        run: float(sum(r["train_seconds"] for r in by_seed.values())) for run, by_seed in d.trained.items()
    }
    out["stopping"] = {
        run: {
            "stopped_step": [r["stopping"].get("stopped_step") for r in by_seed.values()],
            "best_step": [r["stopping"].get("best_step") for r in by_seed.values()],
        }
        for run, by_seed in d.trained.items()
    }
    out["eval_seconds"] = float(sum(e for by_seed in d.unit_seconds.values() for _, e in by_seed.values()))
    out["foreign"] = list(d.foreign)
    out["machines"] = sorted(d.machines)
    return out
