"""Headroom of a world (`data.headroom`): hand-built worlds with a known answer, a brute-force
reference, monotonicity in the candidate count, and the CLI."""

from __future__ import annotations

import numpy as np
import pytest

import oneranker.data.headroom as hr
from oneranker.data.schema import Catalog, Dataset, EventLog, GroundTruth


def _world(pctr: np.ndarray, price: np.ndarray, bid: np.ndarray | None = None, ctx_gain=None) -> Dataset:
    """A Dataset whose ground truth is the table pctr [U, A] (times ctx_gain[context] when given),
    pCVR = 1, price [A], bid [A] (default = price, so eCPM and GMV order ads alike)."""
    U, A = pctr.shape
    bid = price if bid is None else bid

    def f_pctr(users, ads, context=None):
        p = pctr[users, ads]
        if ctx_gain is not None and context is not None:
            c = np.asarray(context)
            p = p * ctx_gain[c[:, 0] if c.ndim == 2 else c, ads]
        return p

    cat = Catalog(
        ad_ids=np.arange(A),
        ad_advertiser=np.zeros(A, np.int64),
        ad_category=np.zeros(A, np.int64),
        ad_bid=bid.astype(np.float32),
        ad_price=price.astype(np.float32),
        content_ids=np.arange(1),
        num_advertisers=1,
        num_categories=1,
    )
    log = EventLog(
        user=np.zeros(0, np.int64),
        item=np.zeros(0, np.int64),
        action=np.zeros(0, np.int64),
        timestamp=np.zeros(0, np.int64),
        profile=np.zeros((U, 1), np.int64),
        num_users=U,
    )
    gt = GroundTruth(pctr=f_pctr, pcvr=lambda users, ads: np.ones(np.shape(users)))
    return Dataset(name="toy", catalog=cat, log=log, ground_truth=gt)


def _reference(ds: Dataset, user: int, n: int, slate: int, context=None, value="gmv") -> float:
    """Per-user headroom by sorting, one user at a time (no chunking, no argpartition)."""
    A = ds.catalog.num_ads
    ads = np.arange(A)
    users = np.full(A, user)
    ctx = None if context is None else np.full(A, context)
    p = ds.ground_truth.pctr(users, ads, ctx) * ds.ground_truth.pcvr(users, ads)
    e = ds.catalog.ad_bid * p
    v = (ds.catalog.ad_price if value == "gmv" else ds.catalog.ad_bid) * p
    v_all = v[np.argsort(-e, kind="stable")[:slate]].sum()
    cand = np.argsort(-ds.ground_truth.pctr(users, ads, ctx), kind="stable")[:n]
    v_cand = v[cand[np.argsort(-e[cand], kind="stable")[:slate]]].sum()
    return 100 * (v_all - v_cand) / v_all


def test_zero_when_top_pctr_ads_are_the_valuable_ones():
    U, A = 5, 40
    rng = np.random.default_rng(0)
    order = np.stack([rng.permutation(A) for _ in range(U)])
    pctr = np.empty((U, A))
    np.put_along_axis(pctr, order, np.linspace(0.5, 0.01, A)[None, :].repeat(U, 0), axis=1)
    price = np.ones(A)  # GMV and eCPM follow pCTR exactly
    ds = _world(pctr, price)
    assert hr.headroom_pct(ds, np.arange(U), num_candidates=10, slate=10) == pytest.approx(0.0, abs=1e-9)
    assert hr.headroom_pct(ds, np.arange(U), num_candidates=3, slate=3) == pytest.approx(0.0, abs=1e-9)


def test_large_when_value_lives_in_low_pctr_ads():
    A = 40
    pctr = np.linspace(0.5, 0.05, A)[None, :]  # ad 0 most clicked
    price = np.where(np.arange(A) >= 30, 100.0, 1.0)  # the 10 least clicked ads sell 100x dearer
    ds = _world(pctr, price)
    h = hr.headroom_pct(ds, np.array([0]), num_candidates=10, slate=10)
    # oracle slate = ads 30..39 (GMV ~ 100 x 0.08 each), candidate slate = ads 0..9 (~0.45 each): ~94%
    assert h > 90
    assert h == pytest.approx(_reference(ds, 0, 10, 10))


def test_weakly_decreasing_in_num_candidates():
    rng = np.random.default_rng(1)
    U, A = 30, 200
    pctr = rng.beta(1, 8, size=(U, A))
    price = np.exp(rng.normal(3, 1, size=A))
    ds = _world(pctr, price)  # bid = price: GMV ordered like eCPM
    users = np.arange(U)
    ns = [1, 5, 10, 20, 50, 100, 199, A]
    hs = [hr.headroom_pct(ds, users, n, slate=10) for n in ns]
    assert all(a >= b - 1e-9 for a, b in zip(hs, hs[1:])), hs
    assert hs[0] > hs[3] > 0 and hs[-1] == pytest.approx(0.0, abs=1e-9)
    # eCPM headroom with bids unrelated to price: also monotone, and >= 0 per user
    ds2 = _world(pctr, price, bid=np.exp(rng.normal(0, 1, size=A)))
    per = [hr.headroom_per_user(ds2, users, n, slate=10, value="ecpm") for n in ns]
    assert all((a >= b - 1e-9).all() for a, b in zip(per, per[1:]))
    assert (per[0] >= 0).all()


def test_matches_reference_with_chunks_and_context(monkeypatch):
    rng = np.random.default_rng(2)
    U, A = 23, 57
    pctr = rng.beta(1, 6, size=(U, A))
    gain = rng.uniform(0.2, 2.0, size=(24, A))
    ds = _world(pctr, np.exp(rng.normal(3, 1, size=A)), bid=np.exp(rng.normal(0, 1, size=A)), ctx_gain=gain)
    monkeypatch.setattr(hr, "_PAIRS_PER_CHUNK", 3 * A)  # 3 users per chunk: 8 chunks, the last short
    users = rng.integers(U, size=20)
    context = rng.integers(24, size=(20, 1))
    for value in ("gmv", "ecpm"):
        got = hr.headroom_per_user(ds, users, 12, slate=5, context=context, value=value)
        ref = [_reference(ds, u, 12, 5, context=c, value=value) for u, c in zip(users, context[:, 0])]
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)
    # the context changes the answer (it enters pCTR)
    assert not np.allclose(
        hr.headroom_per_user(ds, users, 12, 5, context=context), hr.headroom_per_user(ds, users, 12, 5)
    )


def test_rejects_bad_input():
    ds = _world(np.full((2, 5), 0.1), np.ones(5))
    with pytest.raises(ValueError, match="value"):
        hr.headroom_pct(ds, np.array([0]), 2, value="clicks")
    with pytest.raises(ValueError, match="num_candidates"):
        hr.headroom_pct(ds, np.array([0]), 0)
    ds.ground_truth = None
    with pytest.raises(ValueError, match="ground truth"):
        hr.headroom_pct(ds, np.array([0]), 2)


def test_cli_small_world(capsys):
    res = hr.main(["--world", "v2", "--users", "300", "--ads", "400", "--candidates", "20", "--json"])
    assert res["test_users"] == 300 and res["num_candidates"] == 20
    assert res["world_stats"]["world"] == "v2" and res["world_stats"]["quality_ratio"] == 0.5
    assert np.isfinite(res["headroom_gmv_pct"]) and 0 < res["headroom_ecpm_pct"] < 100
    assert '"headroom_gmv_pct"' in capsys.readouterr().out
