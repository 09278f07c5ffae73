"""The ranker's objective and data: two BPR pair families, per-step negatives, rotating cut points,
the OOV replacement (tiny preset)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from oneranker import losses
from oneranker.config import ACTION_CLICK, ACTION_CONVERSION, ACTION_IMPRESSION, LossConfig
from oneranker.data.negatives import NegativeSampler, session_ids
from oneranker.data.splits import split_target_rows, training_rows_mask
from oneranker.pipeline import EpochSampler, TrainBatcher, build_model, sample_arrays

# ----------------------------------------------------------------------------- BPR families


def _hand_batch():
    """Row 0: eCPM known, 4 candidates (3 engagement pairs, 6 value pairs: distinct values);
    row 1: eCPM unknown, 4 candidates (3 engagement pairs, no value pair)."""
    engaged = torch.tensor([[True, False, False, False], [True, False, False, False]])
    values = torch.tensor([[0.5, 0.9, 0.1, 0.3], [0.0, 0.0, 0.0, 0.0]])
    known = torch.tensor([True, False])
    return engaged, values, known


@pytest.mark.parametrize("weight", [LossConfig().engagement_pair_weight, 0.2])
def test_engagement_share_of_bpr_weight_equals_config(weight):
    engaged, values, known = _hand_batch()
    w = losses.bpr_pair_weights(engaged, values, known, weight)
    total = w["engagement"].sum() + w["value"].sum()
    assert float(w["engagement"].sum() / total) == pytest.approx(weight, abs=1e-6)
    # engagement pairs: exactly (positive, each non-engaged) in both rows, equal weight each
    eng = w["engagement"] > 0
    expect = torch.zeros(2, 4, 4, dtype=torch.bool)
    expect[:, 0, 1:] = True
    assert torch.equal(eng, expect)
    assert torch.allclose(w["engagement"][eng], torch.full((6,), weight / 6))
    # value pairs: only in the row whose eCPM is known, ordered by eCPM
    val = w["value"] > 0
    assert not val[1].any() and int(val[0].sum()) == 6
    for a in range(4):
        for b in range(4):
            assert bool(val[0, a, b]) == bool(values[0, a] > values[0, b])


def test_without_known_values_all_weight_is_engagement():
    engaged, values, known = _hand_batch()
    w = losses.bpr_pair_weights(engaged, values, torch.zeros_like(known), 0.3)
    assert w["value"].sum() == 0
    assert float(w["engagement"].sum()) == pytest.approx(1.0)


def test_loss_terms_use_configured_family_weight(tiny_cfg, tiny_prep):
    """The training loss is the configured mix: weight 1 is the engagement family alone, weight 0
    the value family alone (recomputed from the same scores)."""
    from oneranker.train import loss_terms

    cat = tiny_prep.dataset.catalog
    arrays = sample_arrays(tiny_prep, tiny_prep.splits["train"])
    batcher = TrainBatcher(tiny_prep, arrays, seed=0, oov_share=0.0, oov_code=0)
    batch = batcher(np.arange(8), step=3)
    torch.manual_seed(0)
    model = build_model(tiny_cfg, tiny_prep.sids, cat.num_advertisers, cat.num_categories)
    with torch.no_grad():
        scores = model(batch)["scores"]
    diff = scores.unsqueeze(2) - scores.unsqueeze(1)
    nls = -torch.nn.functional.logsigmoid(diff)
    eng = batch["cand_engaged"].unsqueeze(2) & ~batch["cand_engaged"].unsqueeze(1)
    val = batch["cand_values"].unsqueeze(2) > batch["cand_values"].unsqueeze(1)
    for weight, expect in ((1.0, nls[eng].mean()), (0.0, nls[val].mean())):
        cfg = copy.deepcopy(tiny_cfg)
        cfg.loss.engagement_pair_weight = weight
        with torch.no_grad():
            rank = loss_terms(model, batch, cfg, step=0)["rank"]
        assert float(rank) == pytest.approx(float(expect), rel=1e-5)


# ----------------------------------------------------------------------------- negatives


def _training_positives(ds) -> set[tuple[int, int]]:
    log = ds.log
    rows = np.flatnonzero(np.isin(log.action, (ACTION_CLICK, ACTION_CONVERSION)) & training_rows_mask(ds))
    return set(zip(log.user[rows].tolist(), log.item[rows].tolist()))


@pytest.fixture(scope="module")
def sampler(tiny_cfg, tiny_prep):
    return NegativeSampler(tiny_prep.dataset, tiny_cfg.data, seed=0)


def test_candidates_resampled_per_step_and_reproducible(sampler, tiny_prep):
    index = np.arange(len(tiny_prep.splits["train"]))
    a, again = sampler.draw(index, 5), sampler.draw(index, 5)
    np.testing.assert_array_equal(a, again)  # reproducible under the seed
    b = sampler.draw(index, 6)
    np.testing.assert_array_equal(a[:, 0], b[:, 0])  # the positive stays
    changed = (np.sort(a[:, 1:], 1) != np.sort(b[:, 1:], 1)).any(1)
    assert changed.mean() > 0.95  # a new draw at the next step
    other = NegativeSampler(tiny_prep.dataset, tiny_prep.cfg.data, seed=1).draw(index, 5)
    assert (np.sort(other[:, 1:], 1) != np.sort(a[:, 1:], 1)).any(1).mean() > 0.95


def test_candidates_never_hold_the_users_positives(sampler, tiny_prep, tiny_cfg):
    train = tiny_prep.splits["train"]
    positives = _training_positives(tiny_prep.dataset)
    index = np.arange(len(train))
    for step in (0, 1, 2):
        c = sampler.draw(index, step)
        assert c.shape == (len(train), tiny_cfg.data.num_train_candidates)
        np.testing.assert_array_equal(c[:, 0], train.target)
        assert (np.diff(np.sort(c, 1), axis=1) > 0).all()  # no duplicates
        for u, row in zip(train.user.tolist(), c[:, 1:].tolist()):
            assert not any((u, a) in positives for a in row), u
    # the users do have positives among the catalogue (the exclusion is not vacuous)
    assert len(positives) > 2 * len(np.unique(train.user))


def test_hard_negatives_are_unengaged_impressions_of_the_session(sampler, tiny_prep, tiny_cfg):
    ds, log = tiny_prep.dataset, tiny_prep.dataset.log
    rows = split_target_rows(ds, tiny_cfg.data)["train"][0]
    session = session_ids(ds, tiny_cfg.data.session_gap_seconds)
    mask = training_rows_mask(ds)
    positives = _training_positives(ds)
    for i in range(0, len(rows), 37):
        r = rows[i]
        same = np.flatnonzero((session == session[r]) & mask & (log.action == ACTION_IMPRESSION))
        expect = {a for a in log.item[same].tolist() if (int(log.user[r]), a) not in positives}
        assert set(sampler.hard_pool(i).tolist()) == expect, i
    # they are used: a row holds ~min(num_hard, pool) of them, far above uniform chance
    index = np.arange(len(rows))
    c = sampler.draw(index, 0)
    pools = [set(sampler.hard_pool(i).tolist()) for i in index]
    hits = np.array([len(p & set(row)) for p, row in zip(pools, c[:, 1:].tolist())])
    want = np.array([min(tiny_cfg.data.num_hard_negatives, len(p)) for p in pools])
    assert want.mean() > 1.0 and hits.mean() >= 0.95 * want.mean()
    cfg0 = copy.deepcopy(tiny_cfg.data)
    cfg0.num_hard_negatives = 0
    c0 = NegativeSampler(ds, cfg0, seed=0).draw(index, 0)
    hits0 = np.array([len(p & set(row)) for p, row in zip(pools, c0[:, 1:].tolist())])
    assert hits0.mean() < 0.5 * hits.mean()


# ----------------------------------------------------------------------------- cut points


def test_epochs_rotate_over_every_cut_point(tiny_prep, tiny_cfg):
    train = tiny_prep.splits["train"]
    lengths = train.hist_end - train.hist_start
    k = 2
    s = EpochSampler(train.user, lengths, tiny_cfg.serve.length_buckets, 16, k, seed=0)
    counts = np.bincount(train.user)
    expect_size = int(np.minimum(counts[counts > 0], k).sum())
    seen = np.zeros(len(train), dtype=int)
    epochs = int(np.ceil(counts.max() / k))
    for e in range(epochs):
        members = s.epoch_members(e)
        assert members.size == expect_size  # epoch size set by the config, not the data size
        assert np.bincount(train.user[members]).max() <= k
        seen[members] += 1
    assert (seen >= 1).all()  # every positive is a cut point within ceil(max n_u / k) epochs
    assert expect_size < len(train)
    # batches of one epoch cover exactly its members
    got = [s.next()]
    while s.queue:
        got.append(s.next())
    assert s.epoch == 0
    np.testing.assert_array_equal(np.sort(np.concatenate(got)), np.sort(s.epoch_members(0)))


def test_train_batches_replace_the_declared_oov_share(tiny_prep, tiny_cfg):
    train = tiny_prep.splits["train"]
    arrays = sample_arrays(tiny_prep, train)
    share = tiny_cfg.train.oov_history_share
    oov = 99
    batcher = TrainBatcher(tiny_prep, arrays, seed=0, oov_share=share, oov_code=oov)
    index = np.arange(len(train))
    batch = batcher(index, step=0)
    real = torch.arange(batch["hist_sids"].shape[1]).view(1, -1) < batch["hist_len"].view(-1, 1)
    is_oov = (batch["hist_sids"] == oov).all(-1)
    assert not (batch["hist_sids"] == oov).any(-1).logical_and(~is_oov).any()  # whole paths only
    assert not is_oov[~real].any()  # padding untouched
    n, observed = int(real.sum()), float(is_oov[real].float().mean())
    assert abs(observed - share) < 4 * np.sqrt(share * (1 - share) / n), (observed, share, n)
    again = batcher(index, step=1)
    assert not torch.equal((again["hist_sids"] == oov).all(-1), is_oov)  # redrawn per step
    none = TrainBatcher(tiny_prep, arrays, seed=0, oov_share=0.0, oov_code=oov)(index, step=0)
    assert not (none["hist_sids"] == oov).any()


def test_training_loop_redraws_candidates_and_replaces_history_each_step(tiny_cfg, tiny_prep, tmp_path, monkeypatch):
    """Wiring: `train` builds every step's batch with the per-step sampler and the configured OOV
    share (recorded through the batcher it uses)."""
    from oneranker import pipeline
    from oneranker.train import train

    seen = []
    original = pipeline.TrainBatcher.__call__

    def recording(self, index, step, buckets=None):
        batch = original(self, index, step, buckets)
        seen.append((step, self.oov_share, self.oov_code, batch["cand_sids"].clone()))
        return batch

    monkeypatch.setattr(pipeline.TrainBatcher, "__call__", recording)
    cfg = copy.deepcopy(tiny_cfg)
    cfg.train.steps = 3
    result = train(cfg, tmp_path, prep=tiny_prep, progress=False)
    assert [s for s, *_ in seen] == [0, 1, 2]
    assert all(share == cfg.train.oov_history_share and code == result["model"].oov_code for _, share, code, _ in seen)
    assert not torch.equal(seen[0][3][:, 1:], seen[1][3][:, 1:])
