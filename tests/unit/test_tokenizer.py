"""Semantic IDs: bijection, trie decoding, fake-item features, persistence (tiny preset)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from oneranker.config import ACTION_CLICK, ACTION_CONVERSION
from oneranker.data import training_rows_mask
from oneranker.tokenizer import (
    SemanticIds,
    assign_suffixes,
    build_trie,
    cap_last_level,
    fit_semantic_ids,
    item_embeddings,
    kmeans,
    trie_decode,
)


@pytest.fixture(scope="module")
def cfg(tiny_cfg):
    return tiny_cfg


@pytest.fixture(scope="module")
def ds(tiny_prep):
    return tiny_prep.dataset


@pytest.fixture(scope="module")
def sids(tiny_prep):
    return tiny_prep.sids  # fit_semantic_ids(ds, cfg.tokenizer), fitted once per session


def _all_codes(s: SemanticIds) -> np.ndarray:
    return np.concatenate([s.ad_codes, s.content_codes], axis=0)


def test_shapes_and_ranges(sids, ds, cfg):
    t = cfg.tokenizer
    A, C, D, k = ds.catalog.num_ads, ds.catalog.num_contents, t.sid_depth, t.num_fake_items
    assert sids.ad_codes.shape == (A, D) and sids.ad_codes.dtype == np.int64
    assert sids.content_codes.shape == (C, D) and sids.content_codes.dtype == np.int64
    assert sids.embeddings.shape == (A + C, t.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(sids.embeddings, axis=1), 1.0, rtol=1e-5)
    assert sids.codebooks.shape == (t.num_levels, t.codebook_size, t.embedding_dim)
    assert sids.centroids.shape == (k, t.embedding_dim)
    assert sids.ad_centroid_cos.shape == (A, k)
    assert np.abs(sids.ad_centroid_cos).max() <= 1.0 + 1e-5
    assert sids.level_code_features.shape == (D, t.max_codes, k)
    codes = _all_codes(sids)
    assert codes[:, : t.num_levels].max() < t.codebook_size and codes.min() >= 0
    assert codes[:, t.num_levels].max() < t.max_collisions
    assert len(sids.trie_children) == D
    for table in sids.trie_children:
        assert table.dtype == np.int32 and table.shape[1] == t.max_codes


def test_every_item_has_a_unique_path(sids):
    codes = _all_codes(sids)
    assert np.unique(codes, axis=0).shape[0] == codes.shape[0]
    # the suffix numbers items sharing a prefix 0..n-1 (ads first, item order)
    L = sids.config.num_levels
    _, inv, counts = np.unique(codes[:, :L], axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    for g in np.flatnonzero(counts > 1)[:20]:
        members = np.flatnonzero(inv == g)
        np.testing.assert_array_equal(codes[members, L], np.arange(members.size))


def test_trie_decodes_every_ad(sids):
    np.testing.assert_array_equal(sids.decode_path(sids.ad_codes), np.arange(sids.num_ads))
    # batched, higher-rank input
    batch = sids.ad_codes[np.array([[3, 1], [0, 2]])]
    np.testing.assert_array_equal(sids.decode_path(batch), [[3, 1], [0, 2]])


def test_trie_rejects_contents_and_invalid_paths(sids, cfg):
    assert (sids.decode_path(sids.content_codes) == -1).all()
    rng = np.random.default_rng(0)
    D, M = cfg.tokenizer.sid_depth, cfg.tokenizer.max_codes
    rand = rng.integers(0, M, size=(2000, D))
    ad_set = {tuple(r) for r in sids.ad_codes.tolist()}
    decoded = sids.decode_path(rand)
    for r, a in zip(rand.tolist(), decoded.tolist()):
        if tuple(r) in ad_set:
            assert sids.ad_codes[a].tolist() == r
        else:
            assert a == -1
    assert (decoded == -1).mean() > 0.5
    assert (sids.decode_path(np.array([[-1] * D, [M] * D])) == -1).all()


def test_trie_structure(sids):
    ch = sids.trie_children
    assert ch[0].shape[0] == 1  # one root
    for level in range(len(ch) - 1):
        used = ch[level][ch[level] >= 0]
        # every node of the next level has exactly one parent entry, ids dense from 0
        np.testing.assert_array_equal(np.sort(used), np.arange(ch[level + 1].shape[0]))
        # every node has at least one allowed child
        assert ((ch[level] >= 0).sum(1) >= 1).all()
    last = ch[-1][ch[-1] >= 0]
    np.testing.assert_array_equal(np.sort(last), np.arange(sids.num_ads))
    # the allowed first codes are exactly the first codes of ads
    np.testing.assert_array_equal(np.flatnonzero(ch[0][0] >= 0), np.unique(sids.ad_codes[:, 0]))


def test_report(sids, ds, cfg):
    r = sids.report()
    assert 0.0 <= r["collision_rate"] <= 1.0
    assert all(0.0 <= u <= 1.0 for u in r["codebook_utilisation"])
    assert len(r["codebook_utilisation"]) == cfg.tokenizer.num_levels
    assert r["num_items"] == ds.catalog.num_ads + ds.catalog.num_contents
    assert r["max_suffix"] == int(_all_codes(sids)[:, -1].max())
    codes = _all_codes(sids)
    L = cfg.tokenizer.num_levels
    _, inv, counts = np.unique(codes[:, :L], axis=0, return_inverse=True, return_counts=True)
    assert r["collision_rate"] == pytest.approx((counts[inv.reshape(-1)] > 1).mean())
    json.dumps(r)  # serialisable


def test_level_code_features_are_means(sids, cfg):
    D, k = cfg.tokenizer.sid_depth, cfg.tokenizer.num_fake_items
    for level in range(D):
        for c in range(cfg.tokenizer.max_codes):
            members = sids.ad_codes[:, level] == c
            expect = sids.ad_centroid_cos[members].mean(0) if members.any() else np.zeros(k)
            np.testing.assert_allclose(sids.level_code_features[level, c], expect, atol=1e-5)
    emb = sids.embeddings[: sids.num_ads]
    cent = sids.centroids / np.linalg.norm(sids.centroids, axis=1, keepdims=True)
    np.testing.assert_allclose(sids.ad_centroid_cos, emb @ cent.T, atol=1e-5)


def test_embeddings_capture_categories(sids, ds):
    """The collaborative embedding must recover the marketplace's category structure."""
    cat = ds.catalog.ad_category
    e = sids.embeddings[: sids.num_ads]
    sim = e @ e.T
    same = cat[:, None] == cat[None, :]
    np.fill_diagonal(same, False)
    diff = cat[:, None] != cat[None, :]
    assert sim[same].mean() > sim[diff].mean() + 0.3
    assert sids.report()["level0_category_purity_ads"] > 0.6


def test_embeddings_use_training_rows_only(ds, cfg):
    """Moving the valid/test events to other items must not change the embeddings."""
    mask = training_rows_mask(ds)
    log = ds.log
    item2 = log.item.copy()
    held = ~mask & (log.action != 1)
    item2[held] = (item2[held] + 17) % ds.catalog.num_ads
    ds2 = dataclasses.replace(ds, log=dataclasses.replace(log, item=item2))
    e1, _ = item_embeddings(ds, cfg.tokenizer)
    e2, _ = item_embeddings(ds2, cfg.tokenizer)
    np.testing.assert_array_equal(e1, e2)
    # ... while changing a training event does change them
    item3 = log.item.copy()
    tr = np.flatnonzero(mask & (log.action != 1))[:50]
    item3[tr] = (item3[tr] + 17) % ds.catalog.num_ads
    e3, _ = item_embeddings(dataclasses.replace(ds, log=dataclasses.replace(log, item=item3)), cfg.tokenizer)
    assert not np.array_equal(e1, e3)


def test_deterministic(ds, cfg, sids):
    again = fit_semantic_ids(ds, cfg.tokenizer)
    assert again.version == sids.version
    other = fit_semantic_ids(ds, dataclasses.replace(cfg.tokenizer, seed=cfg.tokenizer.seed + 1))
    assert other.version != sids.version


def test_save_load_round_trip(sids, tmp_path):
    sids.save(tmp_path / "sids")
    assert not list((tmp_path / "sids").glob("*.pkl"))
    back = SemanticIds.load(tmp_path / "sids")
    assert back.version == sids.version == back.compute_version()
    assert len(sids.version) == 16
    for name, arr in sids.arrays().items():
        other = back.arrays()[name]
        assert other.dtype == arr.dtype
        np.testing.assert_array_equal(other, arr)
    assert back.config == sids.config
    assert back.report() == sids.report()
    np.testing.assert_array_equal(back.decode_path(sids.ad_codes), np.arange(sids.num_ads))
    meta = json.loads((tmp_path / "sids" / "meta.json").read_text())
    assert meta["version"] == sids.version


def test_load_detects_tampering(sids, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = sids.save(tmp_path / "sids")
    arrays = load_file(str(d / "semantic_ids.safetensors"))
    arrays["ad_codes"] = arrays["ad_codes"].copy()
    arrays["ad_codes"][0, -1] += 1
    save_file(arrays, str(d / "semantic_ids.safetensors"))
    with pytest.raises(ValueError, match="hash"):
        SemanticIds.load(d)


def test_max_collisions_error_on_constructed_prefixes():
    prefix = np.array([[0, 1], [0, 1], [2, 3], [0, 1], [2, 3]])
    np.testing.assert_array_equal(assign_suffixes(prefix, 3), [0, 1, 0, 2, 1])
    with pytest.raises(ValueError, match=r"tokenizer\.max_collisions.*3 items"):
        assign_suffixes(prefix, 2)


def test_max_collisions_error_in_fit(ds, cfg):
    # 2 codes, 1 level: 300 items share 2 prefixes; one suffix slot cannot hold them
    bad = dataclasses.replace(cfg.tokenizer, num_levels=1, codebook_size=2, max_collisions=1)
    with pytest.raises(ValueError, match=r"tokenizer\.max_collisions"):
        fit_semantic_ids(ds, bad)


def test_cap_last_level_moves_overflow_to_free_codes():
    rng = np.random.default_rng(0)
    n, k, cap = 40, 8, 6
    parent = np.repeat([0, 1], n // 2)
    dist = rng.random((n, k))
    dist[:, 0] = 0.0  # everyone wants code 0
    codes = np.zeros(n, dtype=np.int64)
    new, moved = cap_last_level(parent, dist, codes, cap)
    for p in (0, 1):
        counts = np.bincount(new[parent == p], minlength=k)
        assert counts.max() <= cap and counts[0] == cap
    assert moved == n - 2 * cap
    with pytest.raises(ValueError, match=r"tokenizer\.max_collisions"):
        cap_last_level(np.zeros(n, dtype=np.int64), dist, codes, 2)  # 40 > 8 * 2


def test_fit_never_exceeds_max_collisions(ds, cfg):
    t = dataclasses.replace(cfg.tokenizer, max_collisions=6)
    s = fit_semantic_ids(ds, t)
    assert s.report()["last_level_reassigned_items"] > 0
    assert _all_codes(s)[:, -1].max() <= 5
    assert np.unique(_all_codes(s), axis=0).shape[0] == s.num_ads + s.num_contents


def test_kmeans_recovers_separated_clusters():
    rng = np.random.default_rng(1)
    centers = np.array([[10.0, 0], [0, 10.0], [-10.0, 0], [0, -10.0]])
    x = np.concatenate([c + rng.normal(size=(50, 2)) for c in centers])
    found, assign = kmeans(x, 4, 20, np.random.default_rng(0))
    assert np.unique(assign).size == 4
    for g in range(4):
        assert np.unique(assign[g * 50 : (g + 1) * 50]).size == 1
    d = np.linalg.norm(found[:, None] - centers[None], axis=-1).min(1)
    assert d.max() < 1.0


def test_build_trie_and_decode_small_case():
    codes = np.array([[0, 1, 0], [0, 1, 1], [2, 0, 0]])
    trie = build_trie(codes, 4)
    assert [t.shape[0] for t in trie] == [1, 2, 2]
    np.testing.assert_array_equal(trie_decode(trie, codes), [0, 1, 2])
    np.testing.assert_array_equal(trie_decode(trie, np.array([[0, 1, 2], [1, 0, 0], [2, 0, 1]])), [-1, -1, -1])


def test_cold_items_get_unit_random_vectors(ds, cfg):
    """Items absent from the training rows still get unit embeddings and unique paths."""
    log = ds.log
    keep = log.item != 5  # drop every event of ad 5 ... and of content 5
    ds2 = dataclasses.replace(
        ds,
        log=dataclasses.replace(
            log, user=log.user[keep], item=log.item[keep], action=log.action[keep], timestamp=log.timestamp[keep]
        ),
        context=ds.context[keep],
    )
    pos = np.isin(ds2.log.action, (ACTION_CLICK, ACTION_CONVERSION))
    assert np.bincount(ds2.log.user[pos], minlength=ds2.log.num_users).min() >= 2
    emb, warm = item_embeddings(ds2, cfg.tokenizer)
    A = ds.catalog.num_ads
    assert not warm[5] and not warm[A + 5] and warm.sum() >= warm.size - 2
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    s = fit_semantic_ids(ds2, cfg.tokenizer)
    assert s.report()["num_cold_items"] == 2
    assert s.decode_path(s.ad_codes[5:6])[0] == 5


def test_sparse_and_dense_svd_paths_agree(monkeypatch):
    """Large catalogues use sparse products; they must match the dense path."""
    import oneranker.tokenizer as tok

    rng = np.random.default_rng(0)
    n = 300
    basis, _ = np.linalg.qr(rng.normal(size=(n, 8)))
    noise = rng.normal(size=(n, n)) * 0.01
    m = basis @ np.diag(np.arange(8, 0, -1) * 10.0) @ basis.T + noise + noise.T
    m[rng.random((n, n)) < 0.3] = 0.0  # holes: a genuinely sparse (rows, cols) list
    m = np.triu(m) + np.triu(m, 1).T
    rows, cols = np.nonzero(m)
    vals = m[rows, cols]
    u_dense, s_dense = tok._randomized_svd(rows, cols, vals, n, 8, np.random.default_rng(1))
    monkeypatch.setattr(tok, "_DENSE_MAX_ITEMS", 0)
    u_sparse, s_sparse = tok._randomized_svd(rows, cols, vals, n, 8, np.random.default_rng(1))
    np.testing.assert_allclose(s_sparse, s_dense, rtol=1e-8)
    np.testing.assert_allclose(np.abs(u_sparse.T @ u_dense), np.eye(8), atol=1e-6)
    exact = np.linalg.svd(m, compute_uv=False)[:8]
    np.testing.assert_allclose(s_dense[:6], exact[:6], rtol=1e-3)
