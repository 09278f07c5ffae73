"""The scaling bench's whole-request comparison (in-graph vs numpy beam search) on the session's
tiny release: every case is answered by both paths, the knobs follow the documented rules."""

from oneranker_client import contract


def test_new_vs_old_answers_every_case_on_both_paths(tiny_cfg, tiny_repository):
    from oneranker_perf.scaling_bench import time_new_vs_old

    s = tiny_cfg.serve
    artifacts = tiny_repository / contract.FUSED_MODEL / "1" / "artifacts"
    # 1 event and 1 candidate (top_k must follow num_candidates down), and sizes past the serving
    # limits, which are clipped to them
    pair = time_new_vs_old(artifacts, tiny_cfg, [1, 10**6], [1, 10**6], threads=1, repeats=2, peak_gflops=100.0)
    rows = {(r["history"], r["candidates"]): r for r in pair["rows"]}
    assert set(rows) == {(h, n) for h in (1, s.max_history) for n in (1, s.max_num_candidates)}
    heads = pair["heads"]
    for (_, n), r in rows.items():
        assert r["beam_width"] == min(s.max_beam_width, max(s.beam_width, -(-n // heads))), r
        for path in ("new", "old"):
            assert 1 <= r["candidates_ranked"][path] <= n, r
            assert r[f"{path}_ms"] > 0
        assert r["new_over_old"] == r["new_ms"] / r["old_ms"]
        assert 0 < r["fraction_of_peak_new"] == r["gflop"] / (r["new_ms"] / 1e3) / 100.0
    assert {r["candidates_ranked"]["new"] for r in pair["rows"] if r["candidates"] == 1} == {1}
    # the largest ask reaches past the default beam: the beam was raised for it
    assert rows[(1, s.max_num_candidates)]["beam_width"] > s.beam_width
