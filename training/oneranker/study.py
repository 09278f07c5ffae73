"""The evaluation study: does OneRanker beat the systems it replaces, and does each part matter?

One command trains every system and ablation on every source, evaluates them under one protocol
and writes `report.md`, PNG plots, `results.json` and `summary.json` (`study_summary`) into `--out`:

    python -m oneranker.study --preset tiny --seeds 0,1,2 --sources synthetic,movielens100k,tafeng \
        --out artifacts/study/tiny
    python -m oneranker.study --smoke --out artifacts/study/smoke      # CI: tiny, 1 seed, synthetic

Same data, splits, semantic IDs, steps, tokens and model width for every row of a source; the
rows differ only in `ModelConfig` switches:

  row                 switches                                             scored by
  full                (none)                                               Step-3 ranking
  wo_dc               use_dc_loss=False                                    Step-3 ranking
  wo_h2kv             use_h2_in_kv=False                                   Step-3 ranking
  s3_only             use_generation=False      (= the cascade's ranker)   Step-3 ranking
  s2                  use_ranker=False          (= the cascade's generator) Step-2 generation
  s2_wo_target        use_ranker=False, use_fake_items=False               Step-2 generation
  s2_wo_target_mda    ... + use_task_decoupling=False (= HSTU generator)   Step-2 generation
  s2_wo_capri         use_ranker=False, cross_attention_first=False        Step-2 generation
  s2_wo_hmask         use_ranker=False, use_hetero_mask=False              Step-2 generation
  cascade             generator (s2 run) + independent ranker (s3_only run), `oneranker.cascade`
  hstu                the s2_wo_target_mda run (closest to a plain HSTU MTP next-item generator)
  popularity          training-portion positive counts (the floor)

Identical configurations are trained once: `s2` IS the cascade generator run and `s3_only` IS the
cascade ranker run (same config and seed), `hstu` IS the `s2_wo_target_mda` run.

Metrics (per test user, so that bootstrap CIs are over users):
  * protocol [#21]: the target among n = data.num_eval_candidates (30) candidates; HR@{1,3,5,10},
    NDCG@{1,3,5,10} (binary), vNDCG@K graded by ground-truth expected eCPM (synthetic only);
    AUC of the target vs the n-1 others per user (GAUC = its mean) and pooled over all users.
  * value of the top-5 of the n candidates: expected eCPM / GMV from the ground truth (synthetic:
    eCPM@5, eGMV@5); realized GMV = real price of the target if it is in the top 5 (rGMV@5, where
    prices are real: Ta-Feng).
  * full catalogue: beam search (`selection.beam_search` + `merge_candidates`, serve.beam_width,
    max(serve.num_candidates, 50) kept) over every ad, nothing excluded; gen_R@K / gen_NDCG@K of the
    target in the generation order (K = 10, 50); the final slate = the top 10 of those candidates
    by the row's final scorer (its ranker, or generation for the S2 rows); slate_HR@10, and its
    expected eCPM / GMV from the ground truth (synthetic) or realized GMV (Ta-Feng).
  * distribution consistency (paper Fig. 3): ranks of the n candidates under Step-2 generation vs
    Step-3 ranking, |rank difference| (IQR, median) and top-K overlap, full vs w/o L_DC.

Statistics: seeds vary the model initialisation, batch order and semantic-ID fit
(train.seed = tokenizer.seed = seed); the data seed is fixed, so every seed evaluates the same
test users and candidates. A row's value = the mean over seeds; its 95% CI = percentile bootstrap
over test users (1000 resamples) of the per-user values averaged over seeds; an ordering (a > b)
is tested by the paired bootstrap of the per-user difference a - b.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

KS = (1, 3, 5, 10)
GEN_KS = (10, 50)
SLATE_K = 10
PROTOCOL_SLATE_K = 5
N_BOOT = 1000

# --------------------------------------------------------------------------------------------
# rows


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    tables: tuple  # paper tables the row belongs to
    run: str | None  # training run whose Step-2/3 scores the 30-candidate protocol uses
    scorer: str  # "ranking" | "generation" | "popularity"
    gen_run: str | None  # full-catalogue candidates from this run's beam search (None: n/a)
    rank_run: str | None  # final slate scored by this run's ranker (None: by generation)
    note: str = ""


# run key -> ModelConfig switches (every run of a source shares everything else)
RUNS: dict[str, dict] = {
    "full": {},
    "wo_dc": {"use_dc_loss": False},
    "wo_h2kv": {"use_h2_in_kv": False},
    "cascade/ranker": {"use_generation": False},
    "cascade/generator": {"use_ranker": False},
    "s2_wo_target": {"use_ranker": False, "use_fake_items": False},
    "s2_wo_target_mda": {"use_ranker": False, "use_fake_items": False, "use_task_decoupling": False},
    "s2_wo_capri": {"use_ranker": False, "cross_attention_first": False},
    "s2_wo_hmask": {"use_ranker": False, "use_hetero_mask": False},
}

ROWS: tuple[Row, ...] = (
    Row("full", "OneRanker (full)", ("T1", "T2"), "full", "ranking", "full", "full"),
    Row("wo_dc", "w/o L_DC", ("T2",), "wo_dc", "ranking", "wo_dc", "wo_dc"),
    Row("wo_h2kv", "w/o H2 in S3 KV", ("T2",), "wo_h2kv", "ranking", "wo_h2kv", "wo_h2kv"),
    Row(
        "s3_only",
        "S3 only",
        ("T2",),
        "cascade/ranker",
        "ranking",
        None,
        None,
        "no generator: full-catalogue metrics n/a; same run as the cascade ranker",
    ),
    Row(
        "s2",
        "OneRanker S2",
        ("T2", "T3"),
        "cascade/generator",
        "generation",
        "cascade/generator",
        None,
        "same run as the cascade generator",
    ),
    Row("s2_wo_target", "S2 w/o Target", ("T2",), "s2_wo_target", "generation", "s2_wo_target", None),
    Row(
        "s2_wo_target_mda",
        "S2 w/o Target & MDA",
        ("T2",),
        "s2_wo_target_mda",
        "generation",
        "s2_wo_target_mda",
        None,
        "same run as the HSTU generator",
    ),
    Row("s2_wo_capri", "S2 w/o CA-Pri", ("T3",), "s2_wo_capri", "generation", "s2_wo_capri", None),
    Row("s2_wo_hmask", "S2 w/o H-Mask", ("T3",), "s2_wo_hmask", "generation", "s2_wo_hmask", None),
    Row(
        "cascade",
        "Cascade (generator + independent ranker)",
        ("T1",),
        "cascade/ranker",
        "ranking",
        "cascade/generator",
        "cascade/ranker",
        "30-candidate protocol = its ranker's scores (identical to S3 only); full catalogue = generator "
        "beams re-scored by the ranker",
    ),
    Row(
        "hstu",
        "HSTU next-item generator",
        ("T1",),
        "s2_wo_target_mda",
        "generation",
        "s2_wo_target_mda",
        None,
        "= S2 w/o Target & MDA (plain HSTU G-Decoder + one shared MTP task token)",
    ),
    Row("popularity", "Popularity (floor)", ("T1",), None, "popularity", None, None),
)
ROW = {r.key: r for r in ROWS}
SYSTEM_ROWS = ("full", "cascade", "hstu", "popularity")
TABLE2 = ("full", "wo_dc", "wo_h2kv", "s3_only", "s2", "s2_wo_target", "s2_wo_target_mda")
TABLE3 = ("s2", "s2_wo_hmask", "s2_wo_capri")  # paper order by HR@5

# paper-notes §1.13 (HR@5, NDCG@5); Table 3 reports HR@5 only
PAPER = {
    "full": {"HR@5": 0.6213, "NDCG@5": 0.7904},
    "wo_dc": {"HR@5": 0.6173, "NDCG@5": 0.7865},
    "wo_h2kv": {"HR@5": 0.6161, "NDCG@5": 0.7858},
    "s3_only": {"HR@5": 0.6157, "NDCG@5": 0.7849},
    "s2": {"HR@5": 0.5448, "NDCG@5": 0.7440},
    "s2_wo_target": {"HR@5": 0.5203, "NDCG@5": 0.7285},
    "s2_wo_target_mda": {"HR@5": 0.5066, "NDCG@5": 0.7275},
    "s2_wo_capri": {"HR@5": 0.5277},
    "s2_wo_hmask": {"HR@5": 0.5335},
}


def paper_orderings() -> list[tuple[str, str, str]]:
    """Every pair (a, b, table) with a above b in paper Table 2 (total order of 7 rows: 21 pairs)
    or Table 3 (3 pairs)."""
    pairs = [(a, b, "T2") for i, a in enumerate(TABLE2) for b in TABLE2[i + 1 :]]
    pairs += [(a, b, "T3") for i, a in enumerate(TABLE3) for b in TABLE3[i + 1 :]]
    return pairs


# --------------------------------------------------------------------------------------------
# statistics (pure numpy; unit-tested on hand cases)


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
    from .evaluate import target_rank

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


# --------------------------------------------------------------------------------------------
# full-catalogue generation and the final slate


def full_catalogue(gen_model, rank_model, prep, split: str = "test", batch_size: int = 64) -> dict[str, np.ndarray]:
    """Beam search over every ad (generator `gen_model`), then the final slate: the top SLATE_K
    of the merged candidates by `rank_model`'s Step-3 score (None: by generation log-prob).
    -> {"candidates" [S, n] ad_idx (generation order, -1 pad), "slate" [S, SLATE_K]}."""
    import torch

    from oneranker_serving.selection import beam_search, merge_candidates, top_k

    from .pipeline import sample_arrays, to_batch
    from .reference import generation_tables

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
    gt = prep.dataset.ground_truth
    if gt is not None:
        users = np.broadcast_to(samples.user[:, None], slate.shape)
        ctx = np.repeat(samples.context, slate.shape[1], axis=0)  # the request's context per slot
        valid = slate >= 0
        safe = np.maximum(slate, 0)
        cat = prep.dataset.catalog
        out[f"slate_eCPM@{SLATE_K}"] = np.where(
            valid, gt.expected_ecpm(users.ravel(), safe.ravel(), cat, ctx).reshape(slate.shape), 0
        ).sum(1)
        out[f"slate_eGMV@{SLATE_K}"] = np.where(
            valid, gt.expected_gmv(users.ravel(), safe.ravel(), cat, ctx).reshape(slate.shape), 0
        ).sum(1)
    if price is not None:
        out[f"slate_rGMV@{SLATE_K}"] = price[samples.target].astype(np.float64) * in_slate
    return out


# --------------------------------------------------------------------------------------------
# configuration per source


def source_config(
    preset_name: str, source: str, seed: int, steps: int | None, threads: int, max_users: int | None
) -> object:
    """The study's config of one (source, seed): the preset, the source, seeded model/tokenizer
    (data seed fixed at 0), and the documented per-source adjustments."""
    from .config import preset

    cfg = preset(preset_name)
    cfg.data.source = source
    cfg.data.seed = 0
    cfg.train.seed = cfg.tokenizer.seed = seed
    cfg.train.num_threads = threads
    # every study run stops by the declared validation rule (TrainConfig's defaults: HR@5 of the
    # final scorer every eval_every steps, patience, best weights restored); `steps` is the cap.
    # The presets turn it off only for the README's main job and the test suite.
    declared = type(cfg.train)()
    cfg.train.early_stopping, cfg.train.eval_every = declared.early_stopping, declared.eval_every
    if steps:
        cfg.train.steps = steps
        if cfg.train.warmup_steps * 4 > steps:  # very short (smoke) runs: warm-up = 20% of the steps
            cfg.train.warmup_steps = max(1, steps // 5)
    if source == "tafeng":
        # 23.8k products do not fit 16 (or 8) codes x 3 levels x 16 collisions (docs/real-data.md)
        cfg.tokenizer.codebook_size = max(cfg.tokenizer.codebook_size, 32)
        cfg.data.max_users = max_users if max_users is not None else {"tiny": 2000, "small": 5000}.get(preset_name, 0)
    elif max_users is not None and source != "synthetic":
        cfg.data.max_users = max_users
    cfg.name = f"{preset_name}-{source}-seed{seed}"
    return cfg.validate()


def variant_config(cfg, switches: dict):
    out = copy.deepcopy(cfg)
    for key, value in switches.items():
        setattr(out.model, key, value)
    return out.validate()


# --------------------------------------------------------------------------------------------
# the study


class Progress:
    def __init__(self, quiet: bool = False):
        self.t0 = time.time()
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[study {time.time() - self.t0:7.1f}s] {msg}", flush=True)


@dataclass
class SourceResult:
    source: str
    skipped: str = ""
    info: dict = field(default_factory=dict)
    per_user: dict = field(default_factory=dict)  # row -> metric -> [seeds, U]
    pooled_auc: dict = field(default_factory=dict)  # row -> [seeds]
    dc: dict = field(default_factory=dict)  # row -> {"abs_diff": [seeds, U, n], "overlap": [seeds, U, n]}
    histories: dict = field(default_factory=dict)  # run -> [seeds] list of history rows
    train_seconds: dict = field(default_factory=dict)  # run -> [seeds]
    eval_seconds: float = 0.0


def run_source(source: str, args, log: Progress, out: Path) -> SourceResult:
    from .cascade import CascadeRun, train_cascade
    from .evaluate import score_split
    from .pipeline import prepare
    from .train import train

    res = SourceResult(source)
    test_key = None
    for seed in args.seeds:
        cfg = source_config(args.preset, source, seed, args.steps, args.threads, args.max_users)
        t = time.time()
        try:
            prep = prepare(cfg)
        except Exception as err:  # noqa: BLE001 - only a missing dataset is skipped, see below
            from .data.real import DatasetUnavailable

            if isinstance(err, DatasetUnavailable):
                res.skipped = f"{type(err).__name__}: {err}"
                log(f"{source}: SKIPPED ({res.skipped})")
                return res
            raise
        test = prep.splits["test"]
        key = (test.user.tobytes(), test.candidates.tobytes())
        if test_key is None:
            test_key = key
            ds = prep.dataset
            res.info = {
                "dataset": ds.name,
                "label_sources": dict(ds.label_sources),
                "label_notes": _label_notes(source),
                "num_users": int(ds.log.num_users),
                "num_ads": int(ds.catalog.num_ads),
                "num_contents": int(ds.catalog.num_contents),
                "num_events": int(ds.log.user.shape[0]),
                "samples": {k: len(v) for k, v in prep.splits.items()},
                "num_candidates": int(test.candidates.shape[1]),
                "has_ground_truth": ds.ground_truth is not None,
                "real_price": ds.label_sources.get("price") == "real",
                "config": cfg.to_dict(),
            }
        elif key != test_key:
            raise RuntimeError(f"{source}: seed {seed} has different test users/candidates (data seed must be fixed)")
        log(
            f"{source} seed={seed}: data ready in {time.time() - t:.1f}s "
            f"({res.info['num_users']} users, {res.info['num_ads']} ads, {len(test)} test users)"
        )
        price = prep.dataset.catalog.ad_price.astype(np.float64) if res.info["real_price"] else None

        models: dict[str, object] = {}
        seed_dir = out / "runs" / source / f"seed{seed}"
        todo = [k for k in RUNS if k != "cascade/ranker"]
        for i, run in enumerate(todo, 1):
            t = time.time()
            if run == "cascade/generator":
                log(
                    f"{source} seed={seed}: [{i}/{len(todo)}] train cascade (generator, then ranker) "
                    f"{cfg.train.steps} steps each"
                )
                casc: CascadeRun = train_cascade(cfg, seed_dir / "cascade", prep=prep, progress=False)
                for half, result in (("cascade/generator", casc.generator), ("cascade/ranker", casc.ranker)):
                    models[half] = result["model"]
                    res.train_seconds.setdefault(half, []).append(result["summary"]["train_seconds"])
                    res.histories.setdefault(half, []).append(_history(seed_dir / half))
            else:
                log(f"{source} seed={seed}: [{i}/{len(todo)}] train {run} {cfg.train.steps} steps")
                result = train(variant_config(cfg, RUNS[run]), seed_dir / run, prep=prep, progress=False)
                models[run] = result["model"]
                res.train_seconds.setdefault(run, []).append(result["summary"]["train_seconds"])
                res.histories.setdefault(run, []).append(_history(seed_dir / run))
            log(f"{source} seed={seed}:     done in {time.time() - t:.1f}s")

        t = time.time()
        scored = {run: score_split(m, prep, "test") for run, m in models.items()}
        catalogue: dict[tuple, dict] = {}
        for row in ROWS:
            if row.scorer == "popularity":
                scores = scored["full"]["popularity"]
            else:
                scores = scored[row.run][row.scorer]
            metrics = protocol_metrics(scores, test, price)
            res.pooled_auc.setdefault(row.key, []).append(pooled_auc(scores))
            if row.scorer == "popularity":
                cat_key = ("popularity",)
                if cat_key not in catalogue:
                    catalogue[cat_key] = catalogue_metrics(popularity_catalogue(prep), prep, "test", price)
            elif row.gen_run is not None:
                cat_key = (row.gen_run, row.rank_run)
                if cat_key not in catalogue:
                    gen_m = models[row.gen_run]
                    rank_m = models[row.rank_run] if row.rank_run else None
                    catalogue[cat_key] = catalogue_metrics(full_catalogue(gen_m, rank_m, prep), prep, "test", price)
            else:
                cat_key = None
            if cat_key is not None:
                metrics.update(catalogue[cat_key])
            for name, values in metrics.items():
                res.per_user.setdefault(row.key, {}).setdefault(name, []).append(values)
        for row in ("full", "wo_dc"):
            agree = rank_agreement(scored[row]["generation"], scored[row]["ranking"])
            d = res.dc.setdefault(row, {"abs_diff": [], "overlap": []})
            d["abs_diff"].append(agree["abs_diff"])
            d["overlap"].append(agree["overlap"])
        res.eval_seconds += time.time() - t
        log(
            f"{source} seed={seed}: evaluated in {time.time() - t:.1f}s  "
            f"(full HR@5={res.per_user['full']['HR@5'][-1].mean():.3f}, "
            f"cascade HR@5={res.per_user['cascade']['HR@5'][-1].mean():.3f}, "
            f"popularity HR@5={res.per_user['popularity']['HR@5'][-1].mean():.3f})"
        )
    for row in res.per_user:
        res.per_user[row] = {m: np.stack(v) for m, v in res.per_user[row].items()}
    for row in res.dc:
        res.dc[row] = {k: np.stack(v) for k, v in res.dc[row].items()}
    return res


def _history(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "train_history.json"
    return json.loads(path.read_text()) if path.exists() else []


def _label_notes(source: str) -> dict:
    if source == "synthetic":
        return {
            "click": "simulated: drawn from the known pCTR of the synthetic marketplace",
            "conversion": "simulated: drawn from the known pCVR",
            "bid": "simulated",
            "price": "simulated",
            "eCPM / GMV values": "ground truth of the simulator: bid x pCTR x pCVR, price x pCTR x pCVR",
        }
    try:
        from .data.real import LABEL_NOTES

        return dict(LABEL_NOTES.get(source, {}))
    except Exception:  # noqa: BLE001
        return {}


# --------------------------------------------------------------------------------------------
# aggregation


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


# --------------------------------------------------------------------------------------------
# plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ablation(summary: dict, path: Path) -> None:
    plt = _plt()
    rows = summary["rows"]
    keys = [r.key for r in ROWS if r.key not in ("hstu",)]
    metrics = [m for m in ("HR@5", "NDCG@5", "vNDCG@5", "GAUC") if m in rows["full"]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4.2), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        mean = np.array([rows[k][m]["mean"] for k in keys])
        err = np.array([[rows[k][m]["mean"] - rows[k][m]["lo"], rows[k][m]["hi"] - rows[k][m]["mean"]] for k in keys]).T
        colors = [
            "C0"
            if ROW[k].scorer == "ranking" and k != "cascade"
            else "C1"
            if ROW[k].scorer == "generation"
            else "C2"
            if k == "cascade"
            else "C7"
            for k in keys
        ]
        y = np.arange(len(keys))
        ax.barh(y, mean, xerr=err, color=colors, capsize=3)
        for i, k in enumerate(keys):
            for s in rows[k][m]["seeds"]:
                ax.plot(s, i, "k.", ms=3)
        ax.set_yticks(y, [ROW[k].label.replace(" (generator + independent ranker)", "") for k in keys], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(m)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(
        f"{summary['source']}: 30-candidate protocol, mean over seeds, 95% bootstrap CI "
        "(blue: Step-3 ranking, orange: Step-2 generation, green: cascade, grey: popularity; dots: seeds)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lift(summary: dict, path: Path) -> bool:
    lifts = summary.get("lifts", [])
    if not lifts:
        return False
    plt = _plt()
    metrics = list(dict.fromkeys(l["metric"] for l in lifts if "CPM" not in l["metric"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4.2), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        sel = [l for l in lifts if l["metric"] == m]
        y = np.arange(len(sel))
        mean = np.array([100 * l["lift"] for l in sel])
        err = np.array([[100 * (l["lift"] - l["lo"]), 100 * (l["hi"] - l["lift"])] for l in sel]).T
        ax.barh(
            y, mean, xerr=err, color=["C3" if l["lo"] > 0 else "C0" if l["hi"] < 0 else "C7" for l in sel], capsize=3
        )
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(y, [ROW[l["row"]].label for l in sel], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("% lift vs cascade")
        ax.set_title(m)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(
        f"{summary['source']}: value lift over the cascade, 95% paired bootstrap CI "
        "(red: CI > 0, blue: CI < 0, grey: contains 0)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_curves(res: SourceResult, path: Path) -> None:
    plt = _plt()
    terms = ("total", "mtp", "rank", "dc")
    fig, axes = plt.subplots(1, len(terms), figsize=(4.2 * len(terms), 3.8), squeeze=False)
    colors = {run: f"C{i}" for i, run in enumerate(RUNS)}  # one colour per run in every panel
    for run, hists in res.histories.items():
        hists = [h for h in hists if h]
        if not hists:
            continue
        for ax, term in zip(axes[0], terms):
            if term not in hists[0][0]:
                continue
            length = min(len(h) for h in hists)
            y = np.mean([[row[term] for row in h[:length]] for h in hists], axis=0)
            w = max(1, length // 20)
            smooth = np.convolve(y, np.ones(w) / w, mode="valid")
            ax.plot(np.arange(len(smooth)) + w // 2, smooth, label=run, lw=1.2, color=colors.get(run))
    for ax, term in zip(axes[0], terms):
        ax.set_title(f"L_{term}" if term != "total" else "L_total")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7)
    fig.suptitle(f"{res.source}: training losses (mean over seeds, moving average)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_dc(res: SourceResult, summary: dict, path: Path) -> None:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    keys = [k for k in ("full", "wo_dc") if k in res.dc]
    a1.boxplot([res.dc[k]["abs_diff"].reshape(-1) for k in keys], showfliers=False)
    a1.set_xticks(range(1, len(keys) + 1), [ROW[k].label for k in keys])
    a1.set_ylabel("|Step-2 rank - Step-3 rank| over the 30 candidates")
    a1.set_title("rank difference (box = IQR)")
    for k in keys:
        ov = summary["dc"][k]["overlap"]
        a2.plot(np.arange(1, len(ov) + 1), ov, marker=".", label=ROW[k].label)
    n = len(summary["dc"][keys[0]]["overlap"])
    a2.plot(np.arange(1, n + 1), np.arange(1, n + 1) / n, "k:", lw=0.8, label="random")
    a2.set_xlabel("K")
    a2.set_ylabel("top-K overlap (generation vs ranking)")
    a2.legend(fontsize=8)
    a2.grid(alpha=0.3)
    fig.suptitle(f"{res.source}: distribution consistency (paper Fig. 3), pooled over seeds and test users", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# report


def _fmt(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "n/a"
    if abs(x) >= 100:
        return f"{x:.1f}"
    return f"{x:.{digits}f}"


def _ci(cell: dict, digits: int = 4) -> str:
    if np.isnan(cell["lo"]):
        return _fmt(cell["mean"], digits)
    return f"{_fmt(cell['mean'], digits)} [{_fmt(cell['lo'], digits)}, {_fmt(cell['hi'], digits)}]"


def _sign(x: float) -> str:
    return "+" if x > 0 else "-" if x < 0 else "0"


def _cmp_text(s: dict, a: str, b: str, metric: str) -> str | None:
    for c in s["comparisons"]:
        if c["a"] == a and c["b"] == b and c["metric"] == metric:
            return f"{metric} {c['delta']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]"
    return None


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


def _answers(s: dict) -> list[str]:
    """One bullet list per source: the headline claims with their CIs, and the ordering tally."""
    if s["skipped"]:
        return [f"* **{s['source']}**: skipped ({s['skipped']})."]
    out = [f"* **{s['source']}**"]
    head = [m for m in ANSWER_METRICS if m in s["rows"]["full"]]
    for b, name in (("cascade", "the cascade"), ("hstu", "the HSTU generator"), ("popularity", "popularity")):
        texts = [t for t in (_cmp_text(s, "full", b, m) for m in head) if t]
        wins = sum(1 for c in s["comparisons"] if c["a"] == "full" and c["b"] == b and c["lo"] > 0)
        losses = sum(1 for c in s["comparisons"] if c["a"] == "full" and c["b"] == b and c["hi"] < 0)
        total = sum(1 for c in s["comparisons"] if c["a"] == "full" and c["b"] == b)
        out.append(
            f"  * OneRanker - {name}: "
            + "; ".join(texts)
            + f". Over {total} metrics: {wins} significantly better, {losses} significantly worse."
        )
    tally: dict = {}
    for o in s["orderings"]:
        tally.setdefault(o["metric"], {}).setdefault(o["verdict"], 0)
        tally[o["metric"]][o["verdict"]] += 1
    for m, c in tally.items():
        out.append(
            f"  * Paper orderings on {m} ({sum(c.values())} pairs of Tables 2-3): "
            + ", ".join(f"{v} {k}" for k, v in sorted(c.items()))
            + "."
        )
    dc = s["dc"].get("full_minus_wo_dc")
    if dc:
        out.append(
            "  * L_DC (full - w/o L_DC): "
            + "; ".join(
                f"{k} {d['delta']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}] ({d['verdict']})" for k, d in dc.items()
            )
            + "."
        )
    return out


def write_report(
    summaries: list[dict], results: list[SourceResult], args, out: Path, runtime: float, plots: dict
) -> str:
    lines: list[str] = []
    add = lines.append
    add("# OneRanker study: baselines, paper ablations, real data and ground-truth value")
    add("")
    seeds = ",".join(str(s) for s in args.seeds)
    steps = args.steps or "preset default"
    add(f"Command: `{_command(args)}`  ")
    add(
        f"Preset **{args.preset}**, seeds **{seeds}**, training steps per run **{steps}**, "
        f"bootstrap resamples **{args.n_boot}**, total runtime **{runtime / 60:.1f} min** "
        f"({_machine(args)})."
    )
    add("")
    commit = _git_commit()
    if commit:
        add(f"Code: commit `{commit}`.")
        add("")
    covered = [x["source"] for x in summaries if not x["skipped"]]
    add(
        f"Covers: sources **{', '.join(covered) or 'none'}**"
        + (
            f" (skipped: {', '.join(x['source'] for x in summaries if x['skipped'])})"
            if any(x["skipped"] for x in summaries)
            else ""
        )
        + f"; {len(args.seeds)} seed(s)"
        + (" - fewer than the 3 the study calls for" if len(args.seeds) < 3 else "")
        + "."
    )
    add("")
    add(
        "Nothing in the protocol was tuned toward a result: the numbers below are what the first run of "
        "this harness produced."
    )
    add("")
    add("## Answers (generated from the numbers below)")
    add("")
    for s in summaries:
        lines.extend(_answers(s))
    add("")
    add("## Where every label comes from")
    add("")
    add("| source | status | label provenance (real / proxy / simulated) | evaluation target | value used |")
    add("|---|---|---|---|---|")
    for s in summaries:
        if s["skipped"]:
            add(f"| {s['source']} | **skipped**: {s['skipped']} | | | |")
            continue
        info = s["info"]
        prov = ", ".join(f"{k}: **{v}**" for k, v in sorted(info["label_sources"].items()))
        target = {
            "synthetic": "the logged click/conversion (simulated from the known pCTR/pCVR)",
            "movielens100k": "the last rating >= 4 (PROXY for a click)",
            "tafeng": "the last purchased product (REAL conversion)",
        }.get(s["source"], "the last positive event")
        value = (
            "ground-truth expected eCPM = bid x pCTR x pCVR and GMV = price x pCTR x pCVR of every candidate "
            "(SIMULATED world, known exactly)"
            if info["has_ground_truth"]
            else "realized GMV = REAL median unit price of the purchased target if it is in the slate "
            "(bids SIMULATED = 0.1 x price)"
            if info["real_price"]
            else "none (no price, no bid: value metrics n/a)"
        )
        add(
            f"| {s['source']} | {info['num_users']} users, {info['num_ads']} items, {info['num_events']} events; "
            f"test users {info['samples']['test']} | {prov} | {target} | {value} |"
        )
    add("")
    for s in summaries:
        notes = s.get("info", {}).get("label_notes") or {}
        if notes:
            add(f"*{s['source']}*: " + "; ".join(f"{k}: {v}" for k, v in notes.items()) + ".")
            add("")
    add("## What is compared")
    add("")
    add(
        "Every row of a source uses the same data, split, semantic IDs, candidates, training steps, tokens "
        "and model width; rows differ only in `ModelConfig` switches. Identical configurations are trained "
        "once: *OneRanker S2* is the cascade's generator run, *S3 only* is the cascade's ranker run, the *HSTU "
        "generator* is the *S2 w/o Target & MDA* run."
    )
    add("")
    add("| row | what | switches | scored by |")
    add("|---|---|---|---|")
    for r in ROWS:
        sw = ", ".join(f"{k}={v}" for k, v in RUNS.get(r.run or "", {}).items()) or ("-" if r.run else "n/a")
        if r.key == "cascade":
            sw = "generator: use_ranker=False; ranker: use_generation=False (trained separately)"
        add(f"| {r.key} | {r.label} | {sw} | {r.scorer}{' - ' + r.note if r.note else ''} |")
    add("")
    add(
        "Metrics: **protocol** = the logged target among the target + 29 uniformly sampled candidates, "
        "HR@K / NDCG@K (binary), vNDCG@K graded by the ground-truth expected eCPM of every candidate "
        "(synthetic only; on real data only the target's value is known), GAUC = mean per-user AUC of the target "
        "vs the others (ties 1/2), AUC = pooled over all (user, candidate) pairs (point estimate, mean of seeds). "
        f"eCPM@{PROTOCOL_SLATE_K} / eGMV@{PROTOCOL_SLATE_K} = expected value of the top {PROTOCOL_SLATE_K} of the 30 "
        f"(ground truth); rGMV@{PROTOCOL_SLATE_K} = real price of the target if it is in that top {PROTOCOL_SLATE_K}. "
        "**Full catalogue** = beam search over every item (no exclusions): gen_R@K / gen_NDCG@K of the target in "
        f"the generation order; the final slate = top {SLATE_K} of those candidates by the row's final scorer "
        f"(slate_HR@{SLATE_K}, slate_eCPM/eGMV@{SLATE_K} from the ground truth, slate_rGMV@{SLATE_K} realized). "
        "CIs: 95% percentile bootstrap over test users (per-user values averaged over seeds); differences are paired."
    )
    add("")
    for s in summaries:
        add(f"## Source: {s['source']}")
        add("")
        if s["skipped"]:
            add(f"Skipped: {s['skipped']}")
            add("")
            continue
        rows = s["rows"]
        proto = [
            m
            for m in (
                "HR@1",
                "HR@3",
                "HR@5",
                "HR@10",
                "NDCG@1",
                "NDCG@3",
                "NDCG@5",
                "NDCG@10",
                "vNDCG@1",
                "vNDCG@5",
                "vNDCG@10",
                "GAUC",
                "AUC",
            )
            if m in rows["full"]
        ]
        add("### Main comparison (paper Table 1 analogue, 30-candidate protocol, mean over seeds)")
        add("")
        add("| system | " + " | ".join(proto) + " |")
        add("|---" * (len(proto) + 1) + "|")
        for key in SYSTEM_ROWS:
            add(f"| {ROW[key].label} | " + " | ".join(_fmt(rows[key][m]["mean"]) for m in proto) + " |")
        add("")
        add(
            "OneRanker vs the systems it replaces: paired bootstrap of the per-user difference a - b, "
            "mean [95% CI]; **bold** = the CI excludes 0."
        )
        add("")
        pairs = list(dict.fromkeys((c["a"], c["b"]) for c in s["comparisons"]))
        short = {"full": "OneRanker", "cascade": "cascade", "hstu": "HSTU", "popularity": "popularity"}
        add("| metric | " + " | ".join(f"{short[a]} - {short[b]}" for a, b in pairs) + " |")
        add("|---" * (len(pairs) + 1) + "|")
        by = {(c["a"], c["b"], c["metric"]): c for c in s["comparisons"]}
        for m in dict.fromkeys(c["metric"] for c in s["comparisons"]):
            cells = []
            for a, b in pairs:
                c = by.get((a, b, m))
                if c is None:
                    cells.append("n/a")
                    continue
                d = f"{c['delta']:+.4f}"
                cells.append((f"**{d}**" if c["lo"] > 0 or c["hi"] < 0 else d) + f" [{c['lo']:+.4f}, {c['hi']:+.4f}]")
            add(f"| {m} | " + " | ".join(cells) + " |")
        add("")
        add("### Every row (95% CI)")
        add("")
        key_metrics = [m for m in ("HR@5", "NDCG@5", "vNDCG@5", "GAUC") if m in rows["full"]]
        add("| row | " + " | ".join(key_metrics) + " | paper HR@5 | paper NDCG@5 |")
        add("|---" * (len(key_metrics) + 3) + "|")
        for r in ROWS:
            p = PAPER.get(r.key, {})
            add(
                f"| {r.label} | "
                + " | ".join(_ci(rows[r.key][m]) for m in key_metrics)
                + f" | {_fmt(p.get('HR@5'))} | {_fmt(p.get('NDCG@5'))} |"
            )
        add("")
        add("All protocol metrics (mean over seeds; per-seed values in results.json):")
        add("")
        add("| row | " + " | ".join(proto) + " |")
        add("|---" * (len(proto) + 1) + "|")
        for r in ROWS:
            add(f"| {r.key} | " + " | ".join(_fmt(rows[r.key][m]["mean"]) for m in proto) + " |")
        add("")
        add("### Paper orderings (Tables 2 and 3): every pair the paper orders a > b")
        add("")
        ords = s["orderings"]
        counts = {}
        for o in ords:
            counts.setdefault(o["metric"], {}).setdefault(o["verdict"], 0)
            counts[o["metric"]][o["verdict"]] += 1
        for m, c in counts.items():
            add(f"* {m}: " + ", ".join(f"{v} {k}" for k, v in sorted(c.items())) + f" (of {sum(c.values())})")
        add("")
        add("| table | a > b (paper) | metric | paper a-b | ours a-b [95% CI] | sign | verdict |")
        add("|---|---|---|---|---|---|---|")
        for o in ords:
            pd = "n/a" if o["paper_delta"] is None else f"{o['paper_delta']:+.4f}"
            add(
                f"| {o['table']} | {ROW[o['a']].label} > {ROW[o['b']].label} | {o['metric']} | {pd} | "
                f"{o['delta']:+.4f} [{o['lo']:+.4f}, {o['hi']:+.4f}] | {_sign(o['delta'])} | {o['verdict']} |"
            )
        add("")
        add("(vNDCG@5 rows are compared with the paper's NDCG@5, which is probably value-graded, paper-notes §1.13.)")
        add("")
        add("### Full-catalogue generation and the final slate")
        add("")
        cat_metrics = [
            m
            for m in (
                "gen_R@10",
                "gen_R@50",
                "gen_NDCG@10",
                "gen_NDCG@50",
                "slate_HR@10",
                "slate_eCPM@10",
                "slate_eGMV@10",
                "slate_rGMV@10",
            )
            if m in rows["full"]
        ]
        add("| row | " + " | ".join(cat_metrics) + " |")
        add("|---" * (len(cat_metrics) + 1) + "|")
        for r in ROWS:
            if cat_metrics[0] not in rows[r.key]:
                add(f"| {r.label} | " + " | ".join("n/a" for _ in cat_metrics) + " |")
                continue
            add(f"| {r.label} | " + " | ".join(_ci(rows[r.key][m], 4) for m in cat_metrics) + " |")
        add("")
        add("(For the cascade the generation columns are its generator's, the slate is re-scored by its ranker.)")
        add("")
        if s["lifts"]:
            add("### Value: lift over the cascade (ratio of means - 1, paired bootstrap)")
            add("")
            lm = list(dict.fromkeys(l["metric"] for l in s["lifts"]))
            add("| row | " + " | ".join(lm) + " |")
            add("|---" * (len(lm) + 1) + "|")
            by = {(l["row"], l["metric"]): l for l in s["lifts"]}
            for r in ROWS:
                if r.key == "cascade":
                    continue
                cells = []
                for m in lm:
                    l = by.get((r.key, m))
                    cells.append(
                        "n/a" if l is None else f"{100 * l['lift']:+.2f}% [{100 * l['lo']:+.2f}, {100 * l['hi']:+.2f}]"
                    )
                add(f"| {r.label} | " + " | ".join(cells) + " |")
            add("")
            add(
                "Cascade absolute values: "
                + ", ".join(f"{m} = {_ci(rows['cascade'][m])}" for m in lm if m in rows["cascade"])
                + "."
            )
            add("")
        else:
            add("No value metric on this source (no prices and no ground truth).")
            add("")
        add("### Distribution consistency (paper Fig. 3): Step-2 vs Step-3 ranks of the 30 candidates")
        add("")
        dc = s["dc"]
        add("Ranks are integers 0-29, so the IQR moves in whole steps.")
        add("")
        add(
            "| model | IQR of abs rank diff | Q1 / median / Q3 | mean abs diff | IQR per seed | top-1 | top-5 | top-10 overlap |"  # noqa: E501
        )
        add("|---|---|---|---|---|---|---|---|")
        for k in ("full", "wo_dc"):
            if k not in dc:
                continue
            d = dc[k]
            add(
                f"| {ROW[k].label} | {d['iqr']:.2f} | {d['q1']:.1f} / {d['median']:.1f} / {d['q3']:.1f} | "
                f"{d['mean_abs_diff']:.2f} | {', '.join(f'{x:.1f}' for x in d['iqr_seeds'])} | "
                f"{d['overlap'][0]:.3f} | {d['overlap'][4]:.3f} | {d['overlap'][9]:.3f} |"
            )
        add("")
        if "full_minus_wo_dc" in dc:
            add(
                "Full - w/o L_DC (paired bootstrap; the paper expects higher overlap and a smaller rank difference "
                "with L_DC):"
            )
            add("")
            for name, d in dc["full_minus_wo_dc"].items():
                add(f"* {name}: {d['delta']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}] -> {d['verdict']}")
            add("")
        add("### Plots")
        add("")
        for title, fname in plots.get(s["source"], []):
            add(f"**{title}**")
            add("")
            add(f"![{title}]({fname})")
            add("")
        add("### Runtime")
        add("")
        ts = s["train_seconds"]
        add(
            "Training seconds summed over seeds: "
            + ", ".join(f"{k} {v:.0f}" for k, v in ts.items())
            + f"; evaluation {s['eval_seconds']:.0f} s."
        )
        add("")
    add("## Caveats")
    add("")
    add(
        "* The sizes here (preset above) are far below the paper's (d=128, 2048-token histories, industrial data); "
        "the paper's absolute numbers are not comparable, only the orderings are."
    )
    add(
        "* Candidates are sampled uniformly from the catalogue (paper-notes #21); popularity is a strong scorer "
        "under that protocol on long-tailed real catalogues."
    )
    add(
        "* MovieLens labels are proxies (rating >= 4 as a click); Ta-Feng has no impressions/clicks and no bids "
        "(bids simulated as 10% of the real price); only the synthetic marketplace has counterfactual values "
        "for every candidate."
    )
    add(
        "* The cascade's halves see the same data and steps as OneRanker; the industrial cascade's ranker is "
        "trained on logged impressions, here it is trained on the same target-vs-sampled-candidates BPR task."
    )
    add("")
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    return text


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
    summary = study_summary(summaries, _git_commit() or None, _machine(args), _command(args))
    (out / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2) + "\n")
    return out / "summary.json"


def _git_commit() -> str:
    """HEAD of the checkout (read-only), '+dirty' when study-relevant files differ; '' without git."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
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


def _command(args) -> str:
    return f"python -m oneranker.study {' '.join(args.argv)}"


def _machine(args) -> str:
    return f"{os.cpu_count()} CPU cores visible, torch threads {args.threads}"


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if np.isnan(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def run_study(args) -> dict:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run_study(args)
    finally:
        torch.set_num_threads(threads)


def _run_study(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Progress(args.quiet)
    started = time.time()
    log(f"preset={args.preset} seeds={args.seeds} sources={args.sources} steps={args.steps or 'preset'} out={out}")
    results, summaries, plots = [], [], {}
    for source in args.sources:
        res = run_source(source, args, log, out)
        summary = summarize(res, args.n_boot)
        results.append(res)
        summaries.append(summary)
        if not res.skipped:
            files = []
            name = f"ablation_{source}.png"
            plot_ablation(summary, out / name)
            files.append(("Metric per row (ablations and baselines)", name))
            name = f"gmv_lift_{source}.png"
            if plot_lift(summary, out / name):
                files.append(("Value lift over the cascade", name))
            name = f"training_curves_{source}.png"
            plot_curves(res, out / name)
            files.append(("Training curves", name))
            name = f"dc_{source}.png"
            plot_dc(res, summary, out / name)
            files.append(("Distribution consistency (Fig. 3)", name))
            plots[source] = files
            np.savez_compressed(
                out / f"per_user_{source}.npz",
                **{f"{row}/{m}": v for row, ms in res.per_user.items() for m, v in ms.items()},
            )
        log(f"{source}: summarized")
    runtime = time.time() - started
    write_report(summaries, results, args, out, runtime, plots)
    payload = {
        "preset": args.preset,
        "seeds": args.seeds,
        "steps": args.steps,
        "sources": args.sources,
        "n_boot": args.n_boot,
        "runtime_seconds": runtime,
        "summaries": summaries,
    }
    for s in payload["summaries"]:
        if "info" in s and "config" in s["info"]:
            s["info"] = dict(s["info"])
    (out / "results.json").write_text(json.dumps(_jsonable(payload), indent=1))
    write_summary(summaries, args, out)
    log(f"wrote {out / 'report.md'} ({runtime / 60:.1f} min)")
    return payload


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(
        prog="python -m oneranker.study",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default="tiny", choices=("tiny", "small", "paper"))
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (>= 3 for the report)")
    p.add_argument("--sources", default="synthetic,movielens100k,tafeng")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: the preset's)")
    p.add_argument("--out", default=None, help="output folder (default artifacts/study/<preset>)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument(
        "--max-users",
        type=int,
        default=None,
        help="real sources: keep this many users (default: tafeng 2000 at tiny, 5000 at small; others all)",
    )
    p.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap resamples (default 1000)")
    p.add_argument("--smoke", action="store_true", help="CI smoke test: tiny, seed 0, 30 steps, synthetic only")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.argv = argv
    if args.smoke:
        args.preset, args.seeds, args.sources = "tiny", "0", "synthetic"
        args.steps = args.steps or 30
    args.seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    args.sources = [s.strip() for s in str(args.sources).split(",") if s.strip()]
    known = ("synthetic", "movielens100k", "tafeng")
    bad = [s for s in args.sources if s not in known]
    if bad:
        p.error(f"unknown source(s) {bad}: choose from {known}")
    args.out = args.out or f"artifacts/study/{'smoke' if args.smoke else args.preset}"
    return args


def main(argv=None) -> int:
    run_study(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
