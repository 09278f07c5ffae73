"""The resumable study end to end at smoke size (CI): the one-shot `--smoke` path (protocol, every
unit, report), the report rebuilt from the run files, resumability, a killed unit, the run-file
codec against the metric functions, and the budget measured on tiny."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from oneranker import study
from oneranker.study import ROWS
from oneranker.study import runfiles as rf

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "smoke"
    args = study.parse_args(["--smoke", "--out", str(out), "--quiet"])
    payload = study.run_study(args)
    return out, args, payload


def test_smoke_study_writes_report_plots_and_every_row(smoke):
    out, _, payload = smoke
    report = (out / "report.md").read_text()
    for row in ROWS:
        assert row.label in report, row.label
    for png in (
        "ablation_synthetic.png",
        "gmv_lift_synthetic.png",
        "training_curves_synthetic.png",
        "dc_synthetic.png",
    ):
        assert (out / png).stat().st_size > 10_000, png
        assert f"]({png})" in report
    for heading in ("Where every label comes from", "Paper orderings", "Full-catalogue generation", "Answers"):
        assert heading in report, heading
    assert "lift over the cascade" in report and "Distribution consistency" in report and "**Power**" in report
    assert "simulated" in report and "unchanged since" not in report  # a temporary folder: not committed
    results = json.loads((out / "results.json").read_text())
    rows = results["summaries"][0]["rows"]
    assert set(rows) == {r.key for r in ROWS}
    for key in rows:
        cell = rows[key]["HR@5"]
        assert cell["lo"] <= cell["mean"] <= cell["hi"], key
    assert len(results["summaries"][0]["orderings"]) == 24 * 3  # HR@5, NDCG@5, vNDCG@5
    assert payload["runs_missing"] == [] and len(payload["runs_done"]) == 10
    assert payload["runtime_seconds"] < 120


def test_report_rebuilt_from_the_files_equals_the_one_after_the_runs(smoke):
    out, args, _ = smoke
    report, summary = (out / "report.md").read_text(), (out / "summary.json").read_text()
    command = f"python -m oneranker.study {' '.join(args.argv)}"
    study.build_report(out, command=command)
    assert (out / "report.md").read_text() == report
    assert (out / "summary.json").read_text() == summary


def test_deleting_a_run_file_lists_exactly_that_unit_and_rerunning_restores_it(smoke, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(smoke[0], out)
    (out / "runs" / "synthetic" / "wo_h2kv-seed0.npz").unlink()
    payload = study.build_report(out)
    assert payload["runs_missing"] == ["synthetic/wo_h2kv-seed0"]
    assert "wo_h2kv" not in payload["summaries"][0]["rows"]
    assert "`synthetic/wo_h2kv-seed0`" in (out / "report.md").read_text()
    written = study.run_missing(out, study.Progress(quiet=True))
    assert [p.name for p in written] == ["wo_h2kv-seed0.npz"]
    assert study.build_report(out)["runs_missing"] == []


def test_a_unit_written_by_another_process_since_the_list_was_made_is_not_retrained(smoke, tmp_path):
    """`run --missing` lists its units when it starts; a unit another process finished since
    then is skipped under its lock, not trained again (and its file is left as it was)."""
    from oneranker.study.protocol import load_protocol
    from oneranker.study.runs import run_unit

    out = tmp_path / "copy"
    shutil.copytree(smoke[0], out)
    path = out / "runs" / "synthetic" / "wo_dc-seed0.npz"
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    lines: list[str] = []
    got = run_unit(out, load_protocol(out), "synthetic", "wo_dc", 0, lines.append)
    assert got is None and (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert "written by another process meanwhile" in lines[-1]
    assert not path.with_name(path.name + ".lock").exists()


def test_run_file_size_and_codec_match_the_metric_functions(smoke, tiny_prep):
    out = smoke[0]
    files = sorted((out / "runs" / "synthetic").glob("*.npz"))
    assert len(files) == 10 and sum(p.stat().st_size for p in files) < 400_000  # 300 test users
    from oneranker.study.catalogue import catalogue_metrics, popularity_catalogue
    from oneranker.study.stats import protocol_metrics

    test = tiny_prep.splits["test"]
    scores = np.random.default_rng(0).normal(size=test.candidates.shape)
    scores[:7, 3] = scores[:7, 0]  # ties count against the target
    cat = popularity_catalogue(tiny_prep)
    codes = {**rf.protocol_codes(scores, test, True), **rf.catalogue_codes(cat, tiny_prep)}
    price = tiny_prep.dataset.catalog.ad_price.astype(np.float64)  # [A], as for a real-price source
    decoded = rf.decode_row(codes, test.candidates.shape[1], price[test.target].astype(np.float32))
    expected = {**protocol_metrics(scores, test, price), **catalogue_metrics(cat, tiny_prep, "test", price)}
    assert set(decoded) == set(expected)
    for name, values in expected.items():
        tol = 2.5e-4 if name.startswith("vNDCG") else 1e-6
        np.testing.assert_allclose(decoded[name], values, rtol=tol, atol=tol, err_msg=name)
    # Fig. 3: one permutation per user holds both rankings
    from oneranker.study.stats import rank_agreement

    generation = np.random.default_rng(1).normal(size=scores.shape)
    generation[:4, :3] = 0.5  # ties broken by column, as candidate_ranks does
    dc = rf.decode_dc(rf.dc_codes(generation, scores))
    ref = rank_agreement(generation, scores)
    np.testing.assert_array_equal(np.sort(dc["abs_diff"], 1), np.sort(ref["abs_diff"], 1))
    np.testing.assert_allclose(dc["overlap"], ref["overlap"])


def test_a_killed_unit_leaves_no_run_file(tmp_path):
    from oneranker.study.protocol import StudySpec, build_protocol, write_protocol

    out = tmp_path / "study"
    write_protocol(out, build_protocol(StudySpec(preset="tiny", seeds=(0,), sources=("synthetic",), steps=100_000)))
    paths = [str(ROOT / p) for p in ("training", "build", "client", "perf", "serving")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "oneranker.study", "run", "--source", "synthetic", "--run", "full", "--seed", "0"]
    proc = subprocess.Popen([*cmd, "--out", str(out), "--quiet"], env=env, cwd=ROOT)
    lock = rf.UnitLock(rf.unit_path(out, "synthetic", "full", 0)).path
    deadline = time.time() + 60
    while not lock.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert lock.exists(), "the unit never started"
    time.sleep(1.0)  # inside training (100,000 steps: far from done)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert rf.existing_units(out) == {}
    assert not list((out / "runs" / "synthetic").glob("*.npz"))
    assert rf.UnitLock(rf.unit_path(out, "synthetic", "full", 0)).acquire()  # its stale lock is taken over


def test_budget_measures_tiny_and_writes_the_plan(tmp_path):
    from oneranker.study.budget import main_budget
    from oneranker.study.protocol import StudySpec, build_protocol, check_protocol, load_protocol, write_protocol

    out = tmp_path / "study"
    write_protocol(out, build_protocol(StudySpec(preset="tiny", seeds=(0, 1), sources=("synthetic",), steps=40)))
    assert main_budget(out, steps=2, write=True, quiet=True) == 0
    budget = load_protocol(out)["budget"]
    minutes = budget["unit_minutes"]["synthetic"]
    assert set(minutes) == set(study.UNITS)
    assert all(0 < m < 5 for m in minutes.values()), minutes
    assert minutes["cascade"] > minutes["full"] > minutes["popularity"]  # two trainings > one > none
    assert budget["fits"] and budget["cut_level"] == 0
    total = sum(minutes[u] * (1 if u == "popularity" else 2) for u in minutes)
    assert budget["total_minutes_by_cut"]["none"] == pytest.approx(total)
    assert check_protocol(out).differences == []  # the budget is hashed, not re-resolved
