"""Running the study one unit at a time, resumable across sessions.

    run_unit(out, protocol, source, unit, seed) -> OUT/runs/<source>/<unit>-seed<N>.npz
    run_missing(out, max_minutes)               -> every planned unit without a run file, in plan
                                                   order, until the time budget would be exceeded
    missing(out, protocol)                      -> the planned units without a run file
    run_study(args)                             -> the one-shot form (`--smoke`, `--preset ...`):
                                                   protocol + every unit + report into one folder

The protocol file (`protocol.py`) says what the units are; a unit refuses to run when the file no
longer matches what the code resolves (a result must belong to a fixed protocol). Each unit holds
a lock while it runs and writes its file atomically (`runfiles`), so two `run --missing`
processes share the work and a killed unit leaves nothing behind.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from . import runfiles as rf
from .protocol import StudySpec, build_protocol, check_protocol, load_protocol, planned_units, protocol_hash
from .rows import UNITS


class Progress:
    def __init__(self, quiet: bool = False):
        self.t0 = time.time()
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[study {time.time() - self.t0:7.1f}s] {msg}", flush=True)


class ProtocolMismatch(RuntimeError):
    pass


def ensure_protocol(out: Path, allow_change: bool = False, log: Progress | None = None) -> dict:
    """The protocol of OUT, refusing when the code no longer resolves it (unless allow_change);
    an uncommitted protocol file is allowed (smoke and scratch folders) but said."""
    protocol = load_protocol(out)
    check = check_protocol(out)
    if check.commit is None and log is not None:
        log(f"note: {check.path} is not committed; the report will not call the protocol fixed")
    if check.differences and not allow_change:
        raise ProtocolMismatch(
            f"{check.path} no longer matches what the code resolves ({len(check.differences)} difference(s): "
            + "; ".join(check.differences[:5])
            + "). Rewrite it (protocol --write) before any run, or pass --allow-protocol-change."
        )
    return protocol


def missing(out: Path, protocol: dict) -> list[tuple[str, str, int | None]]:
    done = rf.existing_units(out)
    spec = StudySpec.from_dict(protocol["spec"])
    return [u for u in planned_units(spec) if u not in done]


class PrepCache:
    """Prepared data of the last (source, seed) (the units of one seed share data and semantic IDs)."""

    def __init__(self):
        self.key, self.prep = None, None

    def get(self, spec: StudySpec, source: str, seed: int):
        from ..pipeline import prepare

        if self.key != (source, seed):
            self.key, self.prep = None, None  # free the previous one first
            self.prep = prepare(spec.config(source, seed))
            self.key = (source, seed)
        return self.prep


def run_unit(
    out: Path,
    protocol: dict,
    source: str,
    unit: str,
    seed: int | None,
    log: Progress,
    cache: PrepCache | None = None,
    keep_dir: Path | None = None,
    force: bool = False,
) -> Path | None:
    """Train one unit and write its run file; None when another process holds it, has written
    it meanwhile (`force`: redo it), or the source's data cannot be obtained (it stays missing)."""
    from ..data.real import DatasetUnavailable
    from .units import train_unit

    spec = StudySpec.from_dict(protocol["spec"])
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}: choose from {sorted(UNITS)}")
    if (source, unit, seed) not in planned_units(spec):
        raise ValueError(f"({source}, {unit}, seed {seed}) is not in the protocol's plan")
    path = rf.unit_path(out, source, unit, seed)
    lock = rf.UnitLock(path)
    if not lock.acquire():
        log(f"{source}/{rf.unit_name(unit, seed)}: another process holds {lock.path.name}; skipped")
        return None
    try:
        # `run --missing` lists its units when it starts: another process may have finished this
        # one since (checked under the lock, so no two processes ever both train it)
        if path.exists() and not force:
            log(f"{source}/{rf.unit_name(unit, seed)}: written by another process meanwhile; skipped")
            return None
        cache = cache or PrepCache()
        t = time.time()
        prep_seed = seed if seed is not None else spec.seeds[0]
        try:
            prep = cache.get(spec, source, prep_seed)
        except DatasetUnavailable as err:
            log(f"{source}: data unavailable ({err}); {rf.unit_name(unit, seed)} stays missing")
            return None
        cfg = spec.config(source, prep_seed)
        log(f"{source}/{rf.unit_name(unit, seed)}: training (max {cfg.train.steps} steps per run)")
        meta, arrays = train_unit(cfg, prep, unit, keep_dir)
        meta.update(
            source=source,
            seed=seed,
            protocol_hash=protocol_hash(protocol),
            commit=_commit(),
            wall_seconds=time.time() - t,
        )
        rf.write_unit(path, meta, arrays)
        log(f"{source}/{rf.unit_name(unit, seed)}: done in {time.time() - t:.1f}s -> {path}")
        return path
    finally:
        lock.release()


def _commit() -> str:
    from .summary import git_commit

    return git_commit()


def estimate_minutes(protocol: dict, out: Path, source: str, unit: str) -> float | None:
    """A unit's expected minutes: the protocol's budget estimate, else the mean wall time of this
    unit's existing run files on the source, else None (unknown)."""
    budget = protocol.get("budget") or {}
    est = (budget.get("unit_minutes") or {}).get(source, {}).get(unit)
    if est is not None:
        return float(est)
    walls = [
        rf.read_unit(p)[0].get("wall_seconds")
        for (s, u, _), p in rf.existing_units(out).items()
        if s == source and u == unit
    ]
    walls = [w for w in walls if w]
    return sum(walls) / len(walls) / 60 if walls else None


def run_missing(
    out: Path, log: Progress, max_minutes: float | None = None, allow_change: bool = False, dry_run: bool = False
) -> list[Path]:
    """Run every planned unit that has no run file, in plan order (source, unit, seed). With
    `max_minutes`, a unit is started only if the time spent so far plus its estimate fits."""
    out = Path(out)
    protocol = ensure_protocol(out, allow_change, log)
    rf.clean_temporaries(out)
    todo = missing(out, protocol)
    log(f"{len(todo)} unit(s) missing")
    if dry_run:
        for source, unit, seed in todo:
            est = estimate_minutes(protocol, out, source, unit)
            log(f"  {source}/{rf.unit_name(unit, seed)}" + (f" (~{est:.2f} min)" if est is not None else ""))
        return []
    started, written = time.time(), []
    cache = PrepCache()
    for source, unit, seed in todo:
        if max_minutes is not None:
            est = estimate_minutes(protocol, out, source, unit) or 0.0
            spent = (time.time() - started) / 60
            if spent + est > max_minutes:
                log(
                    f"stopping: {spent:.1f} min spent + ~{est:.1f} min for {source}/{rf.unit_name(unit, seed)} "
                    f"> --max-minutes {max_minutes}"
                )
                break
        path = run_unit(out, protocol, source, unit, seed, log, cache)
        if path is not None:
            written.append(path)
    return written


def run_study(args) -> dict:
    """One-shot study into args.out: write the protocol of the flags, run every missing unit, build
    the report. The same flags resume the same folder; `--smoke` is this at tiny size (CI)."""
    import torch

    from .build import build_report

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        log = Progress(args.quiet)
        spec = StudySpec.from_args(args)
        protocol = build_protocol(spec)
        from .protocol import write_protocol

        held = rf.existing_units(out)
        if held and (
            not (out / "protocol.json").exists() or protocol_hash(load_protocol(out)) != protocol_hash(protocol)
        ):
            raise ProtocolMismatch(
                f"{out} holds {len(held)} run file(s) of another protocol: give a fresh --out (the one-shot form "
                "resumes a folder only under the same flags)"
            )
        write_protocol(out, protocol)
        started = time.time()
        log(f"preset={spec.preset} seeds={list(spec.seeds)} sources={list(spec.sources)} out={out}")
        run_missing(out, log)
        result = build_report(out, command=f"python -m oneranker.study {' '.join(args.argv)}", log=log)
        result["runtime_seconds"] = time.time() - started
        return result
    finally:
        torch.set_num_threads(threads)


def main_run(args) -> int:
    out = Path(args.out)
    log = Progress(args.quiet)
    if args.missing:
        run_missing(out, log, args.max_minutes, args.allow_protocol_change, args.dry_run)
        return 0
    if args.source is None or args.run is None:
        print("run: give --missing, or --source, --run and --seed", file=sys.stderr)
        return 2
    protocol = ensure_protocol(out, args.allow_protocol_change, log)
    seed = None if not UNITS[args.run].seeded else args.seed
    if seed is None and UNITS[args.run].seeded:
        print(f"run: unit {args.run} needs --seed", file=sys.stderr)
        return 2
    if rf.unit_path(out, args.source, args.run, seed).exists() and not args.force:
        log(f"{args.source}/{rf.unit_name(args.run, seed)} exists (--force to redo)")
        return 0
    path = run_unit(out, protocol, args.source, args.run, seed, log, force=args.force)
    return 0 if path is not None else 1
