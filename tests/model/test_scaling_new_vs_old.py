"""The scaling bench's whole-request comparison (in-graph vs numpy beam search) on the session's
tiny release: every case is answered by both paths with the same candidate set size, and the
beam is wide enough for the candidates asked."""

from oneranker_client import contract


def test_new_vs_old_answers_every_case_on_both_paths(tiny_cfg, tiny_repository):
    from oneranker_perf.scaling_bench import time_new_vs_old
    from oneranker_serving.artifacts import read_export_info
    from oneranker_serving.selection import stream_matrix

    s = tiny_cfg.serve
    artifacts = tiny_repository / contract.FUSED_MODEL / "1" / "artifacts"
    info = read_export_info(artifacts)
    streams = stream_matrix(info["num_interest_heads"], info["num_value_heads"]).shape[0]
    # 1 event and 1 candidate (top_k must follow num_candidates down), and sizes past the serving
    # limits, which are clipped to them
    pair = time_new_vs_old(artifacts, tiny_cfg, [1, 10**6], [1, 10**6], threads=1, repeats=2, peak_gflops=100.0)
    assert pair["streams"] == streams
    rows = {(r["history"], r["candidates"]): r for r in pair["rows"]}
    assert set(rows) == {(h, n) for h in (1, s.max_history) for n in (1, s.max_num_candidates)}
    for (_, n), r in rows.items():
        # the streams together can yield what was asked (up to the widest beam allowed)
        assert streams * r["beam_width"] >= min(n, streams * s.max_beam_width), r
        assert r["beam_width"] >= s.beam_width
        ranked = r["candidates_ranked"]
        assert ranked["new"] == ranked["old"], r  # both paths rank the same number of candidates
        assert 1 <= ranked["new"] <= n, r
        assert r["new_ms"] > 0 and r["old_ms"] > 0
    assert {r["candidates_ranked"]["new"] for r in pair["rows"] if r["candidates"] == 1} == {1}
    # the largest ask reaches past the default beam: the beam was raised for it
    assert rows[(1, s.max_num_candidates)]["beam_width"] > s.beam_width
