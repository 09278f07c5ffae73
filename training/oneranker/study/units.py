"""One unit of work: train what a (source, unit, seed) trains, score its rows on the test split,
and return the run file's content (`runfiles`): meta + per-row per-user codes + loss histories.

    prepare(source_config) -> Prepared (shared by the units of one (source, seed) in a process)
    unit kind "oneranker":  train(variant_config)       -> score_split (30 candidates) + full_catalogue
              "cascade":    train_cascade (s2, s3_only) -> rows s2, s3_only, cascade
              "hstu":       baselines.hstu_study.fit    -> next-item logits of the candidates / catalogue
              "popularity": popularity counts           -> the floor (no training, no seed)
Checkpoints go to a temporary folder and are discarded (`keep_dir` keeps them).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from . import runfiles as rf
from .catalogue import GEN_KS, SLATE_K, full_catalogue, popularity_catalogue
from .rows import DC_ROWS, ROW, RUNS, UNITS, variant_config
from .stats import pooled_auc


def test_key(prep) -> str:
    """Hash of the test users and candidates: every run file of a source must carry the same."""
    test = prep.splits["test"]
    h = hashlib.sha256(test.user.astype(np.int64).tobytes())
    h.update(test.candidates.astype(np.int64).tobytes())
    return h.hexdigest()[:16]


def label_notes(source: str) -> dict:
    if source == "synthetic":
        return {
            "click": "simulated: drawn from the known pCTR of the synthetic marketplace",
            "conversion": "simulated: drawn from the known pCVR",
            "bid": "simulated",
            "price": "simulated",
            "eCPM / GMV values": "ground truth of the simulator: bid x pCTR x pCVR, price x pCTR x pCVR",
        }
    from ..data.real import LABEL_NOTES

    return dict(LABEL_NOTES.get(source, {}))


def dataset_info(prep) -> dict:
    ds, test = prep.dataset, prep.splits["test"]
    return {
        "dataset": ds.name,
        "label_sources": dict(ds.label_sources),
        "label_notes": label_notes(prep.cfg.data.source),
        "num_users": int(ds.log.num_users),
        "num_ads": int(ds.catalog.num_ads),
        "num_contents": int(ds.catalog.num_contents),
        "num_events": int(ds.log.user.shape[0]),
        "samples": {k: len(v) for k, v in prep.splits.items()},
        "num_candidates": int(test.candidates.shape[1]),
        "has_ground_truth": ds.ground_truth is not None,
        "real_price": ds.label_sources.get("price") == "real",
    }


def headroom_pct(prep) -> float | None:
    """Model-free headroom of the synthetic world (`oneranker.data.headroom`): % of the oracle
    top-10 expected GMV lost by keeping only the `serve.num_candidates` most clickable ads, over
    the test users at their test request's context. None without ground truth."""
    from ..data.headroom import headroom_pct as world_headroom

    if prep.dataset.ground_truth is None:
        return None
    test = prep.splits["test"]
    return world_headroom(prep.dataset, test.user, prep.cfg.serve.num_candidates, 10, test.context)


class _RowScores:
    """Collects the codes of the rows of one unit."""

    def __init__(self, prep):
        self.prep = prep
        self.test = prep.splits["test"]
        self.has_gt = prep.dataset.ground_truth is not None
        self.arrays: dict[str, np.ndarray] = {}
        self.pooled: dict[str, float] = {}

    def protocol(self, row: str, scores: np.ndarray) -> None:
        for k, v in rf.protocol_codes(scores, self.test, self.has_gt).items():
            self.arrays[f"{row}/{k}"] = v
        self.pooled[row] = pooled_auc(scores)

    def catalogue(self, row: str, result: dict) -> None:
        for k, v in rf.catalogue_codes(result, self.prep).items():
            self.arrays[f"{row}/{k}"] = v

    def dc(self, row: str, scored: dict) -> None:
        for k, v in rf.dc_codes(scored["generation"], scored["ranking"]).items():
            self.arrays[f"{row}/{k}"] = v


def _history(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "train_history.json"
    return json.loads(path.read_text()) if path.exists() else []


def _record(summary: dict) -> dict:
    return {"train_seconds": summary["train_seconds"], "stopping": summary["stopping"]}


def train_unit(cfg, prep, unit_key: str, keep_dir: Path | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Train and score one unit on `prep` (built from `cfg`) -> (meta, arrays) without the
    protocol fields (`runs.run_unit` adds them)."""
    from ..evaluate import score_split

    unit = UNITS[unit_key]
    out = _RowScores(prep)
    trained: dict[str, dict] = {}
    histories: dict[str, list] = {}
    with tempfile.TemporaryDirectory(prefix=f"study-{unit_key}-") as tmp:
        work = Path(keep_dir) if keep_dir else Path(tmp)
        t0 = time.time()
        models = {}
        if unit.kind == "oneranker":
            from ..train import train

            (run,) = unit.trains
            result = train(variant_config(cfg, RUNS[run]), work / run, prep=prep, progress=False)
            models[run] = result["model"]
            trained[run] = _record(result["summary"])
            histories[run] = _history(work / run)
        elif unit.kind == "cascade":
            from ..cascade import GENERATOR, RANKER, train_cascade

            casc = train_cascade(cfg, work / "cascade", prep=prep, progress=False)
            for run, half, result in (("s2", GENERATOR, casc.generator), ("s3_only", RANKER, casc.ranker)):
                models[run] = result["model"]
                trained[run] = _record(result["summary"])
                histories[run] = _history(work / "cascade" / half)
        elif unit.kind == "hstu":
            from ..baselines import hstu_study

            result = hstu_study.fit(prep, cfg)
            models["hstu"] = result["model"]
            trained["hstu"] = {"train_seconds": result["train_seconds"], "stopping": result["stopping"]}
            histories["hstu"] = result["history"]
        train_seconds = time.time() - t0

        t1 = time.time()
        scored = {run: score_split(m, prep, "test") for run, m in models.items() if run != "hstu"}
        num_candidates = max(cfg.serve.num_candidates, max(GEN_KS))
        for row_key in unit.rows:
            row = ROW[row_key]
            if row.scorer == "popularity":
                out.protocol(row_key, prep.popularity[out.test.candidates].astype(np.float64))
                out.catalogue(row_key, popularity_catalogue(prep))
            elif row.scorer == "next_item":
                from ..baselines.hstu_study import study_inputs

                inputs = study_inputs(prep, "test", models["hstu"].model.cfg.max_len)
                out.protocol(row_key, models["hstu"].candidate_scores(inputs))
                out.catalogue(row_key, models["hstu"].catalogue(inputs, num_candidates, SLATE_K))
            else:
                out.protocol(row_key, scored[row.run][row.scorer])
                if row.gen_run is not None:
                    rank_model = models[row.rank_run] if row.rank_run else None
                    out.catalogue(row_key, full_catalogue(models[row.gen_run], rank_model, prep))
            if row_key in DC_ROWS:
                out.dc(row_key, scored[row.run])
        eval_seconds = time.time() - t1

    arrays = dict(out.arrays)
    terms = {}
    for run, history in histories.items():
        names, values = rf.history_array(history)
        terms[run] = names
        arrays[f"history/{run}"] = values
    if prep.dataset.label_sources.get("price") == "real":
        arrays["target_price"] = prep.dataset.catalog.ad_price[out.test.target].astype(np.float32)
    meta = {
        "format": rf.FORMAT,
        "unit": unit_key,
        "rows": list(unit.rows),
        "test_key": test_key(prep),
        "test_users": len(out.test),
        "info": dataset_info(prep),
        "pooled_auc": out.pooled,
        "trained": trained,
        "history_terms": terms,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "machine": f"{os.cpu_count()} CPU cores visible, torch threads {cfg.train.num_threads}",
    }
    if unit.kind == "popularity" and prep.dataset.ground_truth is not None:
        meta["headroom_pct"] = headroom_pct(prep)
    return meta, arrays
