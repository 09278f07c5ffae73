"""The evaluation study: statistics on hand cases and the cascade baseline (the CI smoke run of the
resumable study: test_study_runs.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from oneranker import study
from oneranker.study import (
    auc_per_user,
    bootstrap_ci,
    paper_orderings,
    pooled_auc,
    protocol_metrics,
    rank_agreement,
    verdict,
)

# ------------------------------------------------------------------ statistics (hand cases)


def test_bootstrap_ci_constant_is_exact():
    point, lo, hi = bootstrap_ci(np.full(50, 0.25))
    assert point == lo == hi == 0.25


def test_bootstrap_ci_half_ones_matches_normal_approximation():
    values = np.array([0.0, 1.0] * 200)  # mean 0.5, sd 0.5, n = 400 -> +-1.96 * 0.025 = +-0.049
    point, lo, hi = bootstrap_ci(values, n_boot=1000, seed=0)
    assert point == 0.5
    assert lo == pytest.approx(0.5 - 0.049, abs=0.012)
    assert hi == pytest.approx(0.5 + 0.049, abs=0.012)
    assert bootstrap_ci(values, seed=0) == bootstrap_ci(values, seed=0)  # deterministic


def test_bootstrap_ci_averages_seeds_per_user_and_pairs_differences():
    per_seed = np.array([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])  # [seeds, users]
    point, _, _ = bootstrap_ci(per_seed)
    assert point == pytest.approx(per_seed.mean())
    a = np.arange(100, dtype=float)
    b = a - 1.0  # a beats b by exactly 1 for every user: a paired CI has zero width
    assert bootstrap_ci(a - b) == (1.0, 1.0, 1.0)
    assert bootstrap_ci(a - b)[1] > 0 and verdict(*bootstrap_ci(a - b)[1:], 1.0) == "reproduced"


def test_bootstrap_lift_is_ratio_of_means():
    base = np.linspace(1, 2, 60)
    point, lo, hi = bootstrap_ci(1.1 * base, ratio_to=base)
    assert point == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)


def test_verdicts():
    assert verdict(0.01, 0.02, 0.015) == "reproduced"
    assert verdict(-0.02, -0.01, -0.015) == "reversed"
    assert verdict(-0.01, 0.02, 0.005) == "n.s. (same sign)"
    assert verdict(-0.02, 0.01, -0.005) == "n.s. (opposite sign)"


def test_rank_agreement_hand_case():
    gen = np.array([[3.0, 2.0, 1.0, 0.0]])  # generation ranks: 0 1 2 3
    rank = np.array([[0.0, 1.0, 2.0, 3.0]])  # ranking ranks:    3 2 1 0
    out = rank_agreement(gen, rank)
    np.testing.assert_array_equal(out["abs_diff"], [[3, 1, 1, 3]])
    np.testing.assert_allclose(out["overlap"], [[0.0, 0.0, 2 / 3, 1.0]])
    same = rank_agreement(gen, gen * 10 + 1)  # any monotone transform agrees perfectly
    assert same["abs_diff"].sum() == 0 and np.all(same["overlap"] == 1.0)
    partial = rank_agreement(np.array([[4.0, 3.0, 2.0, 1.0]]), np.array([[3.0, 4.0, 1.0, 2.0]]), ks=[1, 2])
    np.testing.assert_array_equal(partial["abs_diff"], [[1, 1, 1, 1]])
    np.testing.assert_allclose(partial["overlap"], [[0.0, 1.0]])


def test_iqr_difference_hand_case():
    from oneranker.study import iqr, iqr_diff_ci

    assert iqr(np.arange(5.0)) == 2.0  # quartiles 1 and 3
    wide = np.tile(np.arange(9.0), (1, 40, 1))  # [seeds=1, users=40, n=9], IQR 4
    narrow = wide // 2  # IQR 2 (values 0..4)
    assert iqr_diff_ci(wide, wide) == (0.0, 0.0, 0.0)
    point, lo, hi = iqr_diff_ci(narrow, wide, n_boot=100)
    assert point == lo == hi == -2.0  # every user is identical: the CI has zero width


def test_auc_hand_case():
    scores = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0], [1.0, 1.0, 0.0]])
    np.testing.assert_allclose(auc_per_user(scores), [1.0, 0.0, 0.75])  # ties count 1/2
    # pooled over all (user, candidate) pairs: every positive against every negative of any user
    pos, neg = scores[:, 0], scores[:, 1:].reshape(-1)
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert pooled_auc(scores) == pytest.approx(brute)


def test_paper_orderings_cover_tables_2_and_3():
    pairs = paper_orderings()
    assert len([p for p in pairs if p[2] == "T2"]) == 21 and len([p for p in pairs if p[2] == "T3"]) == 3
    for a, b, _ in pairs:  # the paper's HR@5 orders every pair
        assert study.PAPER[a]["HR@5"] > study.PAPER[b]["HR@5"]


def test_protocol_metrics_agree_with_evaluate(tiny_prep):
    from oneranker.evaluate import ranking_metrics, slate_value

    test = tiny_prep.splits["test"]
    scores = np.random.default_rng(0).normal(size=test.candidates.shape)
    scores[:5, 1] = scores[:5, 0]  # a few ties (counted against the target)
    per_user = protocol_metrics(scores, test, price=None)
    ref = ranking_metrics(scores, test.candidate_ecpm)
    ref.update(slate_value(scores, test.candidate_ecpm, test.candidate_gmv))
    for name, value in ref.items():
        key = name.replace("GMV@", "eGMV@") if name.startswith("GMV") else name
        assert per_user[key].mean() == pytest.approx(value), name
    assert per_user["GAUC"].shape == (len(test),)


# ------------------------------------------------------------------ cascade


@pytest.fixture(scope="module")
def cascade_run(tiny_cascade):
    return tiny_cascade


def test_cascade_trains_two_independent_runs(cascade_run):
    from oneranker.checkpoint import load_run

    for half, losses in (("generator", {"mtp"}), ("ranker", {"rank"})):
        run_dir = cascade_run.run_dir / half
        assert (run_dir / "manifest.json").exists() and (run_dir / "model.safetensors").exists()
        summary = getattr(cascade_run, half)["summary"]
        assert set(summary["last_loss"]) - {"total"} == losses, summary["last_loss"]
    gcfg, _, _, gman = load_run(cascade_run.generator_dir)
    rcfg, _, _, rman = load_run(cascade_run.ranker_dir)
    assert not gcfg.model.use_ranker and gcfg.model.use_generation
    assert not rcfg.model.use_generation and rcfg.model.use_ranker
    assert gman["sid_version"] == rman["sid_version"]
    meta = json.loads((cascade_run.run_dir / "cascade.json").read_text())
    assert meta["generator"] == "generator" and meta["ranker"] == "ranker"


def test_cascade_ranker_reencodes_history_without_h2(cascade_run, tiny_prep):
    from oneranker.pipeline import sample_arrays, to_batch

    ranker = cascade_run.ranker["model"]
    generator = cascade_run.generator["model"]
    arrays = sample_arrays(tiny_prep, tiny_prep.splits["test"])
    batch = to_batch(arrays, np.arange(6), tiny_prep.cfg.serve.length_buckets)
    args = [batch[k] for k in ("user_features", "hist_sids", "hist_actions", "hist_dt", "hist_len")]
    with torch.no_grad():
        enc = ranker.encode_user(*args)
        genc = generator.encode_user(*args)
    t2 = ranker.cfg.num_step2_tokens
    n = ranker.num_prefix + batch["hist_sids"].shape[1]
    assert enc.kv_valid.shape[1] == n + t2
    assert not enc.kv_valid[:, n:].any()  # the Step-2 (H2) segment is masked out of its K/V
    lengths = ranker.num_prefix + batch["hist_len"]
    for row in range(6):  # its own H1 (the re-encoded history) is visible
        assert enc.kv_valid[row, : int(lengths[row])].all()
        assert not enc.kv_valid[row, int(lengths[row]) : n].any()
    assert not torch.allclose(enc.h1, genc.h1)  # a separate G-Decoder, not the generator's
    np.testing.assert_array_equal(
        ranker.kv_valid_from_lengths(batch["hist_len"], enc.kv.shape[2]).numpy(), enc.kv_valid.numpy()
    )
    # its scores do not depend on H2: scrambling the H2 part of the K/V changes nothing
    cand = [batch[k] for k in ("cand_sids", "cand_attrs", "cand_bid")]
    kv = enc.kv.clone()
    kv[:, :, n:] = torch.randn_like(kv[:, :, n:])
    with torch.no_grad():
        torch.testing.assert_close(ranker.rank(kv, enc.kv_valid, *cand), ranker.rank(enc.kv, enc.kv_valid, *cand))


def test_cascade_recommender_matches_the_study_path(cascade_run, tiny_prep):
    from oneranker.cascade import load_cascade
    from oneranker.cli import example_request

    rec = load_cascade(cascade_run.run_dir)
    direct = study.full_catalogue(cascade_run.generator["model"], cascade_run.ranker["model"], tiny_prep)
    n = max(tiny_prep.cfg.serve.num_candidates, max(study.GEN_KS))
    for row in (0, 7, 42):
        req = example_request(tiny_prep, row)
        req.top_k, req.num_candidates = study.SLATE_K, n
        out = rec.recommend([req])[0]
        ads = tiny_prep.tables.ad_index(out.item_ids)
        np.testing.assert_array_equal(ads, direct["slate"][row])
        assert set(direct["slate"][row]) <= set(direct["candidates"][row])
