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
import csv
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["LevelResult", "machine_description", "parse_pa_csv", "run_level", "run_suite", "summary", "main"]

RESULT_FIELDS = [
    "mode",
    "level",
    "throughput_infer_s",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "avg_ms",
    "request_count",
    "errors",
    "status",
    "returncode",
    "seconds",
]


@dataclass
class LevelResult:
    mode: str  # "concurrency" or "request_rate"
    level: float
    throughput_infer_s: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    avg_ms: float | None = None
    request_count: int | None = None
    errors: int = 0
    status: str = "ok"
    returncode: int | None = None
    seconds: float = 0.0
    message: str = field(default="", repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.errors == 0

    def row(self) -> dict:
        d = asdict(self)
        d["level"] = f"{self.level:g}"
        return {k: ("" if d[k] is None else d[k]) for k in RESULT_FIELDS}


# ---------------------------------------------------------------------------------------------
# Machine description
# ---------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_description() -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    ram = _ram_gib()
    return {
        "host": platform.node(),
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "ram_gib": round(ram, 1) if ram else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------------------------------------
# perf_analyzer
# ---------------------------------------------------------------------------------------------
def _float(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def parse_pa_csv(path: str | Path) -> list[dict]:
    """Rows of a perf_analyzer ``-f`` CSV as dicts: level, throughput and latencies (ms).

    perf_analyzer reports latencies in microseconds; the first column is ``Concurrency`` or
    ``Request Rate``. Extra ``--verbose-csv``/metrics columns are ignored."""
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            raw = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            level = _float(raw.get("Concurrency", raw.get("Request Rate")))
            if level is None:
                continue
            us = {k: _float(raw.get(f"{k} latency")) for k in ("p50", "p90", "p95", "p99", "Avg")}
            rows.append(
                {
                    "level": level,
                    "throughput_infer_s": _float(raw.get("Inferences/Second")),
                    **{f"{k.lower()}_ms": (None if v is None else round(v / 1000.0, 4)) for k, v in us.items()},
                }
            )
    return rows


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


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------
def _fmt(v, nd=2) -> str:
    return "-" if v is None or v == "" else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def write_csv(results: Sequence[LevelResult], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
        w.writeheader()
        for r in results:
            w.writerow(r.row())


def parse_cpus(text: str | None) -> list[int] | None:
    """ "1" / "0,1" / "2-3" -> CPU ids (None: no pinning)."""
    if not text:
        return None
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        cpus += list(range(int(lo), int(hi or lo) + 1))
    return cpus


def pinning_note(client_cpus: str | None, server_cpus: str | None, nproc: int) -> str:
    if not client_cpus and not server_cpus:
        return (
            f"CPU pinning: none. Server and client share all {nproc} cores, so the client's own CPU time is "
            "taken from the server (the figure is a floor for the server)."
        )
    return (
        f"CPU pinning: server on core(s) {server_cpus or 'all'}, perf_analyzer on core(s) {client_cpus or 'all'}: "
        "the client no longer competes with the server, which in exchange has fewer cores."
    )


def machine_line(m: dict) -> str:
    """The report's machine line up to its first ";" (and summary.json's machine)."""
    return f"{m['nproc']} usable cores ({m['cpu_count']} online), {m['cpu_model']}, {_fmt(m['ram_gib'], 1)} GiB RAM"


def summary(results: Sequence[LevelResult], model: str, commit: str | None, machine: str, command: str) -> dict:
    """summary.json: commit, machine, command, the model, the load mode and, per level (a
    concurrency or a request rate), throughput (infer/s), p50/p99 ms, errors and status."""
    levels = {
        f"{r.level:g}": {
            "throughput_infer_s": r.throughput_infer_s,
            "p50_ms": r.p50_ms,
            "p99_ms": r.p99_ms,
            "errors": r.errors,
            "status": r.status,
        }
        for r in results
    }
    mode = results[0].mode if results else None
    return {"commit": commit, "machine": machine, "command": command, "model": model, "mode": mode, "levels": levels}


def write_markdown(
    results: Sequence[LevelResult], path: Path, args: argparse.Namespace, machine: dict, command: str
) -> None:
    head = "concurrency" if results and results[0].mode == "concurrency" else "request rate (req/s)"
    lines = [
        f"# perf_analyzer: `{args.model}` at {args.url}",
        "",
        f"Machine: {machine_line(machine)}; {machine['os']}; host `{machine['host']}`.",
        f"Measured {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; gRPC, batch 1, input data `{args.input_data}`, "
        f"measurement interval {args.measurement_interval} ms, stability {args.stability_percentage}%.",
        "Absolute numbers from a shared CPU machine are noisy: compare levels of one run.",
        pinning_note(args.client_cpus, args.server_cpus, machine["nproc"]),
        *[f"{note}" for note in (args.note or [])],
        "",
        f"| {head} | throughput (infer/s) | p50 (ms) | p90 (ms) | p95 (ms) | p99 (ms) | avg (ms) | errors | status |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.level:g} | {_fmt(r.throughput_infer_s, 1)} | {_fmt(r.p50_ms)} | {_fmt(r.p90_ms)} | "
            f"{_fmt(r.p95_ms)} | {_fmt(r.p99_ms)} | {_fmt(r.avg_ms)} | {r.errors} | {r.status} |"
        )
    failed = [r for r in results if not r.ok]
    if failed:
        lines += ["", "Failures:"] + [f"- {r.mode} {r.level:g}: {r.message}" for r in failed]
    lines += ["", "Command (per level):", "", "```", command, "```", ""]
    path.write_text("\n".join(lines))


def write_plot(results: Sequence[LevelResult], path: Path, title: str) -> bool:
    pts = [r for r in results if r.throughput_infer_s is not None]
    if not pts:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    x = [r.throughput_infer_s for r in pts]
    for key, style in (("p50_ms", "o-"), ("p90_ms", "s--"), ("p99_ms", "^:")):
        ys = [getattr(r, key) for r in pts]
        if any(y is not None for y in ys):
            ax.plot(x, ys, style, label=key.split("_")[0])
    label = "c" if pts[0].mode == "concurrency" else "rps "
    for r in pts:
        if r.p50_ms is not None:
            ax.annotate(
                f"{label}{r.level:g}",
                (r.throughput_infer_s, r.p50_ms),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=8,
            )
    ax.set_xlabel("throughput (inferences/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


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


def write_reports(results: Sequence[LevelResult], out: Path, args, machine: dict, command: str) -> None:
    """OUT/results.csv, results.md, results.png and summary.json."""
    from oneranker_perf.summary_file import git_commit, write_summary

    write_csv(results, out / "results.csv")
    write_markdown(results, out / "results.md", args, machine, command)
    write_summary(out, summary(results, args.model, git_commit(), machine_line(machine), command))
    mode = results[0].mode if results else ""
    plotted = write_plot(results, out / "results.png", f"{args.model} @ {args.url} ({mode})")
    print(
        f"wrote {out / 'results.csv'}, {out / 'results.md'}, {out / 'summary.json'}"
        + (f", {out / 'results.png'}" if plotted else ""),
        flush=True,
    )


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
