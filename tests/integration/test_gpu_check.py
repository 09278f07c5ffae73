"""perf/gpu/gpu_check.py --dry-run end to end: the carry is packed from the installed wheel into a
temporary folder, the script unpacks it, builds an untrained tiny model, serves it from the
carried tritonserver (not the wheel's) on CPU, compares served answers with the same programs in
process and measures latency, as the GPU run would with the paper model on KIND_GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_tritonserver

from oneranker_perf import gpu_carry

pytestmark = pytest.mark.triton

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_packs_serves_compares_and_measures(tmp_path):
    require_tritonserver()
    # gz and no numpy wheel: this venv's numpy is < 2 (the real pack uses xz and carries numpy for 3.12)
    manifest = gpu_carry.pack(
        tmp_path / "carry", stubs=(gpu_carry.running_python(),), numpy_pythons=(), compression="gz"
    )
    assert any(name.startswith("libtritonserver") for name in manifest["libraries"])
    assert f"libpython{gpu_carry.running_python()}.so.1.0" in manifest["system_libraries"]
    assert manifest["total_bytes"] < gpu_carry.CARRY_LIMIT_BYTES

    out, work = tmp_path / "out", tmp_path / "work"
    cmd = [sys.executable, str(ROOT / "perf" / "gpu" / "gpu_check.py"), "--dry-run"]
    cmd += ["--carry", str(tmp_path / "carry"), "--out", str(out), "--work", str(work)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    # the server ran from the unpacked carry
    first_line = (out / "tritonserver.log").read_text().splitlines()[0]
    assert first_line.startswith(f"# {work / 'carry' / 'site' / 'pytriton' / 'tritonserver' / 'bin' / 'tritonserver'} ")

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok"
    cmp = summary["comparison"]
    assert cmp["items_identical"] == cmp["requests"] >= 7
    assert cmp["max_abs_score_diff"] <= 1e-4
    assert cmp["candidates_asked"] == 256 and 1 <= cmp["candidates_ranked"][0] <= cmp["candidates_ranked"][1] <= 256
    assert summary["histories"] == [64] and "at most 64 events" in summary["history_note"]
    assert summary["serving"]["instance_kind"] == "KIND_CPU"
    assert {(r["history"], r["batch"]) for r in summary["latency"]} == {(64, 1), (64, 8)}
    for row in summary["latency"]:
        assert row["candidates"] == 256
        for path in ("in_process", "served"):
            assert 0 < row[path]["p50_ms"] <= row[path]["p99_ms"] and row[path]["n"] >= 1
    report = (out / "report.md").read_text()
    assert "**Status: ok** (dry run on CPU" in report and "| 64 | 8 | 256 |" in report
    assert summary["total_s"] < summary["time_budget_s"]
