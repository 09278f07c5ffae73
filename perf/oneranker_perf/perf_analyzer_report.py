"""perf_analyzer's results: one row per load level, the machine they were measured on, the reports.

Data flow: perf_analyzer's ``-f`` CSV of one level -> :func:`parse_pa_csv` (throughput, latencies
in ms) -> a :class:`LevelResult` (with the errors and status the suite read from perf_analyzer's
output) -> :func:`write_reports`: ``OUT/results.csv`` (:data:`RESULT_FIELDS`), ``results.md``
(under :func:`machine_description` and the command), ``results.png`` (latency against
throughput, matplotlib imported only to draw it) and ``summary.json`` (:func:`summary`, also
rebuilt from results.csv by ``oneranker_perf.summaries``).

Standard library only, matplotlib aside: :mod:`oneranker_perf.perf_analyzer_suite` runs
perf_analyzer and hands its results here.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

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
]

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
# perf_analyzer's CSV
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
