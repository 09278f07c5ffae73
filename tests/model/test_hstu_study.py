"""HSTU on the study's data (`baselines.hstu_study`): the inputs it reads, that its candidate scores
are exactly its next-item logits of the candidate ads, its full-catalogue order, and that a short
training ranks the target well above chance on the tiny synthetic world."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from oneranker.baselines import hstu_study as hs
from oneranker.config import ACTION_CLICK, ACTION_CONTENT_VIEW, ACTION_CONVERSION


@pytest.fixture(scope="module")
def trained(tiny_cfg, tiny_prep):
    cfg = copy.deepcopy(tiny_cfg)
    cfg.train.steps, cfg.train.eval_every, cfg.train.early_stopping, cfg.train.num_threads = 150, 50, True, 1
    return cfg, hs.fit(tiny_prep, cfg)


def test_inputs_are_the_engaged_events_of_the_history_window(tiny_prep):
    ds = tiny_prep.dataset
    test = tiny_prep.splits["test"]
    inputs = hs.study_inputs(tiny_prep, "test", max_len=16)
    num_ads = ds.catalog.num_ads
    for s in (0, 5, 123, len(test) - 1):
        rows = np.arange(test.hist_start[s], test.hist_end[s])
        act = ds.log.action[rows]
        keep = rows[np.isin(act, (ACTION_CLICK, ACTION_CONVERSION, ACTION_CONTENT_VIEW))][-16:]
        tokens = np.where(ds.log.action[keep] == ACTION_CONTENT_VIEW, num_ads + ds.log.item[keep], ds.log.item[keep])
        n = len(keep)
        assert inputs.lengths[s] == max(n, 1)
        np.testing.assert_array_equal(inputs.items[s, :n], tokens)  # oldest first, impressions dropped
        np.testing.assert_array_equal(inputs.ts[s, :n], ds.log.timestamp[keep])
        assert (inputs.items[s, n:] == -1).all()
    np.testing.assert_array_equal(inputs.candidates, test.candidates)


def test_candidate_scores_are_the_next_item_logits_of_the_candidates(trained, tiny_prep):
    _, result = trained
    model = result["model"]
    inputs = hs.study_inputs(tiny_prep, "test", model.model.cfg.max_len)
    scores = model.candidate_scores(inputs, batch_size=37)  # batching must not change anything
    with torch.no_grad():
        logits = model.ad_logits(*inputs.batch(np.arange(len(inputs)))).numpy()  # [S, A]
    np.testing.assert_allclose(scores, np.take_along_axis(logits, inputs.candidates, 1), rtol=1e-5, atol=1e-4)
    cat = model.catalogue(inputs, num_candidates=50, slate_k=10)
    top = np.take_along_axis(logits, cat["candidates"], 1)
    assert (np.diff(top, axis=1) <= 1e-5).all()  # generation order = descending logit
    assert (top[:, -1:] >= np.sort(logits, 1)[:, -50:-49] - 1e-5).all()  # the 50 best ads
    np.testing.assert_array_equal(cat["slate"], cat["candidates"][:, :10])


def test_short_training_ranks_the_target_above_chance(trained, tiny_prep):
    cfg, result = trained
    inputs = hs.study_inputs(tiny_prep, "test", cfg.model.max_history)
    scores = result["model"].candidate_scores(inputs)
    hr5 = float(((scores[:, 1:] >= scores[:, :1]).sum(1) < 5).mean())
    assert hr5 > 0.3, hr5  # chance: 5 / 30 = 0.167
    stop = result["stopping"]
    assert [e[0] for e in stop["evaluations"]] == [50, 100, 150]
    assert stop["best_value"] == max(e[1] for e in stop["evaluations"]) and stop["restored_best"]
    assert len(result["history"]) == stop["stopped_step"] == result["steps"]
