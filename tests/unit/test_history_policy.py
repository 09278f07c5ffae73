"""What tokenization does to real traffic: unknown item ids, over-long histories, bad timestamps
(`tokenize.tokenize_request` with a `HistoryPolicy`)."""

from __future__ import annotations

import numpy as np
import pytest

from oneranker_serving.config import OOV_REJECT, ServeConfig
from oneranker_serving.tables import ItemTables
from oneranker_serving.tokenize import HistoryPolicy, RequestError, tokenize_request

D, K = 3, 8


@pytest.fixture(scope="module")
def tables() -> ItemTables:
    rng = np.random.default_rng(0)
    return ItemTables(
        ad_ids=np.arange(100, 120, dtype=np.int64),
        ad_codes=rng.integers(0, K, (20, D)),
        ad_advertiser=np.zeros(20, np.int64),
        ad_category=np.zeros(20, np.int64),
        ad_bid=np.ones(20, np.float32),
        content_ids=np.arange(500, 510, dtype=np.int64),
        content_codes=rng.integers(0, K, (10, D)),
    )


def _tokens(tables, item_ids, actions, policy, timestamps=None, request_time=1000, now=None):
    n = len(item_ids)
    timestamps = np.arange(n, dtype=np.int64) if timestamps is None else np.asarray(timestamps)
    return tokenize_request(
        tables, np.zeros(2, np.int64), np.asarray(item_ids), np.asarray(actions), timestamps, request_time, policy, now
    )


def test_unknown_ids_become_the_oov_path_and_are_counted(tables):
    policy = HistoryPolicy(feature_cardinality=4, max_history=16, oov_code=K)
    # ad 999 and content 777 are unknown; ad 105 and content 503 known
    t = _tokens(tables, [105, 999, 503, 777], [2, 3, 1, 1], policy)
    assert t.unknown == 2 and t.length == 4
    assert t.hist_sids[1].tolist() == [K] * D and t.hist_sids[3].tolist() == [K] * D
    assert t.hist_sids[0].tolist() == tables.ad_codes[5].tolist()
    assert t.hist_sids[2].tolist() == tables.content_codes[3].tolist()
    assert t.hist_actions.tolist() == [2, 3, 1, 1]  # the event happened: action and time are kept
    # an ad id under a content action is a different catalogue: unknown there
    assert _tokens(tables, [105], [1], policy).unknown == 1


def test_oov_policy_reject_and_models_without_an_oov_token_refuse_unknown_ids(tables):
    reject = HistoryPolicy(4, 16, oov_code=K, oov_policy=OOV_REJECT)
    with pytest.raises(RequestError, match=r"unknown item ids \[999\].*reject"):
        _tokens(tables, [105, 999], [2, 2], reject)
    with pytest.raises(RequestError, match="no OOV token"):
        _tokens(tables, [999], [2], HistoryPolicy(4, 16, oov_code=None))
    assert _tokens(tables, [105], [2], reject).unknown == 0


def test_long_histories_keep_the_most_recent_events(tables):
    policy = HistoryPolicy(4, max_history=4, oov_code=K)
    ids = [100, 101, 102, 103, 104, 105, 106]
    long = _tokens(tables, ids, [2] * 7, policy, timestamps=np.arange(7) * 10)
    tail = _tokens(tables, ids[3:], [2] * 4, policy, timestamps=np.arange(3, 7) * 10)
    assert long.dropped == 3 and tail.dropped == 0 and long.length == 4
    np.testing.assert_array_equal(long.hist_sids, tail.hist_sids)
    np.testing.assert_array_equal(long.hist_dt, tail.hist_dt)
    assert long.hist_dt.tolist() == [1000 - 30, 1000 - 40, 1000 - 50, 1000 - 60]


@pytest.mark.parametrize(
    "timestamps, request_time, message",
    [
        ([-1], 1000, "timestamps must be >= 0"),
        ([0], -5, "request_time must be >= 0"),
        ([1001], 1000, "after the request time"),
    ],
)
def test_timestamps_must_lie_between_zero_and_the_request_time(tables, timestamps, request_time, message):
    with pytest.raises(RequestError, match=message):
        _tokens(tables, [100], [2], HistoryPolicy(4, 16, K), timestamps=timestamps, request_time=request_time)


def test_the_skew_window_is_off_by_default_and_checks_the_server_clock_when_set(tables):
    old_log = dict(timestamps=[0], request_time=1000, now=1_800_000_000)  # a replayed log
    assert _tokens(tables, [100], [2], HistoryPolicy(4, 16, K), **old_log).length == 1
    with pytest.raises(RequestError, match="from the server clock"):
        _tokens(tables, [100], [2], HistoryPolicy(4, 16, K, timestamp_skew_s=60), **old_log)
    near = dict(timestamps=[0], request_time=1_800_000_030, now=1_800_000_000)
    assert _tokens(tables, [100], [2], HistoryPolicy(4, 16, K, timestamp_skew_s=60), **near).length == 1


def test_serve_config_refuses_an_unknown_oov_policy_and_defaults_to_token():
    assert ServeConfig().oov_policy == "token" and ServeConfig().timestamp_skew_s is None
    with pytest.raises(ValueError, match="oov_policy"):
        ServeConfig(oov_policy="drop")
    assert ServeConfig.from_dict({"oov_policy": "reject"}).oov_policy == "reject"
