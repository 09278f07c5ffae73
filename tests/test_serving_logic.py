"""Serving logic without a server: the preprocess path tokenizes exactly like training, and a
mixed-length batch gives the same answers as each request alone."""

from __future__ import annotations

import numpy as np

from oneranker.cli import example_request
from oneranker.pipeline import sample_arrays
from oneranker_build import service


def test_raw_events_tokenize_like_training(tiny_run, tiny_export):
    """Equal raw events give equal tokens: the served preprocess vs the training tensors."""
    rec = service.load_recommender(tiny_export / "export", engine="onnxruntime", threads=1)
    arrays = sample_arrays(tiny_run.prep, tiny_run.prep.splits["test"])
    for row in range(0, len(tiny_run.prep.splits["test"]), 37):
        served = service.tokens_to_arrays(rec, example_request(tiny_run.prep, row))
        n = int(arrays["hist_len"][row])
        assert int(served["hist_len"][0, 0]) == n
        np.testing.assert_array_equal(served["user_features"][0], arrays["user_features"][row])
        np.testing.assert_array_equal(served["hist_sids"][0, :n], arrays["hist_sids"][row, :n])
        np.testing.assert_array_equal(served["hist_actions"][0, :n], arrays["hist_actions"][row, :n])
        np.testing.assert_allclose(served["hist_dt"][0, :n], arrays["hist_dt"][row, :n])
        assert not served["hist_actions"][0, n:].any()  # padding up to the bucket is empty


def test_mixed_length_batch_equals_each_request_alone(tiny_run, tiny_export):
    rec = service.load_recommender(tiny_export / "export", engine="onnxruntime", threads=1)
    requests = [example_request(tiny_run.prep, row) for row in range(0, 200, 25)]
    assert len({len(r.item_ids) for r in requests}) > 2  # really mixed lengths
    together = rec.recommend(requests)
    for req, batched in zip(requests, together):
        alone = rec.recommend([req])[0]
        np.testing.assert_array_equal(batched.item_ids, alone.item_ids)
        np.testing.assert_allclose(batched.scores, alone.scores, atol=1e-5)


def test_split_topology_helpers_round_trip(tiny_run, tiny_export):
    """generator batching + KV re-layout + ranker batching reproduce the fused pipeline."""
    rec = service.load_recommender(tiny_export / "export", engine="onnxruntime", threads=1, bind_kv=False)
    info = service.read_export_info(tiny_export / "export")
    f, t2 = info["dims"]["F"], info["num_step2_tokens"]
    requests = [example_request(tiny_run.prep, row) for row in (0, 50, 120)]
    tokens = [service.tokens_to_arrays(rec, r) for r in requests]
    batch, own = service.stack_generator_inputs(tokens)
    logits, kv = service.generate_numpy(rec.runner, batch)
    outs = service.split_generator_outputs(tokens, logits, kv, own, f)
    ranked = []
    for tok, out in zip(tokens, outs):
        cands = service.select_arrays(rec, out["level_logits"], tok["options"], tok["exclude_idx"])
        ranked.append((cands, {"kv": out["kv"], "hist_len": tok["hist_len"], **cands}))
    rbatch, shapes = service.stack_ranker_inputs([r[1] for r in ranked], f, t2)
    scores = service.split_scores(service.rank_numpy(rec.runner, rbatch), shapes)
    for req, tok, (cands, _), sc in zip(requests, tokens, ranked, scores):
        got = service.topk_arrays(sc[0], cands["cand_item_ids"], cands["cand_logp"], cands["cand_head"], tok["options"])
        want = rec.recommend([req])[0]
        np.testing.assert_array_equal(got["rec_item_ids"][0], want.item_ids)
        np.testing.assert_allclose(got["rec_scores"][0], want.scores, atol=1e-5)
