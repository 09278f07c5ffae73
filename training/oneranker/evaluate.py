"""Offline evaluation, paper protocol [#21]: the logged target among n sampled candidates
(column 0 of `Samples.candidates`), ranked by
  - ranking:     Step-3 scores (the R-Decoder),
  - generation:  Step-2 value-head (bagged) log-probability of each candidate's SID path,
  - popularity:  training-portion positive counts (the floor).
HR@K and binary NDCG@K of the target; value NDCG@K graded by expected eCPM (synthetic ground
truth); expected eCPM / GMV of the top-k slate where ground truth exists. Ties are broken
pessimistically (the target ranks below every candidate with an equal score).
"""

from __future__ import annotations

import numpy as np
import torch

from .pipeline import Prepared, sample_arrays, to_batch

KS = (1, 3, 5, 10)


def target_rank(scores: np.ndarray) -> np.ndarray:
    """0-based rank of column 0 in each row, ties counted against the target."""
    return (scores[:, 1:] >= scores[:, :1]).sum(1)


def ranking_metrics(scores: np.ndarray, gains: np.ndarray | None = None, ks=KS) -> dict[str, float]:
    """scores [S, n] with the target in column 0; gains [S, n] optional graded relevance."""
    rank = target_rank(scores)
    out = {}
    for k in ks:
        hit = rank < k
        out[f"HR@{k}"] = float(hit.mean())
        out[f"NDCG@{k}"] = float((hit / np.log2(rank + 2)).mean())
    if gains is not None:
        order = np.argsort(-scores, axis=1, kind="stable")
        ideal = -np.sort(-gains, axis=1)
        for k in ks:
            disc = 1.0 / np.log2(np.arange(2, k + 2))
            dcg = (np.take_along_axis(gains, order[:, :k], 1) * disc).sum(1)
            idcg = (ideal[:, :k] * disc).sum(1)
            out[f"vNDCG@{k}"] = float(np.where(idcg > 0, dcg / np.maximum(idcg, 1e-12), 0).mean())
    return out


def slate_value(scores: np.ndarray, ecpm: np.ndarray, gmv: np.ndarray, k: int = 5) -> dict[str, float]:
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return {
        f"eCPM@{k}": float(np.take_along_axis(ecpm, order, 1).sum(1).mean()),
        f"GMV@{k}": float(np.take_along_axis(gmv, order, 1).sum(1).mean()),
    }


@torch.no_grad()
def score_split(
    model, prep: Prepared, split: str = "test", batch_size: int = 128, arrays: dict | None = None
) -> dict[str, np.ndarray]:
    """Scores [S, n] of every scorer on `split` (the model runs on its own device; pass the
    split's `sample_arrays` as `arrays` to reuse them across calls)."""
    arrays = sample_arrays(prep, prep.splits[split]) if arrays is None else arrays
    n = len(prep.splits[split])
    rank_scores, gen_scores = [], []
    model.eval()
    device = next(model.parameters()).device
    for start in range(0, n, batch_size):
        index = np.arange(start, min(n, start + batch_size))
        batch = {k: v.to(device) for k, v in to_batch(arrays, index, prep.cfg.serve.length_buckets).items()}
        out = model(batch)
        rank_scores.append(out["scores"].cpu().numpy())
        gen_scores.append(model.generation_scores(out["encoding"].decoder_state, batch["cand_sids"]).cpu().numpy())
    samples = prep.splits[split]
    return {
        "ranking": np.concatenate(rank_scores),
        "generation": np.concatenate(gen_scores),
        "popularity": prep.popularity[samples.candidates].astype(np.float64),
    }


def evaluate(model, prep: Prepared, split: str = "test") -> dict[str, dict[str, float]]:
    samples = prep.splits[split]
    scored = score_split(model, prep, split)
    has_value = bool(np.any(samples.candidate_ecpm))
    table = {}
    for name, scores in scored.items():
        row = ranking_metrics(scores, samples.candidate_ecpm if has_value else None)
        if has_value:
            row.update(slate_value(scores, samples.candidate_ecpm, samples.candidate_gmv))
        table[name] = row
    return table


def final_scorer(model) -> str:
    """The scorer a configuration serves: the ranker's scores, or the generation score without it."""
    return "ranking" if model.cfg.use_ranker else "generation"


def validation_metric(model, prep: Prepared, metric: str, arrays: dict | None = None) -> float:
    """`metric` (a `ranking_metrics` key, e.g. HR@5) of the final scorer on the valid split:
    the early-stopping criterion."""
    scores = score_split(model, prep, "valid", arrays=arrays)[final_scorer(model)]
    ks = tuple(sorted(set(KS) | {int(metric.split("@")[1])})) if "@" in metric else KS
    return ranking_metrics(scores, ks=ks)[metric]


def format_table(table: dict[str, dict[str, float]], columns=None) -> str:
    columns = columns or list(next(iter(table.values())).keys())
    lines = ["| scorer | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{row.get(c, float('nan')):.4f}" for c in columns) + " |")
    return "\n".join(lines)
