"""Synthetic marketplace and leakage-free splits (tiny preset)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from oneranker.config import ACTION_CLICK, ACTION_CONTENT_VIEW, ACTION_CONVERSION, AD_ACTIONS
from oneranker.data import make_splits, make_synthetic, popularity_scores, training_rows_mask
from oneranker.data.schema import Dataset, EventLog
from oneranker.data.splits import split_target_rows


@pytest.fixture(scope="module")
def cfg(tiny_cfg):
    return tiny_cfg


@pytest.fixture(scope="module")
def ds(tiny_prep):
    return tiny_prep.dataset  # make_synthetic(cfg.data), built once per session


@pytest.fixture(scope="module")
def splits(ds, cfg):
    return make_splits(ds, cfg.data, num_task_tokens=8, seed=0)


def _positive_rows_by_user(ds):
    log = ds.log
    pos = np.flatnonzero(np.isin(log.action, (ACTION_CLICK, ACTION_CONVERSION)))
    return {u: pos[log.user[pos] == u] for u in range(log.num_users)}


def _log_arrays(d: Dataset):
    log = d.log
    return [
        log.user,
        log.item,
        log.action,
        log.timestamp,
        log.profile,
        d.context,
        d.catalog.ad_bid,
        d.catalog.ad_price,
        d.catalog.ad_category,
        d.catalog.ad_advertiser,
    ]


def test_synthetic_deterministic(cfg, ds):
    again = make_synthetic(cfg.data)
    for a, b in zip(_log_arrays(ds), _log_arrays(again)):
        np.testing.assert_array_equal(a, b)
    users, ads = np.array([0, 1, 2]), np.array([3, 4, 5])
    np.testing.assert_array_equal(ds.ground_truth.pctr(users, ads), again.ground_truth.pctr(users, ads))
    other = make_synthetic(dataclasses.replace(cfg.data, seed=cfg.data.seed + 1))
    differs = [a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(_log_arrays(ds), _log_arrays(other))]
    assert all(differs[:4]) and differs[6]


def test_synthetic_shapes_and_ranges(cfg, ds):
    log, cat, c = ds.log, ds.catalog, cfg.data
    assert ds.name == "synthetic"
    assert cat.num_ads == c.num_ads and cat.num_contents == c.num_contents and log.num_users == c.num_users
    assert log.profile.shape == (c.num_users, c.num_profile_features)
    assert log.profile.min() >= 0 and log.profile.max() < c.profile_cardinality
    assert ds.context.shape == (log.user.size, c.num_context_features)
    assert ds.context.min() >= 0 and ds.context.max() < c.context_cardinality
    np.testing.assert_array_equal(ds.context[:, 0], (log.timestamp // 3600) % 24)
    assert cat.ad_bid.dtype == np.float32 and (cat.ad_bid > 0).all() and (cat.ad_price > 0).all()
    is_ad = log.action != ACTION_CONTENT_VIEW
    assert np.isin(log.action, (ACTION_CONTENT_VIEW,) + AD_ACTIONS).all()
    assert (log.item[is_ad] < c.num_ads).all() and (log.item[~is_ad] < c.num_contents).all()
    assert log.item.min() >= 0
    assert len(np.unique(cat.ad_ids)) == cat.num_ads and len(np.unique(cat.content_ids)) == cat.num_contents
    assert ds.label_sources == {
        "click": "simulated",
        "conversion": "simulated",
        "bid": "simulated",
        "price": "simulated",
    }


def test_every_user_has_three_positives(ds):
    log = ds.log
    pos = np.isin(log.action, (ACTION_CLICK, ACTION_CONVERSION))
    counts = np.bincount(log.user[pos], minlength=log.num_users)
    assert counts.min() >= 3


def test_log_sorted_by_user_then_time(ds):
    u, t = ds.log.user, ds.log.timestamp
    assert (np.diff(u) >= 0).all()
    same = np.diff(u) == 0
    assert (np.diff(t)[same] > 0).all()  # synthetic: strictly increasing within a user
    off = ds.log.user_slices()
    assert off[0] == 0 and off[-1] == u.size and (np.diff(off) > 0).all()


def test_ground_truth_probabilities(ds):
    rng = np.random.default_rng(0)
    users = rng.integers(ds.log.num_users, size=5000)
    ads = rng.integers(ds.catalog.num_ads, size=5000)
    pctr, pcvr = ds.ground_truth.pctr(users, ads), ds.ground_truth.pcvr(users, ads)
    for p in (pctr, pcvr):
        assert p.shape == (5000,) and (p > 0).all() and (p < 1).all()
    # Clicks are interest-driven: clicked ads have much higher true pCTR than random pairs.
    log = ds.log
    clicked = np.isin(log.action, (ACTION_CLICK, ACTION_CONVERSION))
    assert ds.ground_truth.pctr(log.user[clicked], log.item[clicked]).mean() > 3 * pctr.mean()


def test_slate_value_sums(ds):
    gt, cat = ds.ground_truth, ds.catalog
    ads = np.array([0, 5, 7, 11])
    users = np.full(4, 3)
    sv = gt.slate_value(3, ads, cat)
    ecpm = cat.ad_bid[ads] * gt.pctr(users, ads) * gt.pcvr(users, ads)
    gmv = cat.ad_price[ads] * gt.pctr(users, ads) * gt.pcvr(users, ads)
    np.testing.assert_allclose(gt.expected_ecpm(users, ads, cat), ecpm, rtol=1e-6)
    np.testing.assert_allclose(sv["ecpm"], ecpm.sum(), rtol=1e-6)
    np.testing.assert_allclose(sv["gmv"], gmv.sum(), rtol=1e-6)


def test_split_sizes(ds, splits, cfg):
    """Train cut points = every positive before the valid target that has a history."""
    U = ds.log.num_users
    assert len(splits["valid"]) == U and len(splits["test"]) == U
    pos = _positive_rows_by_user(ds)
    first_ts = ds.log.timestamp[ds.log.user_slices()[:-1]]
    expect = sum(int((ds.log.timestamp[p[:-2]] > first_ts[u]).sum()) for u, p in pos.items())
    assert len(splits["train"]) == expect > U * cfg.data.train_cuts_per_epoch  # more than one epoch's worth


def test_splits_deterministic(ds, cfg, splits):
    again = make_splits(ds, cfg.data, num_task_tokens=8, seed=0)
    other = make_splits(ds, cfg.data, num_task_tokens=8, seed=1)
    for name in splits:
        for k, v in splits[name].__dict__.items():
            np.testing.assert_array_equal(v, getattr(again[name], k))
    assert not np.array_equal(splits["test"].candidates, other["test"].candidates)


@pytest.mark.parametrize("name", ["train", "valid", "test"])
def test_history_strictly_before_target(ds, splits, cfg, name):
    s, log = splits[name], ds.log
    rows = split_target_rows(ds, cfg.data)[name][0]
    assert rows.size == len(s)
    np.testing.assert_array_equal(log.item[rows], s.target)
    np.testing.assert_array_equal(log.timestamp[rows], s.request_time)
    np.testing.assert_array_equal(ds.context[rows], s.context)
    assert (s.hist_end > s.hist_start).all()
    assert (s.hist_end - s.hist_start <= cfg.data.max_history).all()
    for i in range(len(s)):
        h = np.arange(s.hist_start[i], s.hist_end[i])
        assert (log.user[h] == s.user[i]).all()
        assert (h < rows[i]).all()
        assert (log.timestamp[h] < s.request_time[i]).all()
        # most recent events kept: the next row after the history is the target or same-second
        assert log.timestamp[s.hist_end[i]] >= s.request_time[i]
    assert np.isin(log.action[rows], (ACTION_CLICK, ACTION_CONVERSION)).all()


def test_history_excludes_same_second_events(cfg):
    """Hand-made log: an event at the target's second is not history, even if logged before it."""
    from oneranker.data.schema import Catalog

    user = np.array([0, 0, 0, 0, 0, 0, 0])
    ts = np.array([10, 20, 30, 30, 40, 50, 50])
    action = np.array([ACTION_CLICK, 2, 2, ACTION_CLICK, ACTION_CLICK, 2, ACTION_CLICK])
    item = np.array([0, 1, 2, 3, 4, 5, 6])
    cat = Catalog(
        ad_ids=np.arange(40),
        ad_advertiser=np.zeros(40, int),
        ad_category=np.zeros(40, int),
        ad_bid=np.ones(40, np.float32),
        ad_price=np.ones(40, np.float32),
        content_ids=np.arange(2),
        num_advertisers=1,
        num_categories=1,
    )
    log = EventLog(user=user, item=item, action=action, timestamp=ts, profile=np.zeros((1, 3), int), num_users=1)
    toy = Dataset(name="toy", catalog=cat, log=log)
    dcfg = dataclasses.replace(cfg.data, num_train_candidates=5, num_eval_candidates=5)
    sp = make_splits(toy, dcfg)
    # test target = row 6 (t=50): history excludes row 5 (same second) -> rows [0, 5)
    assert (sp["test"].hist_start[0], sp["test"].hist_end[0]) == (0, 5)
    # valid target = row 4 (t=40); train targets: rows 3 (t=30, history rows [0,2)) and 0 (dropped: no history)
    assert (sp["valid"].hist_start[0], sp["valid"].hist_end[0]) == (0, 4)
    np.testing.assert_array_equal(sp["train"].target, [3])
    assert (sp["train"].hist_start[0], sp["train"].hist_end[0]) == (0, 2)
    # train window [row 3, valid row 4): only the target; valid window [4, 6): row 5 impression
    np.testing.assert_array_equal(sp["train"].head_targets[0], [3, -1, 3, -1, -1, -1, 3, 3])
    np.testing.assert_array_equal(sp["valid"].head_targets[0], [4, 5, 4, -1, -1, -1, 4, 4])
    np.testing.assert_array_equal(sp["test"].head_targets[0], [6, -1, 6, -1, -1, -1, 6, 6])
    mask = training_rows_mask(toy)
    np.testing.assert_array_equal(mask, [True, True, True, True, False, False, False])


def test_targets_ordered_per_user(ds, splits, cfg):
    rows = split_target_rows(ds, cfg.data)
    tr_rows, va_rows, te_rows = rows["train"][0], rows["valid"][0], rows["test"][0]
    va_by_user = dict(zip(splits["valid"].user.tolist(), va_rows.tolist()))
    te_by_user = dict(zip(splits["test"].user.tolist(), te_rows.tolist()))
    pos = _positive_rows_by_user(ds)
    for u, r in zip(splits["train"].user.tolist(), tr_rows.tolist()):
        assert r < va_by_user[u] < te_by_user[u]
    for u in range(ds.log.num_users):
        assert te_by_user[u] == pos[u][-1] and va_by_user[u] == pos[u][-2]
    t = splits["train"]
    vt = dict(zip(splits["valid"].user.tolist(), splits["valid"].request_time.tolist()))
    tt = dict(zip(splits["test"].user.tolist(), splits["test"].request_time.tolist()))
    for u, rt in zip(t.user.tolist(), t.request_time.tolist()):
        assert rt < vt[u] < tt[u]
    # train targets are every eligible positive before the valid target
    first_ts = ds.log.timestamp[ds.log.user_slices()[:-1]]
    for u in np.unique(t.user):
        expect = pos[u][:-2]
        expect = expect[ds.log.timestamp[expect] > first_ts[u]]  # >= 1 event before the target
        np.testing.assert_array_equal(tr_rows[t.user == u], expect)


def _window_rows(start: int, limit: int, width: int) -> np.ndarray:
    return np.arange(start, min(start + width, limit))


@pytest.mark.parametrize("name", ["train", "valid", "test"])
def test_head_targets_come_from_allowed_window(ds, splits, cfg, name):
    """Every head target must be an ad of the window [target row, limit) and never the item of a
    later split's target row unless that item also occurs inside the window; recomputes the window."""
    s, log = splits[name], ds.log
    rows = split_target_rows(ds, cfg.data)
    tr, lim = rows[name]
    va_row = dict(zip(log.user[rows["valid"][0]].tolist(), rows["valid"][0].tolist()))
    te_row = dict(zip(log.user[rows["test"][0]].tolist(), rows["test"][0].tolist()))
    W = cfg.data.mtp_future_window
    for i in range(len(s)):
        u = int(s.user[i])
        if name == "train":
            assert lim[i] == va_row[u]
        elif name == "valid":
            assert lim[i] == te_row[u]
        else:
            assert lim[i] == tr[i] + 1
        w = _window_rows(tr[i], lim[i], W)
        if name == "train":
            assert va_row[u] not in w and te_row[u] not in w
        elif name == "valid":
            assert w[0] == va_row[u] and te_row[u] not in w
        else:
            np.testing.assert_array_equal(w, [te_row[u]])
        ads = log.item[w][np.isin(log.action[w], AD_ACTIONS)]
        pos = log.item[w][np.isin(log.action[w], (ACTION_CLICK, ACTION_CONVERSION))]
        conv = log.item[w][log.action[w] == ACTION_CONVERSION]
        h = s.head_targets[i]
        expect = [
            ads[0],
            ads[1] if ads.size > 1 else -1,
            pos[0],
            pos[1] if pos.size > 1 else -1,
            conv[0] if conv.size else -1,
            conv[1] if conv.size > 1 else -1,
        ]
        np.testing.assert_array_equal(h[:6], expect)
        assert np.isin(h[6:], pos).all()
        assert h[0] == s.target[i] and h[2] == s.target[i]


def test_train_windows_never_reach_eval_rows(ds, splits, cfg):
    """Directly: for train samples the window end is at most the valid target row."""
    rows = split_target_rows(ds, cfg.data)
    tr, lim = rows["train"]
    va = dict(zip(ds.log.user[rows["valid"][0]].tolist(), rows["valid"][0].tolist()))
    end = np.minimum(tr + cfg.data.mtp_future_window, lim)
    assert all(e <= va[u] for e, u in zip(end.tolist(), splits["train"].user.tolist()))
    assert (tr < lim).all()


def test_value_heads_follow_ecpm(ds, cfg):
    """Value heads draw among the window's positives with probability proportional to eCPM:
    compare the empirical frequency of each sample's top-eCPM positive over many seeds with its
    expected probability."""
    log = ds.log
    tr, lim = split_target_rows(ds, cfg.data)["train"]
    W = cfg.data.mtp_future_window
    n_seeds = 25
    draws = np.stack(
        [make_splits(ds, cfg.data, seed=seed)["train"].head_targets[:, 6:8] for seed in range(n_seeds)], axis=1
    ).reshape(len(tr), -1)
    expected, observed = [], []
    for i in range(len(tr)):
        w = _window_rows(tr[i], lim[i], W)
        w = w[np.isin(log.action[w], (ACTION_CLICK, ACTION_CONVERSION))]
        items = log.item[w]
        assert np.isin(draws[i], items).all()
        if np.unique(items).size < 2:
            continue
        e = ds.ground_truth.expected_ecpm(np.full(items.size, log.user[tr[i]]), items, ds.catalog)
        top = items[np.argmax(e)]
        expected.append(e[items == top].sum() / e.sum())
        observed.append(np.mean(draws[i] == top))
    expected, observed = np.array(expected), np.array(observed)
    assert expected.size >= 30
    assert abs(observed.mean() - expected.mean()) < 0.05
    assert np.corrcoef(expected, observed)[0, 1] > 0.8


@pytest.mark.parametrize("name", ["train", "valid", "test"])
def test_candidates(ds, splits, cfg, name):
    s = splits[name]
    n = cfg.data.num_train_candidates if name == "train" else cfg.data.num_eval_candidates
    assert s.candidates.shape == (len(s), n)
    np.testing.assert_array_equal(s.candidates[:, 0], s.target)
    assert s.candidates.min() >= 0 and s.candidates.max() < ds.catalog.num_ads
    srt = np.sort(s.candidates, axis=1)
    assert (np.diff(srt, axis=1) > 0).all()  # no duplicates in a row
    # value labels are the true expected eCPM, the target's included (no lift: the engagement
    # family of BPR carries the logged positive)
    np.testing.assert_array_equal(s.candidate_values, s.candidate_ecpm)
    u = np.repeat(s.user, n)
    e = ds.ground_truth.expected_ecpm(u, s.candidates.ravel(), ds.catalog).reshape(s.candidates.shape)
    g = ds.ground_truth.expected_gmv(u, s.candidates.ravel(), ds.catalog).reshape(s.candidates.shape)
    np.testing.assert_allclose(s.candidate_ecpm, e, rtol=1e-5)
    np.testing.assert_allclose(s.candidate_gmv, g, rtol=1e-5)
    assert s.head_targets.shape == (len(s), 8) and s.head_targets.dtype == np.int64


def test_candidates_roughly_uniform(splits, ds):
    s = splits["train"]
    counts = np.bincount(s.candidates[:, 1:].ravel(), minlength=ds.catalog.num_ads)
    expected = counts.sum() / ds.catalog.num_ads
    assert counts.min() > 0.4 * expected and counts.max() < 1.8 * expected


def test_general_num_task_tokens(ds, cfg):
    s8 = make_splits(ds, cfg.data, num_task_tokens=8)["valid"]
    s11 = make_splits(ds, cfg.data, num_task_tokens=11)["valid"]
    assert s11.head_targets.shape[1] == 11
    np.testing.assert_array_equal(s11.head_targets[:, :6], s8.head_targets[:, :6])
    np.testing.assert_array_equal(s11.head_targets[:, 6:9], s8.head_targets[:, :3])  # cycling
    s1 = make_splits(ds, cfg.data, num_task_tokens=1)["valid"]
    np.testing.assert_array_equal(s1.head_targets[:, 0], s8.head_targets[:, 0])


def test_training_rows_mask_and_popularity(ds, splits, cfg):
    mask = training_rows_mask(ds)
    rows = split_target_rows(ds, cfg.data)
    va_rows = rows["valid"][0]
    assert not mask[va_rows].any() and not mask[rows["test"][0]].any()
    assert mask[rows["train"][0]].all()
    off = ds.log.user_slices()
    # the mask is exactly the prefix of each user's rows up to the valid target
    n_train = np.bincount(ds.log.user[mask], minlength=ds.log.num_users)
    np.testing.assert_array_equal(n_train, va_rows - off[:-1])
    pop = popularity_scores(ds, splits["train"])
    assert pop.shape == (ds.catalog.num_ads,)
    log = ds.log
    pos = np.isin(log.action, (ACTION_CLICK, ACTION_CONVERSION))
    full = np.bincount(log.item[pos], minlength=ds.catalog.num_ads)
    assert pop.sum() == (pos & mask).sum() < full.sum()
    assert (pop <= full).all()
    # leakage: removing a user's valid/test events does not change popularity
    assert pop.sum() == full.sum() - 2 * ds.log.num_users


def test_popularity_beats_random_and_oracle_beats_popularity(ds, splits):
    s = splits["test"]
    pop = popularity_scores(ds, splits["train"])[s.candidates]
    hr_pop = ((pop[:, 1:] >= pop[:, :1]).sum(1) < 10).mean()  # pessimistic ties
    n = s.candidates.shape[1]
    u = np.repeat(s.user, n)
    true = ds.ground_truth.pctr(u, s.candidates.ravel()).reshape(s.candidates.shape)
    hr_true = ((true[:, 1:] >= true[:, :1]).sum(1) < 10).mean()
    assert hr_pop > 10 / n + 0.05
    assert hr_true > hr_pop + 0.15
