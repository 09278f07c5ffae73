"""The out-of-vocabulary history token: reserved code K = tokenizer.max_codes at every semantic-ID
level, trained by the OOV replacement, read by the model and by the exported ONNX generator."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from oneranker.pipeline import TrainBatcher, build_model, sample_arrays, to_batch
from oneranker.train import loss_terms


@pytest.fixture(scope="module")
def model(tiny_cfg, tiny_prep):
    cat = tiny_prep.dataset.catalog
    torch.manual_seed(0)
    return build_model(tiny_cfg, tiny_prep.sids, cat.num_advertisers, cat.num_categories).eval()


def _oov_rows(model) -> torch.Tensor:
    K = model.codes
    return torch.arange(model.depth) * (K + 1) + model.oov_code


def test_oov_code_is_reserved_and_trained(model, tiny_cfg, tiny_prep):
    """The OOV code lies past every real code; one training step with the configured replacement
    share updates its embedding rows, and none without it."""
    assert model.oov_code == tiny_cfg.tokenizer.max_codes == model.codes
    assert model.sid_emb.num_embeddings == model.depth * (model.codes + 1)
    codes = np.asarray(tiny_prep.sids.ad_codes)
    assert codes.max() < model.oov_code
    arrays = sample_arrays(tiny_prep, tiny_prep.splits["train"])
    grads = {}
    for share in (tiny_cfg.train.oov_history_share, 0.0):
        m = copy.deepcopy(model).train()
        batch = TrainBatcher(tiny_prep, arrays, seed=0, oov_share=share, oov_code=m.oov_code)(np.arange(256), 0)
        loss_terms(m, batch, tiny_cfg, step=0)["total"].backward()
        grads[share] = m.sid_emb.weight.grad[_oov_rows(m)].abs().sum(-1)
    assert (grads[tiny_cfg.train.oov_history_share] > 0).all()
    assert (grads[0.0] == 0).all()


def _with_oov(batch: dict, code: int) -> dict:
    """Every other real history item replaced by the OOV path."""
    out = dict(batch)
    sids = batch["hist_sids"].clone()
    length = sids.shape[1]
    real = torch.arange(length).view(1, -1) < batch["hist_len"].view(-1, 1)
    hit = real & (torch.arange(length).view(1, -1) % 2 == 0)
    out["hist_sids"] = sids.masked_fill(hit.unsqueeze(-1), code)
    return out


def test_oov_history_runs_through_model_and_onnx_export(model, tiny_cfg, tiny_prep, tmp_path):
    import onnxruntime as ort

    from oneranker_build.export import export_decoder_state_graphs

    cat = tiny_prep.dataset.catalog
    batch = to_batch(sample_arrays(tiny_prep, tiny_prep.splits["test"]), np.arange(4))
    oov = _with_oov(batch, model.oov_code)
    with torch.no_grad():
        plain, out = model(batch), model(oov)
    enc = out["encoding"]
    assert torch.isfinite(enc.decoder_state[enc.decoder_state > -1e8]).all() and torch.isfinite(out["scores"]).all()
    assert not torch.allclose(plain["scores"], out["scores"])  # the token is read, not ignored
    export_decoder_state_graphs(model, tmp_path, cat.num_advertisers, cat.num_categories, tiny_cfg.model.max_history)
    names = ("user_features", "hist_sids", "hist_actions", "hist_dt", "hist_len")
    sess = ort.InferenceSession(str(tmp_path / "generator.onnx"), providers=["CPUExecutionProvider"])
    feeds = {n: oov[n].numpy() for n in names}
    decoder_state, kv = sess.run(None, feeds)
    np.testing.assert_allclose(decoder_state, enc.decoder_state.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(kv, enc.kv.numpy(), rtol=1e-4, atol=1e-4)
    ranker = ort.InferenceSession(str(tmp_path / "ranker.onnx"), providers=["CPUExecutionProvider"])
    scores = ranker.run(
        None,
        {
            "kv": kv,
            "hist_len": oov["hist_len"].numpy(),
            "cand_sids": oov["cand_sids"].numpy(),
            "cand_attrs": oov["cand_attrs"].numpy(),
            "cand_bid": oov["cand_bid"].numpy(),
        },
    )[0]
    np.testing.assert_allclose(scores, out["scores"].numpy(), rtol=1e-4, atol=1e-4)


def test_oov_history_runs_through_the_served_generation_graph(tiny_run, tiny_export, tiny_prep):
    """The graphs the fused model serves (beam search inside) accept the OOV code in a history and
    answer like the PyTorch module on the same tokens."""
    import onnxruntime as ort

    model = tiny_run.model
    batch = _with_oov(to_batch(sample_arrays(tiny_prep, tiny_prep.splits["test"]), np.arange(3)), model.oov_code)
    names = ("user_features", "hist_sids", "hist_actions", "hist_dt", "hist_len")
    feeds = {n: batch[n].numpy() for n in names}
    feeds.update(beam_width=np.full(3, 8), num_candidates=np.full(3, 20), exclude_idx=np.full((3, 1), -1))
    sess = ort.InferenceSession(str(tiny_export / "export" / "generation.onnx"), providers=["CPUExecutionProvider"])
    cand_idx, cand_logp, _, kv = sess.run(None, feeds)
    assert (cand_idx[:, 0] >= 0).all() and np.isfinite(cand_logp[cand_idx >= 0]).all()
    with torch.no_grad():
        enc = model.encode_user(*(batch[n] for n in names))
    np.testing.assert_allclose(kv, enc.kv.numpy(), rtol=1e-4, atol=1e-4)
