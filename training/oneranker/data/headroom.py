"""Headroom of a synthetic world: how much value a relevance-only candidate set leaves behind,
defined from the ground truth alone (no model).

For one user (and request context), with true pCTR p_a, eCPM e_a = bid_a p_a pCVR_a and value
v_a (expected GMV price_a p_a pCVR_a, or the eCPM itself) over every ad a:

    V_all  = sum of v over the top-`slate` ads by e among ALL ads          (the oracle auction)
    V_cand = sum of v over the top-`slate` ads by e among the
             `num_candidates` ads with the highest p                       (an oracle ranker
                                                                            behind a perfect
                                                                            relevance retrieval)
    headroom = 100 * (V_all - V_cand) / V_all

`headroom_pct` averages it over users. With value="ecpm" it is >= 0 and weakly decreasing in
num_candidates (the candidate sets are nested and the slate maximises eCPM). With value="gmv"
(the default, the quantity the study reports) neither holds in general: the slate is chosen by
eCPM, so a per-user figure can be negative when the candidate slate happens to carry more GMV;
both hold whenever GMV is proportional to eCPM per ad.

Data flow: users [N] (+ context [N, F] or [N]) -> chunks of users -> dense [B, A] pCTR and pCVR
from `GroundTruth.pctr` / `pcvr` -> per-user V_all, V_cand -> [N] percentages.

CLI (prints generation time, world statistics and the headroom of the test users at their test
request's context, leave-last-out split):

    python -m oneranker.data.headroom --world v2 --users 5000 --ads 10000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from .schema import Dataset

_PAIRS_PER_CHUNK = 1 << 21  # (user, ad) pairs evaluated at once


def _top_sum(order_key: np.ndarray, value: np.ndarray, k: int) -> np.ndarray:
    """[B]: sum of `value` over the k largest `order_key` entries of each row ([B, n] arrays)."""
    n = order_key.shape[1]
    if k >= n:
        return value.sum(axis=1)
    top = np.argpartition(-order_key, k - 1, axis=1)[:, :k]
    return np.take_along_axis(value, top, axis=1).sum(axis=1)


def headroom_per_user(
    dataset: Dataset,
    users: np.ndarray,
    num_candidates: int,
    slate: int = 10,
    context: np.ndarray | None = None,
    value: str = "gmv",
) -> np.ndarray:
    """[N] float64 headroom in % per entry of `users` (module doc). context: the request context
    per user ([N, F] or [N]); None = the world's context-free pCTR (v2: expectation over hours)."""
    gt = dataset.ground_truth
    if gt is None:
        raise ValueError("headroom needs a dataset with ground truth (synthetic)")
    if value not in ("gmv", "ecpm"):
        raise ValueError("value must be 'gmv' or 'ecpm'")
    if num_candidates < 1 or slate < 1:
        raise ValueError("num_candidates and slate must be >= 1")
    users = np.asarray(users, dtype=np.int64).reshape(-1)
    cat = dataset.catalog
    A = cat.num_ads
    bid = cat.ad_bid.astype(np.float64)
    worth = (cat.ad_price if value == "gmv" else cat.ad_bid).astype(np.float64)
    ctx = None if context is None else np.asarray(context, dtype=np.int64)
    if ctx is not None and ctx.shape[0] != users.shape[0]:
        raise ValueError("context must have one row per user")
    n_cand = min(num_candidates, A)
    out = np.empty(users.shape[0], dtype=np.float64)
    step = max(1, _PAIRS_PER_CHUNK // A)
    ads = np.arange(A, dtype=np.int64)
    for lo in range(0, users.shape[0], step):
        u = users[lo : lo + step]
        B = u.shape[0]
        uu, aa = np.repeat(u, A), np.tile(ads, B)
        cc = None if ctx is None else np.repeat(ctx[lo : lo + step], A, axis=0)
        p = gt.pctr(uu, aa, cc).reshape(B, A)
        pv = p * gt.pcvr(uu, aa).reshape(B, A)
        ecpm, val = bid * pv, worth * pv
        v_all = _top_sum(ecpm, val, slate)
        cand = np.argpartition(-p, n_cand - 1, axis=1)[:, :n_cand] if n_cand < A else np.tile(ads, (B, 1))
        v_cand = _top_sum(np.take_along_axis(ecpm, cand, axis=1), np.take_along_axis(val, cand, axis=1), slate)
        out[lo : lo + B] = 100.0 * (v_all - v_cand) / np.maximum(v_all, 1e-300)
    return out


def headroom_pct(
    dataset: Dataset,
    users: np.ndarray,
    num_candidates: int,
    slate: int = 10,
    context: np.ndarray | None = None,
    value: str = "gmv",
) -> float:
    """Mean over `users` of `headroom_per_user` (%)."""
    return float(headroom_per_user(dataset, users, num_candidates, slate, context, value).mean())


def main(argv=None) -> dict:
    from oneranker_serving.config import ServeConfig

    from ..config import DataConfig
    from .splits import split_target_rows
    from .synthetic import make_synthetic

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", default="v2", choices=("v1", "v2"))
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--ads", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--candidates", type=int, default=ServeConfig().num_candidates)
    ap.add_argument("--slate", type=int, default=10)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = ap.parse_args(argv)

    cfg = DataConfig(num_users=args.users, num_ads=args.ads, seed=args.seed, world=args.world)
    t0 = time.perf_counter()
    ds = make_synthetic(cfg)
    gen_s = time.perf_counter() - t0
    stats = dict(make_synthetic.last_stats)
    rows = split_target_rows(ds, cfg)["test"][0]
    users, context = ds.log.user[rows], ds.context[rows]
    t0 = time.perf_counter()
    res = {
        "world": args.world,
        "users": args.users,
        "ads": args.ads,
        "seed": args.seed,
        "num_candidates": args.candidates,
        "slate": args.slate,
        "test_users": int(users.size),
        "generation_s": round(gen_s, 2),
        "world_stats": stats,
    }
    for value in ("gmv", "ecpm"):
        per_user = headroom_per_user(ds, users, args.candidates, args.slate, context, value)
        res[f"headroom_{value}_pct"] = float(per_user.mean())
        res[f"headroom_{value}_quantiles_10_50_90"] = [float(x) for x in np.quantile(per_user, [0.1, 0.5, 0.9])]
    res["headroom_s"] = round(time.perf_counter() - t0, 2)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for key, val in res.items():
            print(f"{key}: {val}")
    return res


if __name__ == "__main__":
    main()
