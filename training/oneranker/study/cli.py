"""Command line of the study: `python -m oneranker.study ...` -> parse_args -> run_study."""

from __future__ import annotations

import argparse
import sys

from .runs import run_study
from .stats import N_BOOT


def parse_args(argv=None):
    from .. import study as study_package  # the package docstring is the --help text

    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(
        prog="python -m oneranker.study",
        description=study_package.__doc__.split("\n\n")[0],
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
