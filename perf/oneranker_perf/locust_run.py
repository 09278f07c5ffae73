"""Headless locust run of ``perf/locustfile.py`` with reports and a pass/fail verdict.

    python -m oneranker_perf.locust_run --host 127.0.0.1:8001 --users 4 --spawn-rate 4 \\
        --run-time 10s --out artifacts/perf/locust [--requests artifacts/perf/requests.jsonl]

Runs ``timeout -k 5 <limit> python -m locust -f perf/locustfile.py --headless --csv OUT/locust
--html OUT/locust.html ...`` (the hard limit guards against locust hanging after shutdown, see
shared/docs/platform.md), keeps its output in ``OUT/locust.log``, then reads
``OUT/locust_stats.csv`` / ``OUT/locust_failures.csv`` and prints requests, failures, req/s and
p50/p90/p99 per request name, and writes ``OUT/results.md``, ``OUT/results.png`` and
``OUT/summary.json`` (``summary_json``).
Exit code: 0 when requests were made and none failed; 1 otherwise
(any failure, no request, locust error or no stats); 2 for usage errors.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LocustSummary", "parse_run_time", "read_stats", "run", "summary_json", "main"]

LOCUSTFILE = Path(__file__).resolve().parents[1] / "locustfile.py"
DEFAULT_REQUESTS = Path(__file__).resolve().parents[2] / "artifacts" / "perf" / "requests.jsonl"
CSV_PREFIX = "locust"


def parse_run_time(text: str) -> int:
    """locust's --run-time syntax ("10", "10s", "2m", "1h30m") -> seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+", text):
        return int(text)
    parts = re.findall(r"(\d+)\s*([hms])", text)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != text.replace(" ", ""):
        raise argparse.ArgumentTypeError(f"bad run time {text!r} (e.g. 10s, 2m, 1h30m)")
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


@dataclass
class LocustSummary:
    rows: list[dict] = field(default_factory=list)  # one per request name (Aggregated excluded)
    aggregated: dict | None = None
    failures: list[dict] = field(default_factory=list)  # locust_failures.csv rows

    @property
    def requests(self) -> int:
        return int(self.aggregated["requests"]) if self.aggregated else 0

    @property
    def failed(self) -> int:
        return int(self.aggregated["failures"]) if self.aggregated else 0


def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if f.is_integer() else f


def read_stats(prefix: Path) -> LocustSummary:
    """Parse ``<prefix>_stats.csv`` and ``<prefix>_failures.csv`` written by ``--csv``."""
    summary = LocustSummary()
    stats = Path(f"{prefix}_stats.csv")
    with open(stats, newline="") as f:
        for raw in csv.DictReader(f):
            row = {
                "type": raw.get("Type", ""),
                "name": raw.get("Name", ""),
                "requests": _num(raw.get("Request Count")) or 0,
                "failures": _num(raw.get("Failure Count")) or 0,
                "rps": _num(raw.get("Requests/s")),
                "avg_ms": _num(raw.get("Average Response Time")),
                "p50_ms": _num(raw.get("50%")),
                "p90_ms": _num(raw.get("90%")),
                "p95_ms": _num(raw.get("95%")),
                "p99_ms": _num(raw.get("99%")),
                "max_ms": _num(raw.get("Max Response Time")),
            }
            if row["name"] == "Aggregated":
                summary.aggregated = row
            else:
                summary.rows.append(row)
    failures = Path(f"{prefix}_failures.csv")
    if failures.exists():
        with open(failures, newline="") as f:
            for raw in csv.DictReader(f):
                summary.failures.append(
                    {
                        "name": raw.get("Name", ""),
                        "error": raw.get("Error", ""),
                        "occurrences": _num(raw.get("Occurrences")) or 0,
                    }
                )
    return summary


def build_command(args: argparse.Namespace, out: Path) -> list[str]:
    limit = parse_run_time(args.run_time) + int(args.users / max(args.spawn_rate, 1e-9)) + args.grace
    timeout = shutil.which("timeout")
    prefix = [timeout, "-k", "5", str(limit)] if timeout else []
    return (
        prefix
        + [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(args.locustfile),
            "--headless",
            "--host",
            args.host,
            "--users",
            str(args.users),
            "--spawn-rate",
            f"{args.spawn_rate:g}",
            "--run-time",
            args.run_time,
            "--stop-timeout",
            str(args.stop_timeout),
            "--csv",
            str(out / CSV_PREFIX),
            "--html",
            str(out / f"{CSV_PREFIX}.html"),
            "--only-summary",
        ]
        + list(args.locust_extra or [])
    )


def run(args: argparse.Namespace) -> tuple[int, LocustSummary | None, str]:
    """Run locust; -> (its return code, parsed stats or None, its output)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{CSV_PREFIX}_*.csv"):
        old.unlink()
    env = dict(os.environ)
    env["ONERANKER_REQUESTS"] = str(Path(args.requests).resolve())
    env["ONERANKER_RETRIES"] = str(args.retries)
    env["ONERANKER_TIMEOUT_S"] = str(args.timeout)
    if args.model:
        env["ONERANKER_MODEL"] = args.model
    # locust imports the locustfile's helpers: make the checkout's client importable
    client_dir = str(Path(__file__).resolve().parents[2] / "client")
    env["PYTHONPATH"] = client_dir + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = build_command(args, out)
    print(
        f"locust: {args.users} users (spawn {args.spawn_rate:g}/s) for {args.run_time} against {args.host}; "
        f"requests {args.requests}",
        flush=True,
    )
    proc = subprocess.run(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL
    )
    text = proc.stdout or ""
    (out / "locust.log").write_text(shlex.join(cmd) + "\n\n" + text)
    stats_path = Path(f"{out / CSV_PREFIX}_stats.csv")
    summary = read_stats(out / CSV_PREFIX) if stats_path.exists() else None
    if summary is not None and summary.aggregated is not None:
        write_report(summary, out, args, shlex.join(cmd))
    return proc.returncode, summary, text


def _ms(v) -> str:
    return "-" if v is None else f"{v:g} ms"


def read_history(prefix: Path) -> list[dict]:
    """``<prefix>_stats_history.csv`` (aggregated rows, one per second) -> [{t, users, rps, p50, p95}]."""
    path = Path(f"{prefix}_stats_history.csv")
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            if raw.get("Name") != "Aggregated":
                continue
            rows.append(
                {
                    "t": _num(raw.get("Timestamp")),
                    "users": _num(raw.get("User Count")),
                    "rps": _num(raw.get("Requests/s")),
                    "p50_ms": _num(raw.get("50%")),
                    "p95_ms": _num(raw.get("95%")),
                }
            )
    return rows


def summary_json(stats: LocustSummary, users: int, commit: str | None, machine: str, command: str) -> dict:
    """summary.json: commit, machine, command, the number of users and, from the aggregated row,
    requests, failures, req/s and avg / p50 / p95 / p99 / max ms."""
    agg = stats.aggregated or {}
    figures = {k: agg.get(k) for k in ("requests", "failures", "rps", "avg_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms")}
    return {"commit": commit, "machine": machine, "command": command, "users": users, **figures}


def write_report(summary: LocustSummary, out: Path, args: argparse.Namespace, command: str) -> None:
    """OUT/results.md (table per request name + aggregated), OUT/summary.json and OUT/results.png
    (req/s and p50/p95 over the run, from the per-second history)."""
    import platform

    from oneranker_perf.summary_file import git_commit, write_summary

    machine = f"{os.cpu_count()} cores, Python {platform.python_version()}"
    lines = [
        f"# locust: {args.users} gRPC users against {args.host}",
        "",
        f"Machine: {machine}; run time {args.run_time}, "
        f"spawn rate {args.spawn_rate:g}/s, requests from `{args.requests}`; retries {args.retries}. "
        "locust (gevent, one process) shares the machine with the server: absolute numbers are a floor.",
        *(args.note or []),
        "",
        "| request | requests | failures | req/s | avg ms | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in summary.rows + ([summary.aggregated] if summary.aggregated else []):
        cells = [row["requests"], row["failures"], f"{row['rps'] or 0:.1f}"] + [
            "-" if row[k] is None else f"{row[k]:.1f}" for k in ("avg_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")
        ]
        lines.append(f"| {row['type']} {row['name']} | " + " | ".join(str(c) for c in cells) + " |")
    lines += [
        "",
        f"Failures: {summary.failed} of {summary.requests} requests.",
        "",
        "Command:",
        "",
        "```",
        command,
        "```",
        "",
    ]
    (out / "results.md").write_text("\n".join(lines))
    write_summary(out, summary_json(summary, args.users, git_commit(), machine, command))

    history = [r for r in read_history(out / CSV_PREFIX) if r["t"] is not None]
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = history[0]["t"]
    t = [r["t"] - t0 for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(t, [r["rps"] or 0 for r in history], color="#76b900")
    axes[0].set_xlabel("seconds")
    axes[0].set_ylabel("requests / s")
    axes[0].set_title(f"throughput ({args.users} users)")
    for key, label in (("p50_ms", "p50"), ("p95_ms", "p95")):
        axes[1].plot(t, [r[key] if isinstance(r[key], (int, float)) else float("nan") for r in history], label=label)
    axes[1].set_xlabel("seconds")
    axes[1].set_ylabel("ms (cumulative percentiles)")
    axes[1].set_title("latency")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=120)
    plt.close(fig)


def report(rc: int, summary: LocustSummary | None, text: str, out: Path) -> int:
    if rc in (124, 137):
        print(f"warning: locust did not exit by itself and was killed by timeout (rc {rc})", file=sys.stderr)
    if summary is None or summary.aggregated is None:
        tail = "\n".join(text.strip().splitlines()[-15:])
        print(f"error: locust wrote no statistics (exit code {rc}); last output:\n{tail}", file=sys.stderr)
        return 1
    for row in summary.rows:
        print(
            f"  {row['type']} {row['name']}: {row['requests']} requests, {row['failures']} failures, "
            f"{row['rps'] or 0:.1f} req/s, p50 {_ms(row['p50_ms'])}, p90 {_ms(row['p90_ms'])}, "
            f"p99 {_ms(row['p99_ms'])}, max {_ms(row['max_ms'])}"
        )
    agg = summary.aggregated
    print(
        f"total: {agg['requests']} requests, {agg['failures']} failures, {agg['rps'] or 0:.1f} req/s; "
        f"reports in {out}/{CSV_PREFIX}_stats.csv and {out}/{CSV_PREFIX}.html",
        flush=True,
    )
    if summary.failed:
        for f in summary.failures[:10]:
            print(f"  failure x{f['occurrences']} {f['name']}: {f['error']}", file=sys.stderr)
        print(f"error: {summary.failed} of {summary.requests} requests failed", file=sys.stderr)
        return 1
    if summary.requests == 0:
        print("error: locust made no request", file=sys.stderr)
        return 1
    if rc not in (0, 124, 137):
        tail = "\n".join(text.strip().splitlines()[-10:])
        print(f"error: locust exited with code {rc}:\n{tail}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m oneranker_perf.locust_run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--host", default="127.0.0.1:8001", help="gRPC host:port of tritonserver")
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--spawn-rate", type=float, default=4.0)
    ap.add_argument("--run-time", default="10s", help="locust run time (10s, 2m, ...)")
    ap.add_argument("--out", type=Path, required=True, help="folder for locust_*.csv, locust.html, locust.log")
    ap.add_argument(
        "--requests",
        type=Path,
        default=Path(os.environ.get("ONERANKER_REQUESTS", DEFAULT_REQUESTS)),
        help="requests JSONL (default $ONERANKER_REQUESTS or artifacts/perf/requests.jsonl)",
    )
    ap.add_argument("--model", help="model name (default the contract's public model)")
    ap.add_argument("--retries", type=int, default=0, help="client retries on UNAVAILABLE (default 0)")
    ap.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    ap.add_argument("--stop-timeout", type=int, default=5, help="seconds users get to finish at the end")
    ap.add_argument("--grace", type=int, default=30, help="seconds beyond run time before locust is killed")
    ap.add_argument("--locustfile", type=Path, default=LOCUSTFILE)
    ap.add_argument("--note", action="append", help="a line added to results.md (e.g. the compute floor)")
    ap.add_argument("locust_extra", nargs="*", help="extra locust arguments (after --)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        parse_run_time(args.run_time)
    except argparse.ArgumentTypeError as e:
        ap.error(str(e))
    if args.users < 1 or args.spawn_rate <= 0:
        ap.error("--users must be >= 1 and --spawn-rate > 0")
    if not args.requests.is_file():
        ap.error(f"requests file {args.requests} does not exist (python -m oneranker_perf.make_inputs)")
    rc, summary, text = run(args)
    return report(rc, summary, text, Path(args.out))


if __name__ == "__main__":
    sys.exit(main())
