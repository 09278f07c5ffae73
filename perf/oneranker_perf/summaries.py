"""Rebuild summary.json of result folders from their committed files, with the summary function
each benchmark's writer uses. Nothing is measured; no report, plot or results file is rewritten.

    python -m oneranker_perf.summaries perf/results/scaling perf/results/locust ...

The kind of folder is read from its files: results.json (topology_bench, queue_delay_bench,
instance_layout_bench, backend_ipc_bench, scaling_bench, train_bench, the earlier one-process
oneranker.study), protocol.json + runs/ (oneranker.study from run files), results.csv
(perf_analyzer_suite) or locust_stats.csv (locust_run). What a results file does not record
(the machine, the command, the study's commit) is read from the Markdown report the same run
wrote. The commit is the one the run recorded; where it recorded none it is null, with
summary_file.BACKFILL_NOTE.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

from .summary_file import BACKFILL_NOTE, backfilled, report_facts, write_summary

REPORTS = ("results.md", "table.md", "report.md")


def _num(text: str, kind=float):
    return None if text == "" else kind(text)


def _perf_analyzer(folder: Path, markdown: str, facts: dict) -> dict:
    from .perf_analyzer_report import LevelResult, summary

    with open(folder / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    levels = [
        LevelResult(
            row["mode"],
            float(row["level"]),
            *(_num(row[k]) for k in ("throughput_infer_s", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "avg_ms")),
            request_count=_num(row["request_count"], int),
            errors=int(row["errors"]),
            status=row["status"],
            returncode=_num(row["returncode"], int),
            seconds=float(row["seconds"]),
        )
        for row in rows
    ]
    model = re.search(r"^# perf_analyzer: `([^`]+)`", markdown, re.MULTILINE).group(1)
    return summary(levels, model, None, facts["machine"], facts["command"])


def _locust(folder: Path, markdown: str, facts: dict) -> dict:
    from .locust_run import CSV_PREFIX, read_stats, summary_json

    users = int(re.search(r"^# locust: (\d+) ", markdown, re.MULTILINE).group(1))
    return summary_json(read_stats(folder / CSV_PREFIX), users, None, facts["machine"], facts["command"])


def _study_runs(folder: Path, facts: dict) -> dict:
    """A study folder of run files (protocol.json + runs/): the summary rebuilt from the run files."""
    from oneranker.study.build import summary_from_files

    return summary_from_files(folder, facts["command"])


def _study(results: dict, markdown: str, facts: dict) -> dict:
    """A study folder in the earlier one-process format (results.json "summaries", no run files)."""
    from oneranker.study import study_summary

    stated = re.search(r"^Code: commit `([^`]+)`", markdown, re.MULTILINE)
    machine = re.search(r"\((\d+ CPU cores visible, torch threads \d+)\)", markdown)
    summary = study_summary(
        results["summaries"], stated and stated.group(1), machine and machine.group(1), facts["command"]
    )
    if stated:  # results.json records no commit; the report of the same run states it
        summary["note"] = f"{BACKFILL_NOTE}; commit as its report.md states it"
    return summary


def summarize_folder(folder: Path) -> dict:
    """The summary of a result folder, computed from its committed files (see the module doc)."""
    folder = Path(folder)
    report = next((folder / name for name in REPORTS if (folder / name).exists()), None)
    markdown = report.read_text() if report else ""
    facts = report_facts(markdown)
    if (folder / "locust_stats.csv").exists():
        return backfilled(_locust(folder, markdown, facts))
    if (folder / "rss.csv").exists() and (folder / "locust_stats.json").exists():
        from .soak import rebuild_summary

        return backfilled(rebuild_summary(folder))
    if (folder / "results.csv").exists():
        return backfilled(_perf_analyzer(folder, markdown, facts))
    if (folder / "runs").is_dir() and any((folder / "runs").glob("*-factorized-seed*.json")):
        from .decoder_bench import build_summary

        return backfilled(build_summary(folder))
    if (folder / "protocol.json").exists() and (folder / "runs").is_dir():
        return backfilled(_study_runs(folder, facts))
    results = json.loads((folder / "results.json").read_text())
    if "summaries" in results:
        return backfilled(_study(results, markdown, facts))
    if "results" in results:
        from .train_bench import Result, summary

        runs = [Result(**r) for r in results["results"]]
        return backfilled(summary(runs, results["machine"], results["command"], results.get("commit")))
    results = {**results, "machine": results.get("machine") or facts["machine"]}
    results["command"] = results.get("command") or facts["command"]
    if "topologies" in results:
        from .topology_report import summary
    elif "calls" in results and "measured" in results:
        from .backend_ipc_bench import summary
    elif "call_by_call" in results:
        from .instance_layout_bench import summary
    elif "measured" in results:
        from .queue_delay_bench import summary
    elif "rows" in results:
        from .scaling_bench import summary
    else:
        raise ValueError(f"{folder}: no results this module knows")
    return backfilled(summary(results))


def rebuild(folder: Path, out: Path | None = None) -> dict:
    """Write summarize_folder(folder) to OUT/summary.json (default: into the folder itself)."""
    summary = summarize_folder(folder)
    write_summary(Path(out or folder), summary)
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oneranker_perf.summaries", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="result folders, e.g. perf/results/scaling")
    for folder in parser.parse_args(argv).folders:
        summary = rebuild(folder)
        print(f"{folder / 'summary.json'}: commit {summary['commit']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
