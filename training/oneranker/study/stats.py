"""Statistics of the study (pure numpy, torch-free; unit-tested on hand cases).

Per-user metrics: a [U, n] score matrix of the n-candidate protocol (column 0 = the target) ->
one value per test user and metric, so that intervals can resample users.

Intervals:
  * `bootstrap_ci`: percentile bootstrap over users of values [U] or [S, U] (averaged over the S
    seeds first) - the finite test set only;
  * `seed_user_interval` / `paired_seed_user_interval`: per-seed values [S, U] -> [mean, lo, hi]
    that also carries training randomness (t over seed means, in quadrature with the user bootstrap).
"""

from __future__ import annotations

import functools
import math

import numpy as np

KS = (1, 3, 5, 10)  # HR@K / NDCG@K cut-offs of the n-candidate protocol
PROTOCOL_SLATE_K = 5  # value of the top-5 of the n candidates
N_BOOT = 1000  # bootstrap resamples of `bootstrap_ci` (the study's --n-boot default)
SEED_USER_N_BOOT = 2000  # bootstrap resamples of the user part of `seed_user_interval`


def bootstrap_ci(
    values: np.ndarray, n_boot: int = N_BOOT, alpha: float = 0.05, seed: int = 0, ratio_to: np.ndarray | None = None
) -> tuple[float, float, float]:
    """Percentile bootstrap over users. values [U] (or [seeds, U]: averaged over seeds first).
    -> (point, lo, hi) of mean(values), or of mean(values)/mean(ratio_to) - 1 (a lift) when
    `ratio_to` (same users, paired) is given."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 2:
        v = v.mean(0)
    r = None
    if ratio_to is not None:
        r = np.asarray(ratio_to, dtype=np.float64)
        r = r.mean(0) if r.ndim == 2 else r
    n = v.shape[0]
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means, rmeans = np.empty(n_boot), np.empty(n_boot)
    for start in range(0, n_boot, 100):  # chunks keep the index matrix small
        stop = min(n_boot, start + 100)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = v[idx].mean(1)
        if r is not None:
            rmeans[start:stop] = r[idx].mean(1)
    if r is not None:
        point = v.mean() / r.mean() - 1.0 if r.mean() != 0 else float("nan")
        with np.errstate(divide="ignore", invalid="ignore"):
            stats = means / rmeans - 1.0
    else:
        point, stats = v.mean(), means
    stats = stats[np.isfinite(stats)]  # a lift is undefined in a resample whose baseline mean is 0
    if stats.size == 0:
        return float(point), float("nan"), float("nan")
    lo, hi = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(point), float(lo), float(hi)


def iqr(values: np.ndarray) -> float:
    q1, q3 = np.percentile(values, [25, 75])
    return float(q3 - q1)


def iqr_diff_ci(
    a: np.ndarray, b: np.ndarray, n_boot: int = N_BOOT, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """Paired bootstrap over users of IQR(a) - IQR(b); a, b [seeds, U, n] pooled |rank diff|."""
    point = iqr(a.reshape(-1)) - iqr(b.reshape(-1))
    rng = np.random.default_rng(seed)
    n = a.shape[1]
    stats = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(0, n, size=n)
        stats[i] = iqr(a[:, idx].reshape(-1)) - iqr(b[:, idx].reshape(-1))
    lo, hi = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return point, float(lo), float(hi)


def verdict(lo: float, hi: float, delta: float) -> str:
    if lo > 0:
        return "reproduced"
    if hi < 0:
        return "reversed"
    return "n.s. (same sign)" if delta > 0 else "n.s. (opposite sign)" if delta < 0 else "n.s. (tie)"


def candidate_ranks(scores: np.ndarray) -> np.ndarray:
    """[S, n] scores -> [S, n] 0-based rank of every candidate (0 = best; ties by column)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :].repeat(scores.shape[0], 0), axis=1)
    return ranks


def rank_agreement(gen: np.ndarray, rank: np.ndarray, ks=None) -> dict[str, np.ndarray]:
    """Fig. 3: per user, |rank under generation - rank under ranking| of every candidate
    ("abs_diff" [S, n]) and the top-K overlap |top_K(gen) & top_K(rank)| / K ("overlap" [S, len(ks)])."""
    n = gen.shape[1]
    ks = list(range(1, n + 1)) if ks is None else list(ks)
    rg, rr = candidate_ranks(gen), candidate_ranks(rank)
    overlap = np.stack([((rg < k) & (rr < k)).sum(1) / k for k in ks], axis=1)
    return {"abs_diff": np.abs(rg - rr), "overlap": overlap, "ks": np.asarray(ks)}


def auc_per_user(scores: np.ndarray) -> np.ndarray:
    """AUC of column 0 (the positive) against the other columns, ties count 1/2."""
    t = scores[:, :1]
    neg = scores[:, 1:]
    return ((neg < t).sum(1) + 0.5 * (neg == t).sum(1)) / neg.shape[1]


def pooled_auc(scores: np.ndarray) -> float:
    """AUC over all (user, candidate) pairs pooled (labels: column 0 positive), tie-aware."""
    s = scores.reshape(-1)
    y = np.zeros(scores.shape, dtype=bool)
    y[:, 0] = True
    y = y.reshape(-1)
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    avg_rank = (ends - (counts - 1) / 2.0)[inverse]  # 1-based average ranks
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((avg_rank[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def protocol_metrics(scores: np.ndarray, samples, price: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per-user metrics of the n-candidate protocol; their means equal `evaluate.ranking_metrics`
    / `evaluate.slate_value`."""
    from ..evaluate import target_rank

    rank = target_rank(scores)
    out: dict[str, np.ndarray] = {}
    for k in KS:
        hit = rank < k
        out[f"HR@{k}"] = hit.astype(np.float64)
        out[f"NDCG@{k}"] = hit / np.log2(rank + 2)
    ecpm = samples.candidate_ecpm
    order = np.argsort(-scores, axis=1, kind="stable")
    if np.any(ecpm):
        gains = ecpm.astype(np.float64)
        ideal = -np.sort(-gains, axis=1)
        for k in KS:
            disc = 1.0 / np.log2(np.arange(2, k + 2))
            dcg = (np.take_along_axis(gains, order[:, :k], 1) * disc).sum(1)
            idcg = (ideal[:, :k] * disc).sum(1)
            out[f"vNDCG@{k}"] = np.where(idcg > 0, dcg / np.maximum(idcg, 1e-12), 0.0)
        top = order[:, :PROTOCOL_SLATE_K]
        out[f"eCPM@{PROTOCOL_SLATE_K}"] = np.take_along_axis(gains, top, 1).sum(1)
        out[f"eGMV@{PROTOCOL_SLATE_K}"] = np.take_along_axis(samples.candidate_gmv.astype(np.float64), top, 1).sum(1)
    if price is not None:
        out[f"rGMV@{PROTOCOL_SLATE_K}"] = price[samples.target].astype(np.float64) * (rank < PROTOCOL_SLATE_K)
    out["GAUC"] = auc_per_user(scores)
    return out


@functools.lru_cache(maxsize=64)  # the grid costs ~10 ms; reports ask the same (p, df) many times
def t_quantile(p: float, df: int) -> float:
    """Student-t quantile (no scipy in the venv): the CDF by integrating the closed-form
    density on a fine grid, inverted by interpolation. Accurate to ~1e-4 for df >= 1."""
    if not 0.5 <= p < 1:
        raise ValueError("p must be in [0.5, 1)")
    logc = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    # substitution x = tan(u) keeps the heavy tails (df = 1) on a finite grid
    u = np.linspace(0.0, math.pi / 2 - 1e-9, 400_001)
    x = np.tan(u)
    dens = np.exp(logc - (df + 1) / 2 * np.log1p(x * x / df)) / np.cos(u) ** 2
    cdf = 0.5 + np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2 * np.diff(u))])
    return float(np.interp(p, cdf, x))


def seed_user_interval(
    per_seed: np.ndarray, level: float = 0.95, n_boot: int = SEED_USER_N_BOOT, seed: int = 0
) -> list[float]:
    """per_seed [S, U] per-user values of one metric for S training seeds (the same U users in every
    row; [U] = one seed) -> [mean, lo, hi], a `level` interval around the overall mean.

    Two sources of error, each with its own half-width:
      * h_seed, training randomness: t-interval of the S seed means (S - 1 degrees of freedom);
        absent when S == 1;
      * h_user, the finite test set: percentile bootstrap over users, half the width between the
        quantiles. Every seed scores the same users, so users are resampled jointly across seeds,
        which for the mean over seeds equals resampling the per-user means over seeds.
    half = sqrt(h_seed^2 + h_user^2): the sources are independent (a seed changes the model, not
    the users) and neither interval alone covers both, so their variances add."""
    values = np.asarray(per_seed, dtype=np.float64)
    if values.ndim == 1:
        values = values[None]
    num_seeds, num_users = values.shape
    mean = float(values.mean())
    h_seed = 0.0
    if num_seeds >= 2:
        seed_means = values.mean(1)
        h_seed = t_quantile(0.5 + level / 2, num_seeds - 1) * seed_means.std(ddof=1) / math.sqrt(num_seeds)
    rng = np.random.default_rng(seed)
    user_means = values.mean(0)  # [U]
    boot = np.empty(n_boot)
    for start in range(0, n_boot, 250):  # chunks keep the index matrix at 250 x U
        idx = rng.integers(0, num_users, size=(min(250, n_boot - start), num_users))
        boot[start : start + idx.shape[0]] = user_means[idx].mean(1)
    alpha = (1 - level) / 2
    lo_q, hi_q = np.quantile(boot, [alpha, 1 - alpha])
    h_user = float(hi_q - lo_q) / 2
    half = math.sqrt(h_seed**2 + h_user**2)
    return [mean, mean - half, mean + half]


def paired_seed_user_interval(
    a: np.ndarray, b: np.ndarray, level: float = 0.95, n_boot: int = SEED_USER_N_BOOT, seed: int = 0
) -> list[float]:
    """a, b [S, U]: two systems scored on the same users with the same seeds -> [mean, lo, hi] of
    a - b (`seed_user_interval` of the per-seed, per-user difference; pairing removes the user
    and seed effects the two share)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired arrays differ in shape: {a.shape} vs {b.shape}")
    return seed_user_interval(a - b, level, n_boot, seed)
