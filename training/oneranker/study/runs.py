"""Running the study: train every run of a source for every seed, score every row, collect the
per-user metrics (`run_source` -> SourceResult); `run_study` does that for every source and writes
the outputs (plots, report.md, results.json, summary.json, per_user_<source>.npz)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .aggregate import summarize
from .catalogue import catalogue_metrics, full_catalogue, popularity_catalogue
from .plots import plot_ablation, plot_curves, plot_dc, plot_lift
from .report import write_report
from .rows import ROWS, RUNS, source_config, variant_config
from .stats import pooled_auc, protocol_metrics, rank_agreement
from .summary import jsonable, write_summary


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
    from ..cascade import CascadeRun, train_cascade
    from ..evaluate import score_split
    from ..pipeline import prepare
    from ..train import train

    res = SourceResult(source)
    test_key = None
    for seed in args.seeds:
        cfg = source_config(args.preset, source, seed, args.steps, args.threads, args.max_users)
        t = time.time()
        try:
            prep = prepare(cfg)
        except Exception as err:  # noqa: BLE001 - only a missing dataset is skipped, see below
            from ..data.real import DatasetUnavailable

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
        from ..data.real import LABEL_NOTES

        return dict(LABEL_NOTES.get(source, {}))
    except Exception:  # noqa: BLE001
        return {}


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
    (out / "results.json").write_text(json.dumps(jsonable(payload), indent=1))
    write_summary(summaries, args, out)
    log(f"wrote {out / 'report.md'} ({runtime / 60:.1f} min)")
    return payload
