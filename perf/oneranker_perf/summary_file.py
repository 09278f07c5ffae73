"""summary.json, the file every benchmark writes beside its Markdown report and PNG: the headline
figures of the report (numbers, not raw samples) with "commit", "machine" and "command".

Standard library only: the perf image imports it through perf_analyzer_suite and locust_run.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

SUMMARY = "summary.json"
BACKFILL_NOTE = "backfilled from committed results of an earlier run"


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_summary(out: Path, summary: dict) -> Path:
    """OUT/summary.json (indented, one trailing newline)."""
    path = Path(out) / SUMMARY
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def backfilled(summary: dict) -> dict:
    """A summary rebuilt from the committed results of an earlier run: the commit is the one those
    results record, else None with BACKFILL_NOTE."""
    if summary.get("commit") in (None, "", "unknown"):
        summary["commit"] = None
        summary["note"] = BACKFILL_NOTE
    return summary


def report_facts(markdown: str) -> dict:
    """The machine and the command a Markdown report states, for results files that do not record
    them: the "Machine: " line up to its first ";" or sentence end, and the command of
    "Reproduce: `...`", "Command: `...`" or the first fenced block. None where absent."""
    machine = re.search(r"^Machine: (.*?)\.?(?:;|\. |$)", markdown, re.MULTILINE)
    command = re.search(r"^(?:Reproduce|Command): `([^`]+)`", markdown, re.MULTILINE) or re.search(
        r"^```\n(.+?)\n```", markdown, re.MULTILINE | re.DOTALL
    )
    return {"machine": machine and machine.group(1).strip(), "command": command and command.group(1).strip()}
