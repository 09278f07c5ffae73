"""The topology benchmark end to end on the tiny model (seconds, not minutes): every topology and
the cascade baseline are measured on one real tritonserver and reported side by side."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.triton


def test_topology_bench_measures_topologies_and_cascade_in_one_run(tiny_run, tiny_repository, tmp_path):
    from oneranker_client import contract
    from oneranker_perf import topology_bench

    out = tmp_path / "topology"
    topology_bench.run(tiny_run.run_dir, tiny_repository, out, n_latency=6, concurrency=2, seconds=1.0, n_requests=4)
    results = json.loads((out / "results.json").read_text())
    assert set(results["topologies"]) == set(contract.TOPOLOGY_MODELS)
    for path in (*results["topologies"].values(), results["cascade"]):
        assert path["saturation"]["errors"] == 0 and path["saturation"]["throughput_rps"] > 0, path["model"]
        assert path["c1"]["p50_ms"] > 0
    assert results["cascade"]["model"] == contract.CASCADE_PUBLIC_MODEL
    pair = results["unified_vs_cascade"]
    assert list(pair) == [contract.TOPOLOGY_MODELS["fused"], contract.CASCADE_PUBLIC_MODEL]
    for side in pair.values():
        assert side["errors"] == 0 and side["throughput_rps"] > 0 and side["c1"]["n"] == 6
    fused = results["topologies"]["fused"]["c1"]["stages"]
    assert fused["requests"] >= 6 and fused["ensemble_request_ms"] > 0
    assert "preprocess_compute_ms" not in fused and fused["recommender_compute_ms"] > 0  # one Python model
    assert fused["select_ms"] == 0  # the beam search runs inside the generation graph
    assert 0 < fused["generate_ms"] + fused["rank_ms"] <= fused["recommender_compute_ms"] * 1.05
    old = results["topologies"]["numpy_beam"]["c1"]["stages"]
    assert old["preprocess_compute_ms"] > 0 and old["select_ms"] > 0  # the baseline's own labelled counters
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {
        "commit",
        "machine",
        "command",
        "default_topology",
        "paths",
        "in_process_onnxruntime_p50_ms",
        "in_process_p50_ms",
        "served_c1_p50_ms",
        "served_c1_p99_ms",
        "saturated_rps",
        "served_c1_p50_ms_blocks",
        "c1_block",
        "in_process_p50_ms_blocks",
        "served_minus_in_process_p50_ms",
        "served_vs_in_process_p50_ms",
    }
    assert all(
        set(summary[k]) == {"new", "old"} and min(summary[k].values()) > 0
        for k in (
            "in_process_p50_ms",
            "served_c1_p50_ms",
            "served_c1_p99_ms",
            "saturated_rps",
            "served_c1_p50_ms_blocks",
            "in_process_p50_ms_blocks",
        )
    )
    # each path served and in process, interleaved call by call: the gap is the difference of the two
    for k in ("new", "old"):
        pair = summary["served_vs_in_process_p50_ms"][k]
        assert min(pair.values()) > 0 and results["served_vs_in_process"][k]["served"]["n"] == 6
        assert summary["served_minus_in_process_p50_ms"][k] == pair["served"] - pair["in_process"]
    assert summary["c1_block"] == topology_bench.C1_BLOCK
    assert set(summary["paths"]) == {*contract.TOPOLOGY_MODELS, "cascade"}
    assert summary["paths"]["fused"]["saturated_rps"] == results["topologies"]["fused"]["saturation"]["throughput_rps"]
    assert results["cascade"]["c1"]["stages"]["generate_ms"] > 0  # the cascade's own pipeline-labelled counters
    assert results["topologies"]["graphs"]["c1"]["stages"]["ranking_compute_ms"] > 0
    floor = results["compute_floor"]
    assert floor["cascade_gflop"] > floor["unified_gflop"] > 0  # the cascade encodes the history twice
    report = (out / "results.md").read_text()
    assert (
        "Unified OneRanker vs the cascade baseline" in report
        and "Where the time goes" in report
        and (out / "results.png").stat().st_size > 0
    )


def test_queue_delay_bench_serves_every_delay_side_by_side(tiny_run, tiny_export, tmp_path):
    from oneranker_perf import queue_delay_bench

    out = tmp_path / "queue_delay"
    queue_delay_bench.run(
        tiny_run.run_dir, tiny_export / "export", [0, 500], out, n_latency=4, concurrency=2, seconds=1.0, n_requests=4
    )
    results = json.loads((out / "results.json").read_text())
    assert set(results["measured"]) == {f"{p} @ {d} us" for p in ("fused", "graphs") for d in (0, 500)}
    for label, t in results["measured"].items():
        assert t["errors"] == 0 and t["throughput_rps"] > 0 and t["c1"]["n"] == 4, label
    assert "| fused | 0 |" in (out / "results.md").read_text() and (out / "results.png").stat().st_size > 0


def test_instance_layout_bench_serves_both_layouts_side_by_side(tiny_run, tiny_export, tmp_path):
    """Both layouts answer on their own servers, in both measurements and every call-by-call round."""
    from oneranker_perf import instance_layout_bench

    out = tmp_path / "instance_layout"
    results = instance_layout_bench.run(
        tiny_run.run_dir, tiny_export / "export", out, n_latency=4, concurrency=2, seconds=1.0, n_requests=4, rounds=2
    )
    assert set(results["measured"]) == set(instance_layout_bench.LAYOUTS)
    for layout, t in results["measured"].items():
        assert t["errors"] == 0 and t["throughput_rps"] > 0 and t["c1"]["n"] == 4, layout
        assert [r["served"]["n"] for r in results["call_by_call"][layout]] == [4, 4], layout
    assert results["scheduling_flags"]["plain"] == [] and results["scheduling_flags"]["preferred"]
    load = results["moderate_load"]
    assert load["target_rps"] == pytest.approx(0.4 * min(t["throughput_rps"] for t in results["measured"].values()))
    for layout in instance_layout_bench.LAYOUTS:  # an open loop for 1 s in all: every due request answered
        assert load[layout]["errors"] == 0 and load[layout]["n"] >= int(load["target_rps"] * 0.5) - 1, layout
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["preferred"]["served_minus_in_process_p50_ms"]) == 2
    assert (out / "results.png").stat().st_size > 0
