"""The run-time budget, declared before the runs: measured step times -> every unit's minutes ->
the plan (units x minutes) and the cut level that fits the declared working sessions.

    measure(spec, steps)  per source (seed spec.seeds[0]): data preparation seconds; per unit kind,
                          the median seconds of `steps` timed training steps of each run it trains
                          (after two warm-up steps), one validation pass, and its test evaluation
                          (30-candidate scores + full catalogue) -> {source: {unit: timings}}
    unit_minutes          = prep + sum over its runs of (max steps x step time + max steps /
                            eval_every x validation time) + test evaluation  (an upper bound:
                            early stopping usually ends sooner)
    plan_budget           total over the protocol's plan at each cut level (`protocol.CUTS`, the
                          issue's order: real-source ablation rows, then real-source seeds 5 -> 3;
                          never the synthetic headline seeds); the first level whose total fits
                          sessions x session_minutes x parallel processes is chosen
`budget --write` stores the measurements, the estimates and the chosen cut in the protocol file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from .protocol import CUTS, StudySpec, build_protocol, load_protocol, plan, protocol_hash, spec_with, write_protocol
from .rows import RUNS, UNITS, variant_config

WARMUP_STEPS = 2


def _timed_steps(cfg, prep, run: str, steps: int) -> float:
    """Median seconds of one training step of `run` (OneRanker config or "hstu")."""
    import copy

    stamps: list[float] = []
    c = copy.deepcopy(cfg)
    c.train.steps, c.train.eval_every, c.train.early_stopping = WARMUP_STEPS + steps, 0, False
    c.train.warmup_steps = 1
    if run == "hstu":
        from ..baselines import hstu_study

        hstu_study.fit(prep, c, after_step=lambda done: stamps.append(time.perf_counter()))
    else:
        from ..train import train

        with tempfile.TemporaryDirectory() as tmp:
            train(
                variant_config(c, RUNS[run]),
                Path(tmp),
                prep=prep,
                progress=False,
                after_step=lambda done, model: stamps.append(time.perf_counter()),
            )
    gaps = np.diff(stamps)[WARMUP_STEPS - 1 :]
    return float(np.median(gaps)) if gaps.size else float("nan")


def _eval_seconds(cfg, prep, run: str) -> tuple[float, float]:
    """(one validation pass, the test evaluation) of an untrained model of `run`."""
    from ..pipeline import build_model
    from .catalogue import GEN_KS, SLATE_K, full_catalogue, popularity_catalogue

    if run == "popularity":
        t = time.perf_counter()
        popularity_catalogue(prep)
        return 0.0, time.perf_counter() - t
    if run == "hstu":
        from ..baselines import hstu_study
        from ..baselines.hstu import HSTUBaseline

        cat = prep.dataset.catalog
        net = HSTUBaseline(hstu_study.hstu_config(cfg), cat.num_ads + cat.num_contents)
        model = hstu_study.StudyHSTU(net, cat.num_ads)
        t = time.perf_counter()
        model.candidate_scores(hstu_study.study_inputs(prep, "valid", net.cfg.max_len))
        valid = time.perf_counter() - t
        t = time.perf_counter()
        inputs = hstu_study.study_inputs(prep, "test", net.cfg.max_len)
        model.candidate_scores(inputs)
        model.catalogue(inputs, max(cfg.serve.num_candidates, max(GEN_KS)), SLATE_K)
        return valid, time.perf_counter() - t
    from ..evaluate import score_split

    c = variant_config(cfg, RUNS[run])
    cat = prep.dataset.catalog
    model = build_model(c, prep.sids, cat.num_advertisers, cat.num_categories).eval()
    t = time.perf_counter()
    score_split(model, prep, "valid")
    valid = time.perf_counter() - t
    t = time.perf_counter()
    score_split(model, prep, "test")
    if c.model.use_generation:
        full_catalogue(model, model if c.model.use_ranker else None, prep)
    return valid, time.perf_counter() - t


def measure(spec: StudySpec, steps: int, log=print) -> dict:
    """{source: {"prep_seconds", "runs": {run: {"step_seconds", "valid_seconds", "test_seconds"}}}}."""
    from ..pipeline import prepare

    out = {}
    for source in spec.sources:
        cfg = spec.config(source, spec.seeds[0])
        t = time.perf_counter()
        try:
            prep = prepare(cfg)
        except Exception as err:  # noqa: BLE001 - a source whose data is unavailable is reported, not fatal
            log(f"{source}: cannot measure ({type(err).__name__}: {err})")
            out[source] = {"error": f"{type(err).__name__}: {err}"}
            continue
        entry = {"prep_seconds": time.perf_counter() - t, "runs": {}}
        for run in [*RUNS, "hstu", "popularity"]:
            step = 0.0 if run == "popularity" else _timed_steps(cfg, prep, run, steps)
            valid, test = _eval_seconds(cfg, prep, run)
            entry["runs"][run] = {"step_seconds": step, "valid_seconds": valid, "test_seconds": test}
            log(f"{source} {run}: {1000 * step:.1f} ms/step, valid {valid:.2f} s, test {test:.2f} s")
        out[source] = entry
    return out


def unit_minutes(spec: StudySpec, measured: dict) -> dict[str, dict[str, float]]:
    """{source: {unit: estimated minutes of one (source, unit, seed)}} (module docstring)."""
    out: dict = {}
    for source, m in measured.items():
        if "runs" not in m:
            continue
        t = spec.config(source, spec.seeds[0]).train
        evals = t.steps // t.eval_every if t.eval_every else 0
        per = {}
        for unit in UNITS.values():
            runs = unit.trains or ("popularity",)
            secs = m["prep_seconds"]
            for run in runs:
                r = m["runs"][run]
                secs += 0 if run == "popularity" else t.steps * r["step_seconds"] + evals * r["valid_seconds"]
                secs += r["test_seconds"]
            per[unit.key] = secs / 60
        out[source] = per
    return out


def plan_budget(spec: StudySpec, minutes: dict) -> dict:
    """Totals of the plan at every cut level and the first level that fits (module docstring)."""
    capacity = spec.sessions * spec.session_minutes * spec.parallel
    totals = []
    for level in range(len(CUTS)):
        p = plan(spec_with(spec, cut=level))
        total = sum(
            minutes.get(s, {}).get(u, float("nan")) * len(seeds) for s, units in p.items() for u, seeds in units.items()
        )
        totals.append(total)
    fitting = [i for i, t in enumerate(totals) if not math.isnan(t) and t <= capacity]
    level = fitting[0] if fitting else len(CUTS) - 1
    p = plan(spec_with(spec, cut=level))
    return {
        "capacity_minutes": capacity,
        "capacity": f"{spec.sessions} sessions x {spec.session_minutes:g} min x {spec.parallel} processes "
        f"({spec.threads} torch thread(s) each)",
        "total_minutes_by_cut": {CUTS[i]: t for i, t in enumerate(totals)},
        "cut_level": level,
        "fits": bool(fitting),
        "plan": {
            s: {u: {"seeds": len(seeds), "minutes_each": minutes.get(s, {}).get(u)} for u, seeds in units.items()}
            for s, units in p.items()
        },
    }


def main_budget(out: Path, steps: int, write: bool, quiet: bool = False) -> int:
    from .summary import git_commit

    log = (lambda *a: None) if quiet else print
    protocol = load_protocol(out)
    spec = StudySpec.from_dict(protocol["spec"])
    measured = measure(spec, steps, log)
    minutes = unit_minutes(spec, measured)
    budget = plan_budget(spec, minutes)
    budget.update(
        measured=measured,
        unit_minutes=minutes,
        measure_steps=steps,
        commit=git_commit(),
        machine=f"{os.cpu_count()} CPU cores visible",
    )
    for name, total in budget["total_minutes_by_cut"].items():
        log(f"plan ({name}): {total:.1f} min of {budget['capacity_minutes']:.0f} ({budget['capacity']})")
    log(
        f"chosen cut: {CUTS[budget['cut_level']]}"
        + ("" if budget["fits"] else " (does NOT fit even after the declared cuts)")
    )
    if write:
        if (Path(out) / "runs").exists() and any((Path(out) / "runs").glob("*/*.npz")):
            log(f"{out}/runs holds run files: the protocol is fixed; the budget is not written")
            return 1
        new = build_protocol(spec_with(spec, cut=budget["cut_level"]), budget)
        path = write_protocol(out, new)
        log(f"wrote {path} sha256 {protocol_hash(json.loads(path.read_text()))}")
    return 0
