"""Candidate selection: constrained beam search, merge/dedupe, agreement with the model's path
probabilities (the same numbers training optimises)."""

from __future__ import annotations

import numpy as np
import torch

from oneranker.pipeline import sample_arrays, to_batch
from oneranker.reference import generation_tables
from oneranker_serving.selection import beam_search, merge_candidates


def _logits_and_tables(tiny_run, rows=3):
    arrays = sample_arrays(tiny_run.prep, tiny_run.prep.splits["test"])
    batch = to_batch(arrays, np.arange(rows))
    with torch.no_grad():
        enc = tiny_run.model.encode_user(
            batch["user_features"], batch["hist_sids"], batch["hist_actions"], batch["hist_dt"], batch["hist_len"]
        )
    return enc.decoder_state, generation_tables(tiny_run.model, tiny_run.prep.sids)


def test_beam_search_never_emits_unknown_items(tiny_run):
    logits, tables = _logits_and_tables(tiny_run)
    num_ads = tiny_run.prep.dataset.catalog.num_ads
    for row in range(logits.shape[0]):
        for width in (1, 4, 32):
            ads, logp = beam_search(logits[row].numpy(), tables, width)
            found = ads[ads >= 0]
            assert found.size > 0
            assert found.min() >= 0 and found.max() < num_ads
            assert np.all(np.diff(logp, axis=1) <= 1e-12)  # beams sorted best first


def test_exhaustive_beam_equals_model_path_log_probs(tiny_run):
    """With a beam wide enough to keep every legal path, beam search scores each ad exactly
    as `OneRanker.path_log_probs` does (per interest head; mean of value heads)."""
    logits, tables = _logits_and_tables(tiny_run, rows=1)
    model, sids = tiny_run.model, tiny_run.prep.sids
    num_ads = sids.ad_codes.shape[0]
    ads, logp = beam_search(logits[0].numpy(), tables, beam_width=num_ads)
    paths = torch.from_numpy(sids.ad_codes[None].astype(np.int64))
    with torch.no_grad():
        per_head = model.path_log_probs(logits, paths)[0].numpy()  # [H, A]
    hi = model.cfg.num_interest_tokens
    expected = np.concatenate([per_head[:hi], per_head[hi:].mean(0, keepdims=True)])
    for stream in range(expected.shape[0]):
        got = np.full(num_ads, np.nan)
        valid = ads[stream] >= 0
        got[ads[stream][valid]] = logp[stream][valid]
        assert np.all(np.isfinite(got)), "every ad must be reachable"
        np.testing.assert_allclose(got, expected[stream], atol=2e-4)


def test_merge_dedupes_keeps_best_and_excludes():
    ads = np.array([[5, 3, -1], [3, 7, 9]])
    logp = np.array([[-1.0, -2.0, -1e30], [-0.5, -3.0, -4.0]])
    got_ads, got_lp, got_head = merge_candidates(ads, logp, num_candidates=10, exclude=np.array([9]))
    assert got_ads.tolist() == [3, 5, 7]
    assert got_lp.tolist() == [-0.5, -1.0, -3.0]
    assert got_head.tolist() == [1, 0, 1]
    few, _, _ = merge_candidates(ads, logp, num_candidates=2)
    assert few.tolist() == [3, 5]
