"""summary.json beside every benchmark report: each writer, fed a small results structure shaped like
its committed one, writes a summary.json whose figures are the input's, and
`oneranker_perf.summaries` rebuilds the same summary from the files the writer left; every committed
result folder with a Markdown report has a summary.json (no server, no training)."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import pytest

from oneranker_perf import summaries
from oneranker_perf.summary_file import BACKFILL_NOTE

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "perf" / "results"


def _load(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def _figures(summary: dict) -> dict:
    """A summary without what a rebuild cannot know (the writer's commit) or adds (the note)."""
    return {k: v for k, v in summary.items() if k not in ("commit", "note")}


def test_queue_delay_summary(tmp_path):
    from oneranker_perf import queue_delay_bench

    def target(p50, p99, rps, errors):
        return {"c1": {"p50_ms": p50, "p99_ms": p99, "n": 4}, "throughput_rps": rps, "errors": errors}

    measured = {
        "fused @ 0 us": target(3.1, 4.2, 600.5, 0),
        "fused @ 500 us": target(3.9, 5.3, 610.25, 1),
        "graphs @ 0 us": target(6.7, 8.8, 350.75, 2),
        "graphs @ 500 us": target(9.4, 11.6, 340.125, 0),
    }
    results = {
        "machine": "2 cores (test CPU), Python 3",
        "commit": "abc1234",
        "command": "python -m oneranker_perf.queue_delay_bench --delays 0,500",
        "preset": "tiny",
        "delays_us": [0, 500],
        "concurrency": 4,
        "paths": {"fused": "oneranker_fused", "graphs": "oneranker_graphs"},
        "measured": measured,
    }
    queue_delay_bench.write_report(results, tmp_path)
    s = _load(tmp_path)
    assert (s["commit"], s["machine"], s["command"]) == (results["commit"], results["machine"], results["command"])
    assert s["concurrency"] == 4 and set(s["targets"]) == set(measured)
    for label, t in measured.items():
        got = s["targets"][label]
        assert (got["c1_p50_ms"], got["c1_p99_ms"]) == (t["c1"]["p50_ms"], t["c1"]["p99_ms"]), label
        assert (got["saturated_rps"], got["errors"]) == (t["throughput_rps"], t["errors"]), label
    assert summaries.summarize_folder(tmp_path) == s


def test_instance_layout_summary(tmp_path):
    from oneranker_perf import instance_layout_bench

    def target(p50, p99, blocks, rps, errors):
        c1 = {"p50_ms": p50, "p99_ms": p99, "n": 4}
        return {"c1": c1, "c1_blocks": {**c1, "p50_ms": blocks, "block": 5}, "throughput_rps": rps, "errors": errors}

    def pair(served, local):
        return {"served": {"p50_ms": served, "n": 4}, "in_process": {"p50_ms": local, "n": 4}}

    results = {
        "machine": "2 cores (test CPU), Python 3",
        "commit": "abc1234",
        "command": "python -m oneranker_perf.instance_layout_bench --rounds 2",
        "model": "oneranker_fused",
        "requests": 4,
        "concurrency": 4,
        "scheduling_flags": {"plain": [], "preferred": ["--rate-limit=execution_count"]},
        "measured": {"plain": target(3.5, 5.0, 3.0, 600.0, 0), "preferred": target(2.75, 4.5, 2.5, 640.0, 1)},
        "call_by_call": {"plain": [pair(3.5, 1.5), pair(3.25, 1.5)], "preferred": [pair(2.5, 1.25), pair(2.75, 1.5)]},
        "moderate_load": {
            "fraction_of_saturation": 0.4,
            "target_rps": 240.0,
            "plain": {"p50_ms": 4.5, "p99_ms": 12.0, "n": 9, "rate_rps": 238.5, "errors": 0},
            "preferred": {"p50_ms": 4.0, "p99_ms": 9.0, "n": 9, "rate_rps": 239.5, "errors": 2},
        },
    }
    instance_layout_bench.write_report(results, tmp_path)
    s = _load(tmp_path)
    assert (s["commit"], s["machine"], s["command"]) == (results["commit"], results["machine"], results["command"])
    assert s["plain"] == {
        "c1_p50_ms": 3.5,
        "c1_p99_ms": 5.0,
        "c1_blocks_p50_ms": 3.0,
        "saturated_rps": 600.0,
        "errors": 0,
        "served_minus_in_process_p50_ms": [2.0, 1.75],
        "served_minus_in_process_p50_ms_mean": 1.875,
        "moderate_load_p50_ms": 4.5,
        "moderate_load_p99_ms": 12.0,
        "moderate_load_rate_rps": 238.5,
        "moderate_load_errors": 0,
    }
    assert s["preferred"]["served_minus_in_process_p50_ms"] == [1.25, 1.25]
    assert s["moderate_load_target_rps"] == 240.0
    assert [s["preferred"][f"moderate_load_{k}"] for k in ("p50_ms", "p99_ms", "rate_rps", "errors")] == [
        4.0,
        9.0,
        239.5,
        2,
    ]
    assert (s["preferred"]["c1_blocks_p50_ms"], s["preferred"]["errors"]) == (2.5, 1)
    report = (tmp_path / "results.md").read_text()
    assert "| c1 p50 ms, interleaved request by request | 3.50 | 2.75 | 0.79x |" in report
    assert "| served c1 p50 - in-process p50 ms, call by call (mean of 2 rounds) | 1.88 | 1.25 | 0.67x |" in report
    assert "| the same, each round | 2.00, 1.75 | 1.25, 1.25 | |" in report
    assert "| moderate load p50 ms (open loop at 240 req/s, 40% of saturation) | 4.50 | 4.00 | 0.89x |" in report
    assert (
        "| moderate load p99 ms | 12.00 | 9.00 | 0.75x |" in report and "| moderate load errors | 0 | 2 | |" in report
    )
    assert (tmp_path / "results.png").exists()
    assert summaries.summarize_folder(tmp_path) == s


def test_backend_ipc_summary(tmp_path):
    from oneranker_perf import backend_ipc_bench

    def probe(p50):
        return {"p50_ms": p50, "p90_ms": p50 + 0.1, "p99_ms": p50 + 0.3, "mean_ms": p50, "n": 10}

    results = {
        "machine": "2 cores (test CPU), Python 3",
        "commit": "abc1234",
        "command": "python -m oneranker_perf.backend_ipc_bench --calls 4",
        "calls": 4,
        "load": "",
        "measured": {"none": probe(0.3), "is_cancelled": probe(0.5), "metric": probe(0.42)},
    }
    backend_ipc_bench.write_report(results, tmp_path)
    s = _load(tmp_path)
    assert (s["commit"], s["machine"], s["command"]) == (results["commit"], results["machine"], results["command"])
    assert s["per_call_us"] == pytest.approx({"is_cancelled": 50.0, "metric": 30.0})  # (p50 - none) / 4 calls
    assert s["fused_ipc_ms_per_request_c1"] == pytest.approx((2 * 50.0 + 0 * 30.0) / 1000)  # 2 checks, 0 counters
    assert summaries.summarize_folder(tmp_path) == s


def test_scaling_summary(tmp_path):
    from oneranker_perf import scaling_bench

    def row(history, candidates, k):
        return {
            "history": history,
            "candidates": candidates,
            "gflop_generate": 0.1 * k,
            "gflop_rank": 0.01 * k,
            "onnxruntime_generate_ms": 2.0 * k,
            "onnxruntime_rank_ms": 0.5 * k,
            "torch_generate_ms": 3.0 * k,
            "torch_rank_ms": 0.75 * k,
            "fraction_of_peak": 0.1 + 0.01 * k,
            "cascade_rank_ms": 2.5 * k,
            "unified_rank_ms": 0.5 * k,
        }

    rows = [row(128, 64, 1), row(128, 256, 2), row(512, 64, 3)]
    results = {
        "preset": "paper",
        "machine": "2 cores (test CPU), Python 3",
        "commit": "abc1234",
        "command": "python -m oneranker_perf.scaling_bench --preset paper",
        "threads": 2,
        "matmul_gflops": 150.5,
        "rows": rows,
        "kv_binding": {"bound": 10.0, "unbound": 11.0, "history": 128, "candidates": 64, "unbound_over_bound": 1.1},
    }
    scaling_bench.write_report(results, tmp_path)
    s = _load(tmp_path)
    assert (s["commit"], s["machine"], s["command"]) == (results["commit"], results["machine"], results["command"])
    assert (s["preset"], s["threads"], s["matmul_gflops"], s["kv_unbound_over_bound"]) == ("paper", 2, 150.5, 1.1)
    assert len(s["cases"]) == len(rows)
    for r in rows:
        got = s["cases"][f"history {r['history']}, candidates {r['candidates']}"]
        assert got["onnxruntime_ms"] == r["onnxruntime_generate_ms"] + r["onnxruntime_rank_ms"]
        assert got["torch_ms"] == r["torch_generate_ms"] + r["torch_rank_ms"]
        assert (got["unified_rank_ms"], got["cascade_rank_ms"]) == (r["unified_rank_ms"], r["cascade_rank_ms"])
        assert got["fraction_of_peak"] == r["fraction_of_peak"]
    assert "new_vs_old" not in s
    assert summaries.summarize_folder(tmp_path) == s

    # with the whole-request comparison (in-graph vs numpy beam search)
    pair_rows = [
        {
            "history": 128,
            "candidates": 1024,
            "beam_width": 256,
            "candidates_ranked": {"new": 1000, "old": 998},
            "new_ms": 4.0,
            "old_ms": 5.0,
            "new_over_old": 0.8,
            "gflop": 0.25,
            "fraction_of_peak_new": 0.375,
        }
    ]
    results["new_vs_old"] = {"repeats": 3, "threads": 2, "streams": 4, "rows": pair_rows}
    scaling_bench.write_report(results, tmp_path)
    s = _load(tmp_path)
    got = s["new_vs_old"]["history 128, candidates 1024"]
    assert (got["new_ms"], got["old_ms"], got["new_over_old"], got["beam_width"]) == (4.0, 5.0, 0.8, 256)
    assert got["fraction_of_peak_new"] == 0.375
    assert (
        "| 128 | 1024 | 256 | 1000 / 998 | 0.250 | 4.00 | 5.00 | 0.80x | 37.5% |"
        in (tmp_path / "results.md").read_text()
    )
    assert summaries.summarize_folder(tmp_path) == s


@pytest.mark.parametrize("folder", ["topology", "topology_torch"])
def test_topology_summary(folder, tmp_path):
    """The committed results (with and without the new-vs-old pair), every figure changed."""
    from oneranker_perf import topology_report

    results = json.loads((RESULTS / folder / "results.json").read_text())
    results = {**copy.deepcopy(results), "commit": "abc1234"}
    for i, t in enumerate(results["topologies"].values()):
        t["c1"]["p50_ms"], t["c1"]["p99_ms"], t["saturation"]["throughput_rps"] = 1.5 + i, 2.5 + i, 100.25 + i
    if "new_vs_old" in results:  # the pair measured again in back-to-back blocks
        new, old = topology_report.contract_names()
        for i, name in enumerate((new, old)):
            results["new_vs_old"][name]["c1_blocks"] = {
                **results["new_vs_old"][name]["c1"],
                "p50_ms": 0.75 + i,
                "block": 7,
            }
        # the in-process pair again in rotating blocks
        results["in_process_new_vs_old_blocks"] = {
            "new": {"p50_ms": 0.5, "n": 9, "block": 7},
            "old": {"p50_ms": 0.75, "n": 9, "block": 7},
        }
        # each path served and in process, interleaved call by call
        results["served_vs_in_process"] = {
            k: {"served": {"p50_ms": 3.25 + i, "n": 9}, "in_process": {"p50_ms": 1.0 + 2 * i, "n": 9}}
            for i, k in enumerate(("new", "old"))
        }
    topology_report.write_report(results, tmp_path)
    s = _load(tmp_path)
    assert (s["commit"], s["machine"], s["command"]) == ("abc1234", results["machine"], results["command"])
    assert s["default_topology"] == results["default_topology"]
    paths = {**results["topologies"], **({"cascade": results["cascade"]} if "cascade" in results else {})}
    assert set(s["paths"]) == set(paths)
    for name, t in paths.items():
        got = s["paths"][name]
        assert (got["c1_p50_ms"], got["c1_p99_ms"]) == (t["c1"]["p50_ms"], t["c1"]["p99_ms"]), name
        assert got["saturated_rps"] == t["saturation"]["throughput_rps"], name
    assert s["in_process_onnxruntime_p50_ms"] == results["in_process_onnxruntime"]["p50_ms"]
    if "new_vs_old" in results:
        new, old = topology_report.contract_names()
        pair = results["new_vs_old"]
        assert s["served_c1_p50_ms"] == {"new": pair[new]["c1"]["p50_ms"], "old": pair[old]["c1"]["p50_ms"]}
        assert s["saturated_rps"] == {"new": pair[new]["throughput_rps"], "old": pair[old]["throughput_rps"]}
        assert (s["served_c1_p50_ms_blocks"], s["c1_block"]) == ({"new": 0.75, "old": 1.75}, 7)
        report = (tmp_path / "results.md").read_text()
        assert "| served c1 p50 ms, blocks of 7 | 0.75 | 1.75 |" in report
        assert s["in_process_p50_ms_blocks"] == {"new": 0.5, "old": 0.75}
        assert "| in-process p50 ms, blocks of 7 | 0.50 | 0.75 | 0.67x | |" in report
        # each path's own concurrency-1 loop (topologies fused 1.5, numpy_beam 2.5) against its in-process p50
        local = results["in_process_new_vs_old"]
        gap_new, gap_old = 1.5 - local["new"]["p50_ms"], 2.5 - local["old"]["p50_ms"]
        assert "| served c1 p50 ms, own window | 1.50 | 2.50 | 0.60x | |" in report
        assert f"| served c1 p50 (own window) - in-process p50, ms | {gap_new:.2f} | {gap_old:.2f} | | |" in report
        assert s["served_minus_in_process_p50_ms"] == {"new": 2.25, "old": 1.25}
        assert s["served_vs_in_process_p50_ms"]["old"] == {"served": 4.25, "in_process": 3.0}
        assert "(3.25 - 1.00; 4.25 - 3.00) | 2.25 | 1.25 | | |" in report
    else:
        assert "served_c1_p50_ms" not in s and "served_minus_in_process_p50_ms" not in s
    assert summaries.summarize_folder(tmp_path) == s


def test_perf_analyzer_summary(tmp_path):
    from oneranker_perf import perf_analyzer_suite as pas

    levels = [
        pas.LevelResult("concurrency", 1, 145.5, 6.5, 8.25, 8.75, 9.75, 6.75, 1500, 0, "ok", 0, 10.5),
        pas.LevelResult("concurrency", 2, 184.25, 10.5, 12.5, 13.5, 16.5, 10.75, 1900, 0, "ok", 0, 10.5),
        pas.LevelResult("concurrency", 4, 230.75, 17.25, 22.5, 25.25, 30.5, 17.5, 2400, 1, "failed", 1, 11.5),
    ]
    args = argparse.Namespace(
        model="oneranker_graphs",
        url="127.0.0.1:8001",
        input_data="perf_data.json",
        measurement_interval=3000,
        stability_percentage=10.0,
        client_cpus=None,
        server_cpus=None,
        note=["a note"],
    )
    machine = {"host": "h", "nproc": 2, "cpu_count": 2, "cpu_model": "Test CPU", "ram_gib": 23.5, "os": "Linux"}
    command = "perf_analyzer -m oneranker_graphs --concurrency-range 1:1:1"
    pas.write_reports(levels, tmp_path, args, machine, command)
    s = _load(tmp_path)
    assert s["commit"] and s["command"] == command and s["model"] == "oneranker_graphs" and s["mode"] == "concurrency"
    assert s["machine"] == "2 usable cores (2 online), Test CPU, 23.5 GiB RAM"
    assert list(s["levels"]) == ["1", "2", "4"]
    for r in levels:
        got = s["levels"][f"{r.level:g}"]
        assert (got["throughput_infer_s"], got["p50_ms"], got["p99_ms"]) == (r.throughput_infer_s, r.p50_ms, r.p99_ms)
        assert (got["errors"], got["status"]) == (r.errors, r.status)
    rebuilt = summaries.summarize_folder(tmp_path)
    assert _figures(rebuilt) == _figures(s) and rebuilt["note"] == BACKFILL_NOTE


def test_locust_summary(tmp_path):
    from oneranker_perf import locust_run

    (tmp_path / "locust_stats.csv").write_text(
        "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
        "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,"
        "99.99%,100%\n"
        "grpc,oneranker.recommend,4000,3,15,17.5,6.3,500.5,10.0,200.5,0.1,15,18,19,20,23,25,27,29,60,500,500\n"
        ",Aggregated,4465,4,16,17.25,6.3,523.5,10.0,226.25,0.2,16,19,20,21,24,26,28,30,65,520,520\n"
    )
    stats = locust_run.read_stats(tmp_path / "locust")
    args = argparse.Namespace(
        users=4, host="127.0.0.1:8001", run_time="20s", spawn_rate=4.0, requests="r.jsonl", retries=0, note=None
    )
    command = "python -m locust -f perf/locustfile.py --headless --users 4"
    locust_run.write_report(stats, tmp_path, args, command)
    s = _load(tmp_path)
    assert s["commit"] and s["command"] == command and s["users"] == 4 and s["machine"]
    want = {"requests": 4465, "failures": 4, "rps": 226.25, "avg_ms": 17.25, "p50_ms": 16, "p95_ms": 26}
    assert {k: s[k] for k in want} == want and (s["p99_ms"], s["max_ms"]) == (30, 523.5)
    rebuilt = summaries.summarize_folder(tmp_path)
    assert _figures(rebuilt) == _figures(s) and rebuilt["note"] == BACKFILL_NOTE


def test_train_summary(tmp_path):
    from oneranker_perf import train_bench

    def result(history, procs, threads, tokens):
        fixed = dict(batch_per_proc=16, device="cpu", steps=3, seconds=1.5, padding_fraction=0.25, max_rss_mib=600.0)
        fixed.update(padding_no_buckets=0.6, gflop_per_step=6.0, achieved_gflops=12.0, peak_gflops=50.0, params=1000)
        return train_bench.Result(
            **fixed,
            preset="small",
            history=history,
            procs=procs,
            threads_per_proc=threads,
            step_ms_median=300.0 + tokens / 100,
            examples_per_s=tokens / 50,
            tokens_per_s=tokens,
            fraction_of_peak=tokens / 1e5,
        )

    runs = [result(128, 1, 1, 7000.0), result(128, 1, 2, 2000.0), result(128, 2, 1, 14000.0), result(512, 1, 1, 9000.0)]
    info = {"host": "h", "cpu_count": 2, "usable_cores": 2, "cpu_model": "Test CPU", "torch": "2.x"}
    command = "python -m oneranker_perf.train_bench --steps 3"
    train_bench.write_table(runs, info, command, tmp_path, "abc1234")
    assert (tmp_path / "table.md").exists()
    s = _load(tmp_path)
    assert (s["commit"], s["command"], s["machine"]) == ("abc1234", command, "2 cores (Test CPU), torch 2.x")
    assert len(s["configs"]) == len(runs)
    for r in runs:
        got = s["configs"][f"small history {r.history}, {r.procs} proc x {r.threads_per_proc} threads"]
        assert (got["tokens_per_s"], got["examples_per_s"]) == (r.tokens_per_s, r.examples_per_s)
        assert (got["fraction_of_peak"], got["step_ms_median"]) == (r.fraction_of_peak, r.step_ms_median)
        assert got["status"] == r.status
    assert s["two_process_speedup"] == {"small@128": 14000.0 / 7000.0}
    payload = {"machine": info, "commit": "abc1234", "command": command, "results": [vars(r) for r in runs]}
    (tmp_path / "results.json").write_text(json.dumps(payload))
    assert summaries.summarize_folder(tmp_path) == s


def test_study_summary():
    from oneranker import study

    def cmp(b, metric, delta):
        return {"a": "full", "b": b, "metric": metric, "delta": delta, "lo": delta - 0.02, "hi": delta + 0.02}

    comparisons = [cmp("cascade", "HR@5", 0.05), cmp("cascade", "HR@1", -0.04), cmp("hstu", "NDCG@5", 0.01)]
    comparisons += [cmp("popularity", "GAUC", 0.1), {**cmp("cascade", "HR@5", 0.5), "a": "cascade", "b": "popularity"}]
    orderings = [{"metric": "HR@5", "verdict": v} for v in ("reproduced", "reversed", "reproduced")]
    dc = {"full_minus_wo_dc": {"overlap@5": {"delta": 0.02, "lo": 0.01, "hi": 0.03, "verdict": "reproduced"}}}
    source = {"source": "synthetic", "skipped": "", "comparisons": comparisons, "orderings": orderings, "dc": dc}
    skipped = {"source": "tafeng", "skipped": "data not found"}
    # the earlier one-process format (committed study folders without run files)
    s = study.study_summary([source, skipped], "abc1234", "2 CPU cores visible, torch threads 1", "cmd --smoke")
    assert (s["commit"], s["command"], s["machine"]) == (
        "abc1234",
        "cmd --smoke",
        "2 CPU cores visible, torch threads 1",
    )
    src = s["sources"]["synthetic"]
    assert src["full_minus_cascade"] == {"HR@5": [0.05, 0.05 - 0.02, 0.05 + 0.02]}  # HR@1: not a headline metric
    assert src["full_minus_hstu"] == {"NDCG@5": [0.01, 0.01 - 0.02, 0.01 + 0.02]}
    assert src["full_minus_popularity"] == {"GAUC": [0.1, 0.1 - 0.02, 0.1 + 0.02]}
    assert src["vs_cascade"] == {"better": 1, "worse": 1, "metrics": 2}
    assert src["vs_hstu"] == {"better": 0, "worse": 0, "metrics": 1}
    assert src["paper_orderings"] == {"HR@5": {"reproduced": 2, "reversed": 1}}
    assert src["dc_full_minus_wo_dc"] == {"overlap@5": [0.02, 0.01, 0.03]}
    assert s["sources"]["tafeng"] == {"skipped": "data not found"}


def _report_folders() -> list:
    folders = sorted(p for p in RESULTS.iterdir() if p.is_dir() and any(p.glob("*.md")))
    return [p.name for p in folders]


@pytest.mark.parametrize("name", _report_folders())
def test_every_result_folder_has_a_summary(name):
    folder = RESULTS / name
    assert (folder / "summary.json").exists(), f"{folder} has a Markdown report but no summary.json"
    summary = _load(folder)
    if "_meta" in summary:  # ml1m_bench (ml1m, ml100k): each run file under runs/ records its commit
        runs = [json.loads(p.read_text()) for p in sorted((folder / "runs").glob("*.json"))]
        assert all(r.get("git_commit") for r in runs) and len(runs) == sum(
            summary[k]["seeds"] for k in summary if k != "_meta"
        )
        return
    assert "commit" in summary and (summary["commit"] or summary.get("note")), summary.keys()
    assert summary.get("machine") and summary.get("command")
    assert _figures(summaries.summarize_folder(folder)) == _figures(summary), "summary.json differs from a rebuild"


def test_ml1m_report_names_the_decoder_each_run_used():
    """A run file written before the decoder switch ran the factorized decoder, whatever today's
    default is; a newer one names its own; HSTU has none."""
    from oneranker_perf.ml1m_bench import run_decoder

    assert run_decoder({"config": {"experiment": {"model": {"d_model": 64}}}}) == "factorized"
    assert run_decoder({"config": {"experiment": {"model": {"decoder": "conditioned"}}}}) == "conditioned"
    assert run_decoder({"config": {"max_len": 200}}) is None
    committed = _load(RESULTS / "ml1m")["oneranker"]
    assert committed["decoders"] == ["factorized"]


@pytest.mark.parametrize(
    "block, order",
    [
        (1, ["a0", "b0", "b1", "a1", "a2", "b2", "b3", "a3"]),  # each request to both, order rotating
        (2, ["a0", "a1", "b0", "b1", "b2", "b3", "a2", "a3"]),  # 2 back-to-back per path, rotating
    ],
)
def test_paired_c1_sends_rotating_blocks(block, order):
    """paired_c1 interleaves the paths per request (block 1) or in back-to-back blocks, and times
    every request of every path once."""
    from oneranker_perf import topology_bench

    sent = []

    class Client:
        def __init__(self, label):
            self.label = label

        def recommend(self, request):
            sent.append(f"{self.label}{request}")

    out = topology_bench.paired_c1({"a": Client("a").recommend, "b": Client("b").recommend}, [0, 1, 2, 3], 4, block)
    assert sent == order
    assert out["a"]["n"] == out["b"]["n"] == 4


def test_percentiles_of_nothing_are_nan_not_a_crash():
    """A saturation window in which no request completed (a slow or failing server) must still
    return, so that the bench reports its errors instead of dying in numpy."""
    import math

    from oneranker_perf.common import percentiles

    empty = percentiles([])
    assert empty["n"] == 0 and all(math.isnan(empty[k]) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms"))
    assert percentiles([0.001, 0.003])["p50_ms"] == 2.0
