"""Throughput vs latency of a served model with Triton's perf_analyzer, one level at a time.

    python -m oneranker_perf.perf_analyzer_suite --url 127.0.0.1:8001 --model oneranker \\
        --input-data artifacts/perf/perf_data.json --concurrency 1,2,4 --out artifacts/perf/pa \\
        [--measurement-interval 3000] [--stability-percentage 10] [--max-trials 10] \\
        [--request-rate-range 50:200:50]

For each load level (a concurrency, or a request rate with ``--request-rate-range``) it runs
perf_analyzer over gRPC (``-f level.csv``), keeps its raw output in ``OUT/raw/``, and collects
throughput and p50/p90/p95/p99/avg latency into

* ``OUT/results.csv``: one row per level (latencies in ms; ``errors`` and ``status`` per level);
* ``OUT/results.md``: the same as a Markdown table, under a description of the machine (cores,
  CPU model, RAM) and the command;
* ``OUT/results.png``: latency percentiles against throughput, each point labelled with its level;
* ``OUT/summary.json``: per level throughput, p50/p99, errors and status, with commit, machine and
  command (``summary``).

The server's model-config API is restricted (``oneranker_client.restricted_api``) and
perf_analyzer reads the model's config at start: the admin key held by ``$ONERANKER_ADMIN_KEY``
(``--admin-key-env``), when set, is sent with ``-H`` and shown as ``***`` in every recorded command.

Exit code 0 when every level measured without error, 1 otherwise (the files are written anyway),
2 for usage errors. perf_analyzer is found by ``oneranker_perf.perf_analyzer_bin.perf_analyzer_command``.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# The rows, the CSV parsing, the machine description and the report files: perf_analyzer_report.
from .perf_analyzer_report import (
    RESULT_FIELDS,
    LevelResult,
    _fmt,
    machine_description,
    machine_line,
    parse_pa_csv,
    pinning_note,
    summary,
    write_csv,
    write_markdown,
    write_plot,
    write_reports,
)

__all__ = [
    "RESULT_FIELDS",
    "LevelResult",
    "machine_description",
    "machine_line",
    "parse_pa_csv",
    "pinning_note",
    "summary",
    "write_csv",
    "write_markdown",
    "write_plot",
    "write_reports",
    "pa_args",
    "admin_key_args",
    "parse_cpus",
    "run_level",
    "run_suite",
    "build_parser",
    "main",
]


# ---------------------------------------------------------------------------------------------
# perf_analyzer
# ---------------------------------------------------------------------------------------------
_ERROR_RE = re.compile(r"(had error|^\s*error\b|Failed to maintain requested inference load)", re.IGNORECASE)
_UNSTABLE = "Failed to obtain stable measurement"


def _error_lines(text: str) -> list[str]:
    """Lines of perf_analyzer's output that report failed requests (not instability)."""
    return [ln.strip() for ln in text.splitlines() if _ERROR_RE.search(ln)]


def pa_args(
    args: argparse.Namespace, mode: str, level: float, csv_path: Path, stability: float | None = None
) -> list[str]:
    spec = f"{level:g}:{level:g}:1"
    cmd = [
        "-m",
        args.model,
        "-i",
        "grpc",
        "-u",
        args.url,
        "-b",
        "1",
        "--input-data",
        str(args.input_data),
        "--measurement-interval",
        str(args.measurement_interval),
        "--stability-percentage",
        f"{stability if stability is not None else args.stability_percentage:g}",
        "--max-trials",
        str(args.max_trials),
        "-f",
        str(csv_path),
        "--verbose-csv",
    ]
    cmd += ["--concurrency-range", spec] if mode == "concurrency" else ["--request-rate-range", spec]
    if args.percentile:
        cmd += ["--percentile", str(args.percentile)]
    if args.model_version:
        cmd += ["-x", str(args.model_version)]
    return cmd + list(args.pa_extra or [])


def admin_key_args(args: argparse.Namespace) -> tuple[list[str], str | None]:
    """(perf_analyzer's ``-H`` carrying the admin key, the key), ([], None) without a key."""
    from oneranker_client.restricted_api import ADMIN_KEY_ENV, admin_key_from_env, grpc_headers

    key = admin_key_from_env(getattr(args, "admin_key_env", None) or ADMIN_KEY_ENV)
    if key is None:
        return [], None
    ((name, value),) = grpc_headers(key).items()
    return ["-H", f"{name}:{value}"], key


def _run_once(args, mode, level, out, stability, attempt) -> tuple[LevelResult, str]:
    from oneranker_client.restricted_api import redact
    from oneranker_perf.perf_analyzer_bin import perf_analyzer_command

    argv, env = perf_analyzer_command()
    tag = f"{'c' if mode == 'concurrency' else 'rps'}{level:g}" + (f"-retry{attempt}" if attempt else "")
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    csv_path = raw / f"{tag}.csv"
    csv_path.unlink(missing_ok=True)
    key_args, key = admin_key_args(args)
    cmd = argv + pa_args(args, mode, level, csv_path, stability) + key_args
    res = LevelResult(mode, level)
    t0 = time.monotonic()
    timed_out = False
    try:
        cpus = parse_cpus(args.client_cpus)
        proc = subprocess.run(
            cmd,
            env=env,
            capture_output=True,
            text=True,
            timeout=args.level_timeout,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        text, res.returncode = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:

        def _s(b):
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")

        text, timed_out = _s(e.stdout) + _s(e.stderr), True
    res.seconds = round(time.monotonic() - t0, 2)
    text = redact(text, key)
    (raw / f"{tag}.log").write_text(redact(shlex.join(cmd), key) + "\n\n" + text)
    counts = re.findall(r"Request count:\s*(\d+)", text)
    res.request_count = int(counts[-1]) if counts else None
    errors = _error_lines(text)
    # one "Thread [i] had error" line per failing worker; other error lines are consequences
    res.errors = max(sum("had error" in ln for ln in errors), 1 if errors else 0)
    rows = parse_pa_csv(csv_path) if csv_path.exists() else []
    if rows:
        for k, v in rows[-1].items():
            if k != "level":
                setattr(res, k, v)
    if timed_out:
        res.status = "timeout"
    elif errors:
        res.status = "failed"
    elif _UNSTABLE in text:
        res.status = "unstable"
    elif res.returncode != 0 or not rows:
        res.status = "failed"
    if res.status != "ok":
        tail = errors[-3:] or [ln for ln in text.strip().splitlines() if ln.strip()][-2:]
        res.message = " | ".join(tail)[:500]
        if res.status in ("failed", "timeout"):
            res.errors = max(res.errors, 1)
    return res, text


def run_level(args: argparse.Namespace, mode: str, level: float, out: Path) -> LevelResult:
    """One perf_analyzer run at one level. A measurement that does not stabilize is retried
    ``--retry-unstable`` times with the stability percentage doubled each time."""
    stability = float(args.stability_percentage)
    total = 0.0
    for attempt in range(int(args.retry_unstable) + 1):
        res, _ = _run_once(args, mode, level, out, stability, attempt)
        total += res.seconds
        if res.status != "unstable":
            break
        stability *= 2
    res.seconds = round(total, 2)
    return res


def _levels(text: str, integer: bool) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals) or (integer and any(v != int(v) for v in vals)):
        raise argparse.ArgumentTypeError(f"levels must be positive{' integers' if integer else ''}: {text!r}")
    return vals


def _rate_range(text: str) -> list[float]:
    """ "start:end:step" -> the rates (end included)."""
    parts = text.split(":")
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected start:end:step, got {text!r}") from None
    if len(nums) == 1:
        nums = [nums[0], nums[0], 1.0]
    elif len(nums) == 2:
        nums.append(1.0)
    start, end, step = nums[:3]
    if len(nums) > 3 or start <= 0 or end < start or step <= 0:
        raise argparse.ArgumentTypeError(f"bad request rate range {text!r}")
    out, v = [], start
    while v <= end + 1e-9:
        out.append(round(v, 6))
        v += step
    return out


def parse_cpus(text: str | None) -> list[int] | None:
    """ "1" / "0,1" / "2-3" -> CPU ids (None: no pinning)."""
    if not text:
        return None
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        cpus += list(range(int(lo), int(hi or lo) + 1))
    return cpus


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------
def run_suite(args: argparse.Namespace) -> list[LevelResult]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.request_rate_range:
        mode, levels = "request_rate", args.request_rate_range
    else:
        mode, levels = "concurrency", args.concurrency
    machine = machine_description()
    print(
        f"perf_analyzer suite: {args.model} at {args.url}, {mode} {', '.join(f'{v:g}' for v in levels)}; "
        f"{machine['nproc']} cores, {machine['cpu_model']}",
        flush=True,
    )
    results = []
    for i, level in enumerate(levels, 1):
        print(f"[{i}/{len(levels)}] {mode} {level:g} ...", end=" ", flush=True)
        r = run_level(args, mode, level, out)
        results.append(r)
        if r.throughput_infer_s is not None:
            print(
                f"{r.throughput_infer_s:.1f} infer/s, p50 {_fmt(r.p50_ms)} ms, p90 {_fmt(r.p90_ms)} ms, "
                f"p99 {_fmt(r.p99_ms)} ms, errors {r.errors} ({r.seconds:.1f} s)",
                flush=True,
            )
        else:
            print(f"{r.status.upper()} ({r.seconds:.1f} s): {r.message}", flush=True)
        if not r.ok and args.stop_on_error:
            break
    from oneranker_client.restricted_api import redact
    from oneranker_perf.perf_analyzer_bin import perf_analyzer_command

    try:
        argv, _ = perf_analyzer_command()
        key_args, key = admin_key_args(args)
        command = redact(shlex.join(argv + pa_args(args, mode, levels[0], out / "raw" / "LEVEL.csv") + key_args), key)
    except RuntimeError:
        command = "(perf_analyzer not found)"
    write_reports(results, out, args, machine, command)
    return results


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m oneranker_perf.perf_analyzer_suite",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--url", default="127.0.0.1:8001", help="gRPC endpoint host:port")
    ap.add_argument("--model", default="oneranker")
    ap.add_argument("--model-version", help="model version (default: the server's choice)")
    ap.add_argument("--input-data", required=True, type=Path, help="perf_analyzer JSON (oneranker_perf.make_inputs)")
    load = ap.add_mutually_exclusive_group()
    load.add_argument(
        "--concurrency",
        type=lambda s: _levels(s, True),
        default=[1.0, 2.0, 4.0],
        help="comma-separated concurrency levels (default 1,2,4)",
    )
    load.add_argument(
        "--request-rate-range",
        type=_rate_range,
        metavar="START:END:STEP",
        help="request rates (req/s) instead of concurrency levels",
    )
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--measurement-interval", type=int, default=3000, help="ms per measurement window (default 3000)")
    ap.add_argument("--stability-percentage", type=float, default=10.0)
    ap.add_argument("--max-trials", type=int, default=10)
    ap.add_argument("--percentile", type=int, help="stabilize on this latency percentile instead of the mean")
    ap.add_argument(
        "--retry-unstable",
        type=int,
        default=1,
        help="re-measure a level that did not stabilize, doubling the stability percentage (default 1)",
    )
    ap.add_argument("--level-timeout", type=float, default=300.0, help="seconds before one level is abandoned")
    ap.add_argument("--stop-on-error", action="store_true", help="stop at the first failed level")
    ap.add_argument("--client-cpus", help="pin perf_analyzer to these CPUs, e.g. 1 or 2-3 (default: not pinned)")
    ap.add_argument("--server-cpus", help="the CPUs the server was pinned to (stated in the report)")
    ap.add_argument("--note", action="append", help="a line added to the report (e.g. the compute floor)")
    ap.add_argument(
        "--admin-key-env",
        metavar="NAME",
        help="environment variable holding the server's admin key (default ONERANKER_ADMIN_KEY; unset: no key sent)",
    )
    ap.add_argument("pa_extra", nargs="*", help="extra perf_analyzer arguments (after --)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not args.input_data.is_file():
        ap.error(f"--input-data {args.input_data} is not a file")
    if args.admin_key_env and not os.environ.get(args.admin_key_env, "").strip():
        ap.error(f"--admin-key-env {args.admin_key_env}: that environment variable holds no key")
    try:
        results = run_suite(args)
    except RuntimeError as e:  # perf_analyzer not installed
        print(f"error: {e}", file=sys.stderr)
        return 1
    bad = [r for r in results if not r.ok]
    if bad:
        print(
            f"error: {len(bad)} of {len(results)} levels failed: "
            + "; ".join(f"{r.mode} {r.level:g}: {r.message}" for r in bad),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
