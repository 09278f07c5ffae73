"""Full-catalogue generation and the final slate: beam search over every ad, the slate re-scored
by a ranker, and the per-user metrics of both (arrays [U] per metric, U = test users)."""

from __future__ import annotations

import numpy as np

GEN_KS = (10, 50)  # generation recall / NDCG cut-offs over the beam-search candidates
SLATE_K = 10  # size of the final slate


def full_catalogue(gen_model, rank_model, prep, split: str = "test", batch_size: int = 64) -> dict[str, np.ndarray]:
    """Beam search over every ad (generator `gen_model`), then the final slate: the top SLATE_K
    of the merged candidates by `rank_model`'s Step-3 score (None: by generation log-prob).
    -> {"candidates" [S, n] ad_idx (generation order, -1 pad), "slate" [S, SLATE_K]}."""
    import torch

    from oneranker_serving.selection import beam_search, merge_candidates, top_k

    from ..pipeline import sample_arrays, to_batch
    from ..reference import generation_tables

    cfg = prep.cfg
    samples = prep.splits[split]
    arrays = sample_arrays(prep, samples)
    tables = generation_tables(gen_model, prep.sids)
    num_candidates = max(cfg.serve.num_candidates, max(GEN_KS))
    n = len(samples)
    cands = np.full((n, num_candidates), -1, dtype=np.int64)
    slate = np.full((n, SLATE_K), -1, dtype=np.int64)
    keys = ("user_features", "hist_sids", "hist_actions", "hist_dt", "hist_len")
    with torch.no_grad():
        for start in range(0, n, batch_size):
            index = np.arange(start, min(n, start + batch_size))
            batch = to_batch(arrays, index, cfg.serve.length_buckets)
            args = [batch[k] for k in keys]
            enc = gen_model.encode_user(*args)
            state = enc.decoder_state.float().numpy()
            selected = [
                merge_candidates(*beam_search(state[r], tables, cfg.serve.beam_width), num_candidates)
                for r in range(len(index))
            ]
            width = max(1, max(len(s[0]) for s in selected))
            block = np.zeros((len(index), width), dtype=np.int64)
            for r, (ads, _, _) in enumerate(selected):
                block[r, : len(ads)] = ads
                cands[start + r, : len(ads)] = ads
            if rank_model is not None:
                renc = enc if rank_model is gen_model else rank_model.encode_user(*args)
                cs, ca, cb = prep.tables.candidate_features(block)
                scores = (
                    rank_model.rank(
                        renc.kv, renc.kv_valid, torch.from_numpy(cs), torch.from_numpy(ca), torch.from_numpy(cb)
                    )
                    .float()
                    .numpy()
                )
            for r, (ads, _lp, _) in enumerate(selected):
                if rank_model is None:
                    best = np.arange(min(SLATE_K, len(ads)))  # merge order = generation log-prob
                else:
                    best = top_k(scores[r, : len(ads)], SLATE_K)
                slate[start + r, : len(best)] = ads[best]
    return {"candidates": cands, "slate": slate}


def popularity_catalogue(prep, split: str = "test") -> dict[str, np.ndarray]:
    samples = prep.splits[split]
    order = np.argsort(-prep.popularity, kind="stable")
    num_candidates = max(prep.cfg.serve.num_candidates, max(GEN_KS))
    cands = np.broadcast_to(order[:num_candidates], (len(samples), num_candidates)).copy()
    return {"candidates": cands, "slate": cands[:, :SLATE_K].copy()}


def slate_value(slate: np.ndarray, prep, split: str = "test") -> tuple[np.ndarray, np.ndarray] | None:
    """Ground-truth value of each user's slate [U, k] (ad index, -1 = empty) at the request's own
    context: (expected eCPM [U], expected GMV [U]) summed over the slate; None without ground
    truth (real sources)."""
    gt = prep.dataset.ground_truth
    if gt is None:
        return None
    samples = prep.splits[split]
    users = np.broadcast_to(samples.user[:, None], slate.shape).ravel()
    ctx = np.repeat(samples.context, slate.shape[1], axis=0)  # the request's context per slot
    valid, safe, cat = slate >= 0, np.maximum(slate, 0).ravel(), prep.dataset.catalog
    ecpm = np.where(valid, gt.expected_ecpm(users, safe, cat, ctx).reshape(slate.shape), 0).sum(1)
    gmv = np.where(valid, gt.expected_gmv(users, safe, cat, ctx).reshape(slate.shape), 0).sum(1)
    return ecpm, gmv


def catalogue_metrics(
    result: dict[str, np.ndarray], prep, split: str, price: np.ndarray | None
) -> dict[str, np.ndarray]:
    samples = prep.splits[split]
    target = samples.target[:, None]
    cands, slate = result["candidates"], result["slate"]
    hit_pos = np.where((cands == target).any(1), (cands == target).argmax(1), 10**9)
    out: dict[str, np.ndarray] = {}
    for k in GEN_KS:
        hit = hit_pos < k
        out[f"gen_R@{k}"] = hit.astype(np.float64)
        out[f"gen_NDCG@{k}"] = np.where(hit, 1.0 / np.log2(np.minimum(hit_pos, k) + 2), 0.0)
    in_slate = (slate == target).any(1)
    out[f"slate_HR@{SLATE_K}"] = in_slate.astype(np.float64)
    value = slate_value(slate, prep, split)
    if value is not None:
        out[f"slate_eCPM@{SLATE_K}"], out[f"slate_eGMV@{SLATE_K}"] = value
    if price is not None:
        out[f"slate_rGMV@{SLATE_K}"] = price[samples.target].astype(np.float64) * in_slate
    return out
