"""The global time-cutoff split (`DataConfig.split = "time_cutoff"`, `data.splits`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from oneranker.config import ACTION_CLICK, ACTION_CONVERSION, ACTION_IMPRESSION, ConfigError, preset
from oneranker.data import make_splits, make_synthetic, popularity_scores, training_rows_mask
from oneranker.data.negatives import NegativeSampler
from oneranker.data.schema import Catalog, Dataset, EventLog
from oneranker.data.splits import cutoff_time, split_target_rows

POS = (ACTION_CLICK, ACTION_CONVERSION)


@pytest.fixture(scope="module")
def cfg():
    return dataclasses.replace(preset("tiny").data, split="time_cutoff", split_cutoff_quantile=0.8)


@pytest.fixture(scope="module")
def ds(cfg):
    return make_synthetic(cfg)


@pytest.fixture(scope="module")
def splits(ds, cfg):
    return make_splits(ds, cfg, num_task_tokens=8, seed=0)


def test_cutoff_is_the_quantile_of_event_times(ds, cfg):
    t = ds.log.timestamp
    T = cutoff_time(ds, cfg)
    assert T in t
    assert (t < T).mean() <= cfg.split_cutoff_quantile <= (t <= T).mean()
    later = cutoff_time(ds, dataclasses.replace(cfg, split_cutoff_quantile=0.9))
    assert later > T


def test_no_training_sample_touches_T(ds, cfg, splits):
    """History, target and head-target window of every training sample lie strictly before T."""
    log, T = ds.log, cutoff_time(ds, cfg)
    s = splits["train"]
    tr, lim = split_target_rows(ds, cfg)["train"]
    assert len(s) > 0 and (s.request_time < T).all()
    for i in range(len(s)):
        hist = np.arange(s.hist_start[i], s.hist_end[i])
        assert hist.size and (log.timestamp[hist] < T).all()
        window = np.arange(tr[i], min(tr[i] + cfg.mtp_future_window, lim[i]))
        assert (log.timestamp[window] < T).all()
        assert lim[i] == log.user_slices()[log.user[tr[i]] + 1] or log.timestamp[lim[i]] >= T
        heads = s.head_targets[i][s.head_targets[i] >= 0]
        assert np.isin(heads, log.item[window]).all()
    mask = training_rows_mask(ds, cfg)
    np.testing.assert_array_equal(mask, log.timestamp < T)
    pos = np.isin(log.action, POS)
    np.testing.assert_array_equal(
        popularity_scores(ds, s, cfg), np.bincount(log.item[pos & mask], minlength=ds.catalog.num_ads)
    )
    # every positive before T with a history is a training target
    first_ts = log.timestamp[log.user_slices()[log.user]]
    np.testing.assert_array_equal(tr, np.flatnonzero(pos & (log.timestamp < T) & (log.timestamp > first_ts)))


def test_eval_targets_are_the_first_two_positives_after_T(ds, cfg, splits):
    log, T = ds.log, cutoff_time(ds, cfg)
    rows = split_target_rows(ds, cfg)
    va, va_lim = rows["valid"]
    te, te_lim = rows["test"]
    assert (log.timestamp[va] > T).all() and (log.timestamp[te] > T).all()
    assert (splits["valid"].request_time > T).all() and (splits["test"].request_time > T).all()
    np.testing.assert_array_equal(te_lim, te + 1)
    pos = np.flatnonzero(np.isin(log.action, POS) & (log.timestamp > T))
    first_ts = log.timestamp[log.user_slices()[:-1]]
    expect_valid, expect_test = [], []
    for u in range(log.num_users):
        after = pos[log.user[pos] == u]
        if after.size < 2:
            continue
        # a target that is the user's first event has no history and is dropped (both splits)
        if log.timestamp[after[0]] > first_ts[u]:
            expect_valid.append(after[0])
            assert va_lim[va == after[0]] == after[1]  # the valid window stops at the test target
        expect_test.append(after[1])
    np.testing.assert_array_equal(va, expect_valid)
    np.testing.assert_array_equal(te, expect_test)
    assert np.isin(splits["valid"].user, splits["test"].user).all()
    assert len(te) > 0.15 * log.num_users  # the users still active after T


def test_negative_sampler_uses_rows_before_T(ds, cfg):
    sampler = NegativeSampler(ds, cfg, seed=0)
    log, T = ds.log, cutoff_time(ds, cfg)
    late = np.isin(log.action, POS) & (log.timestamp >= T)
    late_only = np.setdiff1d(
        log.user[late] * ds.catalog.num_ads + log.item[late],
        log.user[np.isin(log.action, POS) & (log.timestamp < T)] * ds.catalog.num_ads
        + log.item[np.isin(log.action, POS) & (log.timestamp < T)],
    )
    assert late_only.size and not np.isin(late_only, sampler.positive_keys).any()
    assert sampler.draw(np.arange(16), step=0).shape == (16, cfg.num_train_candidates)


def test_prepare_fits_codes_and_popularity_on_rows_before_T():
    """The pipeline hands the split's training rows to the tokenizer and the popularity baseline:
    codes equal those fitted on a log truncated at T."""
    from oneranker.pipeline import prepare
    from oneranker.tokenizer import fit_semantic_ids

    exp = preset("tiny")
    exp.data.split = "time_cutoff"
    prep = prepare(exp.validate())
    ds = prep.dataset
    keep = ds.log.timestamp < cutoff_time(ds, exp.data)
    log = ds.log
    cut = EventLog(
        user=log.user[keep],
        item=log.item[keep],
        action=log.action[keep],
        timestamp=log.timestamp[keep],
        profile=log.profile,
        num_users=log.num_users,
    )
    truncated = Dataset(name="cut", catalog=ds.catalog, log=cut, context=ds.context[keep])
    ref = fit_semantic_ids(truncated, exp.tokenizer, np.ones(keep.sum(), dtype=bool))
    np.testing.assert_array_equal(prep.sids.ad_codes, ref.ad_codes)
    pos = np.isin(cut.action, POS)
    np.testing.assert_array_equal(prep.popularity, np.bincount(cut.item[pos], minlength=ds.catalog.num_ads))
    full = fit_semantic_ids(ds, exp.tokenizer, np.ones(log.user.size, dtype=bool))
    assert not np.array_equal(full.ad_codes, ref.ad_codes)  # the rows after T would change the codes


def _toy(with_context: bool) -> Dataset:
    """Two users; all timestamps: 10 15 20 25 30 40 45 50 55 60 70 -> T(q=0.5) = 40."""
    C, I = ACTION_CLICK, ACTION_IMPRESSION
    user = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    ts = np.array([10, 20, 30, 40, 50, 60, 70, 15, 25, 45, 55])
    action = np.array([C, I, C, C, I, C, C, C, C, C, I])
    item = np.arange(11)
    cat = Catalog(
        ad_ids=np.arange(40),
        ad_advertiser=np.zeros(40, int),
        ad_category=np.zeros(40, int),
        ad_bid=np.ones(40, np.float32),
        ad_price=np.zeros(40, np.float32),
        content_ids=np.arange(1),
        num_advertisers=1,
        num_categories=1,
    )
    log = EventLog(user=user, item=item, action=action, timestamp=ts, profile=np.zeros((2, 3), int), num_users=2)
    context = ((ts // 10) % 24)[:, None] if with_context else None
    return Dataset(name="toy", catalog=cat, log=log, ground_truth=None, context=context)


@pytest.mark.parametrize("with_context", [True, False])
def test_toy_log_exact_cut(cfg, with_context):
    """A real-source-like log (no ground truth, optionally no context): rows at T are neither
    training rows nor targets, and the split is exactly the documented one."""
    toy = _toy(with_context)
    dcfg = dataclasses.replace(cfg, split_cutoff_quantile=0.5, num_train_candidates=5, num_eval_candidates=5)
    assert cutoff_time(toy, dcfg) == 40
    rows = split_target_rows(toy, dcfg)
    np.testing.assert_array_equal(rows["train"][0], [2, 8])  # rows 0 and 7 have no history
    np.testing.assert_array_equal(rows["train"][1], [3, 9])  # first row at/after T of each user
    np.testing.assert_array_equal(rows["valid"][0], [5])  # user 1 has one positive after T only
    np.testing.assert_array_equal(rows["test"][0], [6])
    np.testing.assert_array_equal(training_rows_mask(toy, dcfg), toy.log.timestamp < 40)
    sp = make_splits(toy, dcfg)
    assert (sp["valid"].hist_start[0], sp["valid"].hist_end[0]) == (0, 5)  # rows at/after T before the target
    np.testing.assert_array_equal(sp["train"].head_targets[:, :4], [[2, -1, 2, -1], [8, -1, 8, -1]])
    assert (sp["test"].candidate_ecpm == 0).all()
    assert sp["test"].context.shape == (1, dcfg.num_context_features)


def test_split_config_checks():
    bad = preset("tiny")
    bad.data.split = "random"
    with pytest.raises(ConfigError, match="data.split"):
        bad.validate()
    with pytest.raises(ValueError, match="data.split"):
        split_target_rows(_toy(True), bad.data)
    for q in (0.0, 1.0, -0.1):
        cfg = preset("tiny")
        cfg.data.split, cfg.data.split_cutoff_quantile = "time_cutoff", q
        with pytest.raises(ConfigError, match="split_cutoff_quantile"):
            cfg.validate()
