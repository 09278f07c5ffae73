"""Synthetic world v2 (`data.synthetic_v2`) and the byte-identity of world v1."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from oneranker.config import ACTION_CLICK, ACTION_CONTENT_VIEW, ACTION_CONVERSION, ConfigError, DataConfig, preset
from oneranker.data import make_splits, make_synthetic, popularity_scores, training_rows_mask
from oneranker.data.synthetic_v2 import _CONTEXT_RATIO, _QUALITY_RATIO, _SCALE, _TEMP, WorldV2, interest_term


def fingerprint(arrays) -> str:
    """sha256 prefix of arrays; floats at 6 significant digits (robust to last-ulp libm changes)."""
    m = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a)
        if a.dtype.kind == "f":
            a = np.char.mod("%.5e", a.astype(np.float64))
        m.update(str(a.shape).encode())
        m.update(np.ascontiguousarray(a).tobytes())
    return m.hexdigest()[:16]


# Fingerprints of the tiny preset's v1 dataset, ground truth, leave-last-out splits and training
# mask, computed with the code before world v2 and the time-cutoff split existed.
GOLDEN_V1 = {
    "dataset": "6a2614107d758160",
    "gt": "055ef932138c5e8f",
    "train": "7a553e7a7158e88b",
    "valid": "9bcc1b7ba90bffb4",
    "test": "73a09d6317dbebf0",
    "mask": "92767d9000e89fa9",
}


def v1_fingerprints(cfg: DataConfig) -> dict[str, str]:
    ds = make_synthetic(cfg)
    log, cat = ds.log, ds.catalog
    out = {
        "dataset": fingerprint(
            [log.user, log.item, log.action, log.timestamp, log.profile, ds.context]
            + [cat.ad_bid, cat.ad_price, cat.ad_category, cat.ad_advertiser]
        )
    }
    u, a = np.arange(300).repeat(2)[:400], np.arange(400) % 200
    out["gt"] = fingerprint([ds.ground_truth.pctr(u, a), ds.ground_truth.pcvr(u, a)])
    sp = make_splits(ds, cfg, num_task_tokens=8, seed=0)
    for name in ("train", "valid", "test"):
        out[name] = fingerprint(list(sp[name].__dict__.values()))
    out["mask"] = fingerprint([training_rows_mask(ds), popularity_scores(ds)])
    return out


def test_v1_is_byte_identical_to_before():
    """Default config (world v1, leave-last-out) and the explicit spelling reproduce the old output."""
    cfg = preset("tiny").data
    assert cfg.world == "v1" and cfg.split == "leave_last_out"
    assert v1_fingerprints(cfg) == GOLDEN_V1
    explicit = dataclasses.replace(cfg, world="v1", split="leave_last_out", split_cutoff_quantile=0.5)
    assert v1_fingerprints(explicit) == GOLDEN_V1


SIZES = dict(num_users=800, num_ads=1500, seed=3)


@pytest.fixture(scope="module")
def v2():
    ds = make_synthetic(DataConfig(world="v2", **SIZES))
    return ds, dict(make_synthetic.last_stats)


@pytest.fixture(scope="module")
def v1():
    return make_synthetic(DataConfig(world="v1", **SIZES))


def _world(ds) -> WorldV2:
    world = ds.ground_truth.pctr.__self__
    assert isinstance(world, WorldV2)
    return world


def _max_category_z(x: np.ndarray, cat: np.ndarray) -> float:
    """Largest |category mean - overall mean| in standard errors (~N(0, 1) each without an effect)."""
    z = [(x[cat == g].mean() - x.mean()) / (x.std() / np.sqrt((cat == g).sum())) for g in np.unique(cat)]
    return float(np.abs(z).max())


def test_v2_deterministic_and_differs_from_v1(v2, v1):
    ds, _ = v2
    again = make_synthetic(DataConfig(world="v2", **SIZES))
    for a, b in [
        (ds.log.item, again.log.item),
        (ds.log.action, again.log.action),
        (ds.catalog.ad_bid, again.catalog.ad_bid),
    ]:
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(ds.catalog.ad_bid, v1.catalog.ad_bid)


def test_v2_effect_sizes(v2):
    ds, stats = v2
    w = _world(ds)
    rng = np.random.default_rng(0)
    u, a = rng.integers(SIZES["num_users"], size=50_000), rng.integers(SIZES["num_ads"], size=50_000)
    sigma_i = interest_term(w.interests[u], w.ad_latent[a]).std()
    assert stats["interest_std"] == pytest.approx(sigma_i, rel=0.05)
    assert w.ad_quality.std() == pytest.approx(_QUALITY_RATIO * sigma_i, rel=0.1)
    assert stats["context_std"] == pytest.approx(_CONTEXT_RATIO * stats["interest_std"], rel=1e-6)
    # context table: no category main effect (zero mean over hours for every category)
    np.testing.assert_allclose((w.bucket_weight[:, None] * w.table).sum(0), 0.0, atol=1e-9)


def test_v2_quality_is_invisible_to_latents_categories_and_exposure(v2, v1):
    """Quality is independent of the ad latent and category, and the logging policy ignores it
    (v1's exposure follows quality: the contrast shows the check can fail)."""
    ds, _ = v2
    w = _world(ds)
    q = w.ad_quality.astype(np.float64)
    X = np.column_stack([np.ones(q.size), w.ad_latent])
    resid = q - X @ np.linalg.lstsq(X, q, rcond=None)[0]
    assert 1 - resid.var() / q.var() < 0.05  # R^2 of quality on the 16-d latent (chance ~ 0.01)
    assert _max_category_z(q, ds.catalog.ad_category) < 4.5

    def exposure_corr(d):
        log = d.log
        shown = np.bincount(log.item[log.action != ACTION_CONTENT_VIEW], minlength=d.catalog.num_ads)
        wq = d.ground_truth.pctr.__self__.ad_quality
        return np.corrcoef(wq, np.log1p(shown))[0, 1]

    assert abs(exposure_corr(ds)) < 0.08
    assert exposure_corr(v1) > 0.2


def test_v2_bids_independent_of_interest_and_quality(v2):
    ds, _ = v2
    w = _world(ds)
    log_bid = np.log(ds.catalog.ad_bid.astype(np.float64))
    assert abs(np.corrcoef(log_bid, w.ad_quality)[0, 1]) < 0.08
    users = np.arange(0, SIZES["num_users"], 4)
    A = SIZES["num_ads"]
    mean_interest = interest_term(w.interests[np.repeat(users, A)], w.ad_latent[np.tile(np.arange(A), users.size)])
    mean_interest = mean_interest.reshape(users.size, A).mean(0)  # how much the user base likes each ad
    assert abs(np.corrcoef(log_bid, mean_interest)[0, 1]) < 0.08
    assert _max_category_z(log_bid, ds.catalog.ad_category) < 4.5


def test_v1_bids_follow_category(v1):
    """Contrast for the check above: v1 prices (hence bids) have a category level."""
    assert _max_category_z(np.log(v1.catalog.ad_bid.astype(np.float64)), v1.catalog.ad_category) > 10


def test_v2_soft_interest_match():
    """Log-mean-exp over interests: between the mean and the max; two matching interests beat one."""
    d = 4
    e = np.eye(d, dtype=np.float32)
    one = np.stack([e[0], e[2], e[3]])  # one interest matches the ad
    two = np.stack([e[0], e[0], e[3]])  # two interests match it
    ad = e[0]
    i_one, i_two = interest_term(np.stack([one, two]), np.stack([ad, ad]))
    assert i_two > i_one
    assert i_one < _SCALE * 1.0 and i_one > _SCALE * (1.0 - _TEMP * np.log(3))


def test_v2_context_is_the_hour_and_drives_clicks(v2):
    ds, _ = v2
    log, w = ds.log, _world(ds)
    np.testing.assert_array_equal(ds.context[:, 0], (log.timestamp // 3600) % 24)
    ad = np.flatnonzero(log.action != ACTION_CONTENT_VIEW)
    clicked = np.isin(log.action[ad], (ACTION_CLICK, ACTION_CONVERSION))
    cat = ds.catalog.ad_category[log.item[ad]]
    hour = ds.context[ad, 0]
    shift = w.table[hour, cat]
    gap = shift[clicked].mean() - shift[~clicked].mean()
    placebo = w.table[(hour + 12) % 24, cat]
    assert gap > 0.08  # clicks happen where the hour favours the ad's category
    assert gap > placebo[clicked].mean() - placebo[~clicked].mean() + 0.08


def test_v2_ground_truth_reads_context(v2):
    ds, _ = v2
    gt, cat = ds.ground_truth, ds.catalog
    rng = np.random.default_rng(1)
    u, a = rng.integers(SIZES["num_users"], size=2000), rng.integers(SIZES["num_ads"], size=2000)
    by_hour = np.stack([gt.pctr(u, a, np.full(u.size, h)) for h in range(24)])
    assert (by_hour.max(0) / by_hour.min(0)).mean() > 1.2
    np.testing.assert_allclose(gt.pctr(u, a), by_hour.mean(0), rtol=1e-9)  # no context: mean over hours
    ctx = rng.integers(24, size=(u.size, 1))
    np.testing.assert_allclose(gt.pctr(u, a, ctx), gt.pctr(u, a, ctx[:, 0]))
    ecpm = gt.expected_ecpm(u, a, cat, ctx)
    np.testing.assert_allclose(ecpm, cat.ad_bid[a] * gt.pctr(u, a, ctx) * gt.pcvr(u, a))
    sv = gt.slate_value(int(u[0]), a[:5], cat, ctx[0])
    one = np.full(5, u[0])
    np.testing.assert_allclose(
        sv["gmv"], (cat.ad_price[a[:5]] * gt.pctr(one, a[:5], np.full(5, ctx[0, 0])) * gt.pcvr(one, a[:5])).sum()
    )


def test_v2_split_values_use_the_request_context(v2):
    ds, _ = v2
    s = make_splits(ds, DataConfig(world="v2", **SIZES), seed=0)["test"]
    n = s.candidates.shape[1]
    u, c = np.repeat(s.user, n), np.repeat(s.context, n, axis=0)
    e = ds.ground_truth.expected_ecpm(u, s.candidates.ravel(), ds.catalog, c).reshape(s.candidates.shape)
    np.testing.assert_allclose(s.candidate_ecpm, e, rtol=1e-5)
    marginal = ds.ground_truth.expected_ecpm(u, s.candidates.ravel(), ds.catalog).reshape(s.candidates.shape)
    assert not np.allclose(s.candidate_ecpm, marginal, rtol=1e-3)


def test_v1_ground_truth_ignores_context(v1):
    gt = v1.ground_truth
    u, a = np.arange(50), np.arange(50)
    np.testing.assert_array_equal(gt.pctr(u, a), gt.pctr(u, a, np.full((50, 1), 7)))


def test_world_config_checks():
    bad = preset("tiny")
    bad.data.world = "v3"
    with pytest.raises(ConfigError, match="data.world"):
        bad.validate()
    with pytest.raises(ConfigError, match="data.world"):
        make_synthetic(bad.data)
    no_ctx = preset("tiny")
    no_ctx.data.world, no_ctx.data.num_context_features = "v2", 0
    with pytest.raises(ConfigError, match="num_context_features"):
        no_ctx.validate()
    with pytest.raises(ConfigError, match="num_context_features"):
        make_synthetic(no_ctx.data)
