"""The OneRanker network: masks, KV pass-through, invariances, losses, ablation switches."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from oneranker import losses
from oneranker.model import step1_allowed, step2_allowed, step3_allowed
from oneranker.pipeline import build_model, sample_arrays, to_batch
from oneranker.train import loss_terms

# ----------------------------------------------------------------------------- masks


def test_step1_mask_every_pair():
    """Prefix bidirectional among itself only; history sees prefix + past + self; pads hidden."""
    num_prefix, length = 2, 4
    allowed = step1_allowed(num_prefix, torch.tensor([3]), length)[0]
    n = num_prefix + length
    for q in range(n):
        for k in range(n):
            if k >= num_prefix + 3:
                expected = False  # padded key
            elif q < num_prefix:
                expected = k < num_prefix
            else:
                expected = k < num_prefix or k <= q
            assert bool(allowed[q, k]) == expected, (q, k)


def test_step2_mask_every_pair():
    num_task, num_fake = 8, 4
    allowed = step2_allowed(num_task, num_fake, hetero=True)
    for q in range(num_task + num_fake):
        for k in range(num_task + num_fake):
            if q < num_task:
                expected = k >= num_task or k <= q  # causal over tasks, all fakes visible
            else:
                expected = k < num_task or k == q  # fakes see tasks and themselves only
            assert bool(allowed[q, k]) == expected, (q, k)
    assert step2_allowed(num_task, num_fake, hetero=False).all()


def test_step3_mask_every_pair():
    allowed = step3_allowed(5)
    for q in range(6):
        for k in range(6):
            expected = (q == k) or (q > 0 and k == 0)
            assert bool(allowed[q, k]) == expected, (q, k)


def test_ranker_self_attention_matches_explicit_mask(tiny_run):
    """The R-Decoder's O(n) self-attention equals dense masked attention with step3_allowed."""
    model = tiny_run.model
    layer = model.r_layers[0]
    torch.manual_seed(0)
    x = torch.randn(2, 6, model.cfg.d_model)
    b, n1, d = x.shape
    q, k, v = layer.qkv(layer.norm_self(x)).view(b, n1, 3, layer.h, layer.dh).unbind(2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / layer.dh**0.5
    scores = scores.masked_fill(~step3_allowed(n1 - 1), float("-inf"))
    dense = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, -1), v).reshape(b, n1, d)
    dense_out = x + layer.self_out(dense)
    assert torch.allclose(dense_out, layer.isolated_self_attention(x), atol=1e-5)


# ----------------------------------------------------------------------------- forward properties


@pytest.fixture(scope="module")
def batch(tiny_run):
    arrays = sample_arrays(tiny_run.prep, tiny_run.prep.splits["test"])
    return to_batch(arrays, np.arange(6))


@torch.no_grad()
def test_rank_with_kv_equals_joint_forward(tiny_run, batch):
    model = tiny_run.model
    joint = model(batch)["scores"]
    enc = model.encode_user(
        batch["user_features"], batch["hist_sids"], batch["hist_actions"], batch["hist_dt"], batch["hist_len"]
    )
    kv_valid = model.kv_valid_from_lengths(batch["hist_len"], enc.kv.shape[2])
    assert torch.equal(kv_valid, enc.kv_valid)
    split = model.rank(enc.kv, kv_valid, batch["cand_sids"], batch["cand_attrs"], batch["cand_bid"])
    assert torch.allclose(joint, split, atol=1e-6)


@torch.no_grad()
def test_candidate_scores_invariant_to_order_and_count(tiny_run, batch):
    model = tiny_run.model
    enc = model.encode_user(
        batch["user_features"], batch["hist_sids"], batch["hist_actions"], batch["hist_dt"], batch["hist_len"]
    )
    full = model.rank(enc.kv, enc.kv_valid, batch["cand_sids"], batch["cand_attrs"], batch["cand_bid"])
    perm = torch.randperm(full.shape[1], generator=torch.Generator().manual_seed(1))
    permuted = model.rank(
        enc.kv, enc.kv_valid, batch["cand_sids"][:, perm], batch["cand_attrs"][:, perm], batch["cand_bid"][:, perm]
    )
    assert torch.allclose(full[:, perm], permuted, atol=1e-6)
    few = model.rank(
        enc.kv, enc.kv_valid, batch["cand_sids"][:, :3], batch["cand_attrs"][:, :3], batch["cand_bid"][:, :3]
    )
    assert torch.allclose(full[:, :3], few, atol=1e-6)


@torch.no_grad()
def test_scores_invariant_to_history_padding(tiny_run, batch):
    model = tiny_run.model
    base = model(batch)
    padded = dict(batch)
    extra = 17
    for key in ("hist_sids", "hist_actions", "hist_dt"):
        v = batch[key]
        pad_shape = list(v.shape)
        pad_shape[1] = extra
        filler = torch.full(pad_shape, 3, dtype=v.dtype)  # garbage, not zeros: must be masked
        padded[key] = torch.cat([v, filler], dim=1)
    out = model(padded)
    assert torch.allclose(base["scores"], out["scores"], atol=1e-5)
    assert torch.allclose(base["encoding"].decoder_state, out["encoding"].decoder_state, atol=1e-4)


# ----------------------------------------------------------------------------- losses


def test_bpr_hand_computed():
    """Two families on one row: engagement pairs (0,1), (0,2); value pairs by eCPM 3 > 2 > 1:
    (0,1), (0,2), (2,1). L = w * mean(engagement) + (1 - w) * mean(value)."""
    scores = torch.tensor([[2.0, 1.0, 0.0]])
    values = torch.tensor([[3.0, 1.0, 2.0]])
    engaged = torch.tensor([[True, False, False]])

    def nls(x):
        return -math.log(1 / (1 + math.exp(-x)))

    eng = (nls(1) + nls(2)) / 2
    val = (nls(1) + nls(2) + nls(-1)) / 3
    loss = losses.bpr_loss(scores, engaged, values, torch.tensor([True]), 0.3)
    assert loss.item() == pytest.approx(0.3 * eng + 0.7 * val, rel=1e-6)
    unknown = losses.bpr_loss(scores, engaged, values, torch.tensor([False]), 0.3)
    assert unknown.item() == pytest.approx(eng, rel=1e-6)  # no value family: all on engagement


def test_dc_hand_computed_and_gradient_reaches_only_generator():
    rank = torch.tensor([[1.0, 0.0]], requires_grad=True)
    gen = torch.tensor([[0.0, 0.0]], requires_grad=True)
    p = torch.softmax(torch.tensor([1.0, 0.0]) / 0.5, 0)
    expected = -(p * torch.log(torch.tensor([0.5, 0.5]))).sum().item()
    loss = losses.dc_loss(rank, gen, tau=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert rank.grad is None or torch.all(rank.grad == 0)
    assert gen.grad is not None and gen.grad.abs().sum() > 0


def test_mtp_loss_skips_missing_heads():
    logp = torch.tensor([[-1.0, -5.0], [-2.0, -100.0]])
    valid = torch.tensor([[True, False], [True, False]])
    assert losses.mtp_loss(logp, valid).item() == pytest.approx(1.5)


def test_dc_gradient_reaches_generator_parameters(tiny_cfg, tiny_prep):
    cfg = copy.deepcopy(tiny_cfg)
    cfg.loss.alpha = cfg.loss.beta = 0.0
    cfg.loss.gamma, cfg.loss.dc_warmup_fraction = 1.0, 0.0
    cat = tiny_prep.dataset.catalog
    model = build_model(cfg, tiny_prep.sids, cat.num_advertisers, cat.num_categories)
    arrays = sample_arrays(tiny_prep, tiny_prep.splits["train"])
    terms = loss_terms(model, to_batch(arrays, np.arange(8)), cfg, step=10)
    terms["total"].backward()
    assert model.task_tokens.grad.abs().sum() > 0  # Step 2
    assert model.g_layers[0].uvqk.weight.grad.abs().sum() > 0  # Step 1
    assert model.score_mlp[-1].weight.grad is None or model.score_mlp[-1].weight.grad.abs().sum() == 0  # stop-grad


# ----------------------------------------------------------------------------- ablations

ABLATIONS = {
    "use_dc_loss": (False, lambda t: "dc" not in t),
    "use_h2_in_kv": (False, lambda t: "dc" in t),
    "use_generation": (False, lambda t: "mtp" not in t and "dc" not in t),
    "use_ranker": (False, lambda t: "rank" not in t and "dc" not in t),
    "use_fake_items": (False, lambda t: "mtp" in t),
    "use_task_decoupling": (False, lambda t: "mtp" in t),
    "cross_attention_first": (False, lambda t: "mtp" in t),
    "use_hetero_mask": (False, lambda t: "mtp" in t),
}


@pytest.mark.parametrize("switch", sorted(ABLATIONS))
def test_ablation_switch_builds_trains_and_changes_behaviour(switch, tiny_cfg, tiny_prep):
    value, terms_ok = ABLATIONS[switch]
    cat = tiny_prep.dataset.catalog
    arrays = sample_arrays(tiny_prep, tiny_prep.splits["train"])
    batch = to_batch(arrays, np.arange(8))
    outputs = {}
    for flag in (True, value):
        cfg = copy.deepcopy(tiny_cfg)
        setattr(cfg.model, switch, flag)
        torch.manual_seed(0)
        model = build_model(cfg, tiny_prep.sids, cat.num_advertisers, cat.num_categories)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        terms = loss_terms(model, batch, cfg, step=cfg.train.steps)
        opt.zero_grad()
        terms["total"].backward()
        opt.step()  # one training step must work
        with torch.no_grad():
            out = model(batch)
        outputs[flag] = (terms, out, model, cfg)
    terms, out, model, cfg = outputs[value]
    assert terms_ok(terms), (switch, sorted(terms))
    base_out = outputs[True][1]
    if switch == "use_h2_in_kv" or switch == "use_generation":
        h2 = out["encoding"].kv_valid[:, -cfg.model.num_step2_tokens :]
        assert not h2.any()  # the ranker no longer reads H2
        assert outputs[True][1]["encoding"].kv_valid[:, -cfg.model.num_step2_tokens :].all()
    elif switch == "use_fake_items":
        assert out["encoding"].h2.shape[1] == cfg.model.num_task_tokens
    elif switch == "use_task_decoupling":
        assert model.task_tokens.shape[0] == 1
        assert out["encoding"].h2.shape[1] == 1 + cfg.model.num_fake_items
    elif switch in ("cross_attention_first", "use_hetero_mask"):
        assert not torch.allclose(out["encoding"].decoder_state, base_out["encoding"].decoder_state)
    elif switch in ("use_dc_loss", "use_ranker"):
        assert not math.isclose(float(terms["total"]), float(outputs[True][0]["total"]))


def _model_with_grad_centroids(cfg, prep):
    """OneRanker built from centroid tensors that require grad: any use of a centroid-derived
    feature in the forward pass leaves a gradient on them."""
    from oneranker.model import OneRanker
    from oneranker.pipeline import level_sizes

    cat = prep.dataset.catalog
    centroids = torch.tensor(np.asarray(prep.sids.centroids, dtype=np.float32), requires_grad=True)
    code_feats = torch.tensor(np.asarray(prep.sids.level_code_features, dtype=np.float32), requires_grad=True)
    torch.manual_seed(0)
    model = OneRanker(
        cfg.model,
        cfg.tokenizer,
        cfg.data,
        centroids,
        code_feats,
        level_sizes(cfg),
        cat.num_advertisers,
        cat.num_categories,
    )
    return model, centroids, code_feats


@pytest.mark.parametrize("use_fake_items", [True, False])
def test_without_target_no_gradient_reaches_centroid_features(use_fake_items, tiny_cfg, tiny_prep):
    """w/o Target removes every centroid-derived input of the decoder state (fake tokens, the
    target channel and the item-side centroid similarities); the full model (control) uses both."""
    cfg = copy.deepcopy(tiny_cfg)
    cfg.model.use_fake_items = use_fake_items
    model, centroids, code_feats = _model_with_grad_centroids(cfg, tiny_prep)
    batch = to_batch(sample_arrays(tiny_prep, tiny_prep.splits["test"]), np.arange(4))
    enc = model.encode_user(
        batch["user_features"], batch["hist_sids"], batch["hist_actions"], batch["hist_dt"], batch["hist_len"]
    )
    paths = torch.from_numpy(tiny_prep.sids.ad_codes[None, :16].astype(np.int64)).expand(4, -1, -1)
    model.path_log_probs(enc.decoder_state, paths).sum().backward()  # through the decoder, either kind
    derived = [n for n, _ in model.named_parameters() if n.startswith(("fake_", "target_"))]
    if use_fake_items:
        assert centroids.grad is not None and centroids.grad.abs().sum() > 0
        assert code_feats.grad is not None and code_feats.grad.abs().sum() > 0
        assert derived
    else:
        assert centroids.grad is None and code_feats.grad is None
        assert derived == []
        assert not [n for n, _ in model.named_buffers() if n.endswith(("fake_centroids", "level_code_features"))]


def test_without_mda_one_shared_head(tiny_cfg, tiny_prep):
    """w/o MDA: one task token and one head projection; every head's decoder state identical.
    (Full model as the control: per-head parameters for all H heads and distinct states.)"""
    cat = tiny_prep.dataset.catalog
    H = tiny_cfg.model.num_task_tokens
    batch = to_batch(sample_arrays(tiny_prep, tiny_prep.splits["test"]), np.arange(4))
    models, logits = {}, {}
    for flag in (True, False):
        cfg = copy.deepcopy(tiny_cfg)
        cfg.model.use_task_decoupling = flag
        torch.manual_seed(0)
        models[flag] = build_model(cfg, tiny_prep.sids, cat.num_advertisers, cat.num_categories)
        with torch.no_grad():
            logits[flag] = models[flag](batch)["encoding"].decoder_state
    full = dict(models[True].named_parameters())
    shared = dict(models[False].named_parameters())
    per_head = [n for n, p in full.items() if p.dim() >= 2 and p.shape[0] == H]
    assert {"task_tokens", "task_head"} <= set(per_head)
    for name in per_head:
        assert shared[name].shape == (1, *full[name].shape[1:]), name
    assert set(full) == set(shared)
    assert logits[False].shape == logits[True].shape
    for h in range(1, H):
        assert torch.equal(logits[False][:, h], logits[False][:, 0])
        assert not torch.allclose(logits[True][:, h], logits[True][:, 0])


def test_a_run_saved_with_the_old_decoder_names_loads_and_answers_the_same(request, tiny_run, tmp_path):
    """Checkpoints written before the decoder was a submodule (always factorized) keep their
    top-level names (`code_emb`, `transition`, ...): `load_run` maps them and the model answers
    identically."""
    import shutil

    from safetensors.torch import load_file, save_file

    from oneranker.checkpoint import load_run

    if tiny_run.model.cfg.decoder != "factorized":
        tiny_run = request.getfixturevalue("tiny_other_decoder")[0]
    run = tmp_path / "old_run"
    shutil.copytree(tiny_run.run_dir, run)
    state = load_file(str(run / "model.safetensors"))
    assert any(k.startswith("decoder.") for k in state)
    save_file({k.removeprefix("decoder."): v for k, v in state.items()}, str(run / "model.safetensors"))
    _, model, _, _ = load_run(run)
    batch = to_batch(sample_arrays(tiny_run.prep, tiny_run.prep.splits["test"]), np.arange(3))
    with torch.no_grad():
        got = model(batch)
        want = tiny_run.model(batch)
    assert torch.equal(got["scores"], want["scores"])
    assert torch.equal(got["encoding"].decoder_state, want["encoding"].decoder_state)
