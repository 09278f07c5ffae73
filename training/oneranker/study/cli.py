"""Command line of the study: `python -m oneranker.study <command> ...`.

    protocol [--write] [spec flags]   resolve the protocol (print the check against OUT/protocol.json);
                                      --write: write it (before any run)
    budget [--measure-steps N] [--write]
                                      measure step times per (source, run kind), estimate every
                                      unit's minutes, choose the declared cut; --write: into the protocol
    run --source S --run UNIT --seed N | run --missing [--max-minutes M] [--dry-run]
                                      train units into OUT/runs/<source>/<unit>-seed<N>.npz
    report                            rebuild report.md, plots, results.json, summary.json from the run files
    --smoke | --preset P --seeds ...  one shot (protocol + every unit + report) into one folder; --smoke
                                      = tiny, seed 0, 30 steps, synthetic, into a temporary folder (CI)

OUT (--out) defaults to perf/results/study of this checkout for the commands, and to
artifacts/study/<preset> (a temporary folder for --smoke) for the one-shot form.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .protocol import SOURCES, StudySpec
from .rows import UNITS
from .stats import N_BOOT

COMMANDS = ("protocol", "budget", "run", "report")
DEFAULT_OUT = Path(__file__).resolve().parents[3] / "perf" / "results" / "study"


def _ints(text: str) -> tuple:
    return tuple(int(s) for s in str(text).split(",") if s.strip())


def _names(text: str) -> tuple:
    names = tuple(s.strip() for s in str(text).split(",") if s.strip())
    bad = [s for s in names if s not in SOURCES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown source(s) {bad}: choose from {SOURCES}")
    return names


def _spec_flags(p: argparse.ArgumentParser, one_shot: bool = False) -> None:
    d = StudySpec()
    p.add_argument("--preset", default="tiny" if one_shot else d.preset, choices=("tiny", "small", "paper"))
    p.add_argument("--seeds", type=_ints, default="0,1,2" if one_shot else d.seeds, help="model seeds")
    p.add_argument("--sources", type=_names, default=",".join(SOURCES))
    p.add_argument("--steps", type=int, default=None, help="maximum steps per run (default: the preset's)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads per unit")
    p.add_argument("--max-users", type=int, default=None, help="real sources: keep this many users")
    p.add_argument("--n-boot", type=int, default=N_BOOT if one_shot else d.n_boot, help="user-bootstrap resamples")


def _one_shot_args(argv: list[str]):
    from .. import study as study_package  # the package docstring is the --help text

    p = argparse.ArgumentParser(
        prog="python -m oneranker.study",
        description=study_package.__doc__.split("\n\n")[0],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _spec_flags(p, one_shot=True)
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help="CI smoke test: tiny, seed 0, 30 steps, synthetic only")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.argv = argv
    if args.smoke:
        args.preset, args.seeds, args.sources = "tiny", (0,), ("synthetic",)
        args.steps = args.steps or 30
        args.out = args.out or tempfile.mkdtemp(prefix="oneranker-study-smoke-")
    args.seeds = tuple(args.seeds) if isinstance(args.seeds, tuple) else _ints(args.seeds)
    args.sources = tuple(args.sources) if isinstance(args.sources, tuple) else _names(args.sources)
    args.out = args.out or f"artifacts/study/{args.preset}"
    return args


def parse_args(argv=None):
    """The one-shot form's arguments (`run_study`); the commands parse in `main`."""
    return _one_shot_args(list(sys.argv[1:] if argv is None else argv))


def _command_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m oneranker.study", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    proto = sub.add_parser("protocol", help="resolve / write the protocol file")
    _spec_flags(proto)
    proto.add_argument("--write", action="store_true")
    budget = sub.add_parser("budget", help="measure step times, estimate every unit, write the plan")
    budget.add_argument("--measure-steps", type=int, default=4, help="timed steps per run kind")
    budget.add_argument("--write", action="store_true")
    run = sub.add_parser("run", help="train one unit or every missing unit")
    run.add_argument("--source", choices=SOURCES)
    run.add_argument("--run", choices=list(UNITS), help="the unit (rows.UNITS)")
    run.add_argument("--seed", type=int)
    run.add_argument("--missing", action="store_true", help="every planned unit without a run file")
    run.add_argument("--max-minutes", type=float, default=None, help="start no unit that would end past this")
    run.add_argument("--dry-run", action="store_true", help="with --missing: list, do not run")
    run.add_argument("--force", action="store_true", help="redo a unit whose file exists")
    run.add_argument("--allow-protocol-change", action="store_true", help="run although the protocol differs")
    sub.add_parser("report", help="rebuild the report from the run files")
    for q in sub.choices.values():
        q.add_argument("--out", default=str(DEFAULT_OUT), help=f"study folder (default {DEFAULT_OUT})")
        q.add_argument("--quiet", action="store_true")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        from .runs import run_study

        run_study(parse_args(argv))
        return 0
    args = _command_parser().parse_args(argv)
    args.argv = argv
    try:
        return _command(args, Path(args.out))
    except FileNotFoundError as err:  # no protocol file yet
        print(f"error: {err}", file=sys.stderr)
        return 1
    except RuntimeError as err:  # runs.ProtocolMismatch
        print(f"error: {err}", file=sys.stderr)
        return 1


def _command(args, out: Path) -> int:
    if args.command == "protocol":
        return _protocol(args, out)
    if args.command == "budget":
        from .budget import main_budget

        return main_budget(out, args.measure_steps, args.write, args.quiet)
    if args.command == "run":
        from .runs import main_run

        return main_run(args)
    from .build import build_report
    from .runs import Progress

    command = "python -m oneranker.study report" + ("" if out == DEFAULT_OUT else f" --out {args.out}")
    build_report(out, command=command, log=Progress(args.quiet))
    return 0


def _protocol(args, out: Path) -> int:
    import json

    from .protocol import build_protocol, check_protocol, protocol_hash, write_protocol

    spec = StudySpec.from_args(args)
    protocol = build_protocol(spec)
    if args.write:
        if (out / "runs").exists() and any((out / "runs").glob("*/*.npz")):
            print(f"{out}/runs holds run files: the protocol is fixed; not overwritten", file=sys.stderr)
            return 1
        path = write_protocol(out, protocol)
        print(f"wrote {path} sha256 {protocol_hash(json.loads(path.read_text()))}")
        return 0
    for source, units in protocol["resolved"]["sources"].items():
        runs = sum(len(seeds) for seeds in units["plan"].values())
        pending = ", ".join(f"{k}={v}" for k, v in units["pending"].items()) or "none"
        print(f"{source}: {runs} units, split: {units['split']}, pending fields: {pending}")
    print(f"resolved from the flags: sha256 {protocol_hash(json.loads(json.dumps(protocol)))} (not written)")
    print(check_protocol(out).sentence())
    return 0
