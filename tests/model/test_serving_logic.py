"""Serving logic without a server: the preprocess path tokenizes exactly like training, and a
mixed-length batch gives the same answers as each request alone."""

from __future__ import annotations

import numpy as np
import pytest

from oneranker.cli import example_request
from oneranker.pipeline import sample_arrays
from oneranker_client import contract
from oneranker_serving import artifacts
from oneranker_serving.triton import arrays, batching, codec


def test_raw_events_tokenize_like_training(tiny_run, tiny_export):
    """Equal raw events give equal tokens: the served preprocess vs the training tensors."""
    rec = artifacts.load_recommender(tiny_export / "export", engine="onnxruntime", threads=1)
    training = sample_arrays(tiny_run.prep, tiny_run.prep.splits["test"])
    for row in range(0, len(tiny_run.prep.splits["test"]), 37):
        served = arrays.tokens_to_arrays(rec, example_request(tiny_run.prep, row))
        n = int(training["hist_len"][row])
        assert int(served["hist_len"][0, 0]) == n
        np.testing.assert_array_equal(served["user_features"][0], training["user_features"][row])
        np.testing.assert_array_equal(served["hist_sids"][0, :n], training["hist_sids"][row, :n])
        np.testing.assert_array_equal(served["hist_actions"][0, :n], training["hist_actions"][row, :n])
        np.testing.assert_allclose(served["hist_dt"][0, :n], training["hist_dt"][row, :n])
        assert not served["hist_actions"][0, n:].any()  # padding up to the bucket is empty


@pytest.mark.parametrize("search", ["graph", "numpy"])
def test_mixed_length_batch_equals_each_request_alone(tiny_run, tiny_export, search):
    rec = artifacts.load_recommender(tiny_export / "export", engine="onnxruntime", threads=1, search=search)
    requests = [example_request(tiny_run.prep, row) for row in range(0, 200, 25)]
    assert len({len(r.item_ids) for r in requests}) > 2  # really mixed lengths
    together = rec.recommend(requests)
    for req, batched in zip(requests, together):
        alone = rec.recommend([req])[0]
        np.testing.assert_array_equal(batched.item_ids, alone.item_ids)
        np.testing.assert_allclose(batched.scores, alone.scores, atol=1e-5)


@pytest.mark.parametrize("engine", ["onnxruntime", "torch"])
def test_split_topology_helpers_round_trip(tiny_run, tiny_export, engine):
    """generator batching + KV re-layout + ranker batching reproduce the fused pipeline; with the
    torch engine the KV stays a torch tensor all the way (the DLPack transport's path)."""
    import torch

    rec = artifacts.load_recommender(tiny_export / "export", engine=engine, threads=1, bind_kv=False)
    info = artifacts.read_export_info(tiny_export / "export")
    f, t2 = info["dims"]["F"], info["num_step2_tokens"]
    requests = [example_request(tiny_run.prep, row) for row in (0, 50, 120)]
    tokens = [arrays.tokens_to_arrays(rec, r) for r in requests]
    batch, own = batching.stack_generator_inputs(tokens)
    logits, kv = batching.generate_split(rec.runner, batch, keep_device=engine == "torch")
    assert isinstance(kv, torch.Tensor if engine == "torch" else np.ndarray)
    outs = batching.split_generator_outputs(tokens, logits, kv, own, f)
    ranked = []
    for tok, out in zip(tokens, outs):
        cands = arrays.select_arrays(
            rec.tables, rec.gen_tables, out["level_logits"], tok["options"], tok["exclude_idx"]
        )
        ranked.append((cands, {"kv": out["kv"], "hist_len": tok["hist_len"], **cands}))
    rbatch, shapes = batching.stack_ranker_inputs([r[1] for r in ranked], f, t2)
    assert isinstance(rbatch["kv"], torch.Tensor if engine == "torch" else np.ndarray)
    scores = batching.split_scores(batching.rank_split(rec.runner, rbatch), shapes)
    for req, tok, (cands, _), sc in zip(requests, tokens, ranked, scores):
        got = arrays.topk_arrays(sc[0], cands["cand_item_ids"], cands["cand_logp"], cands["cand_head"], tok["options"])
        want = rec.recommend([req])[0]
        np.testing.assert_array_equal(got["rec_item_ids"][0], want.item_ids)
        np.testing.assert_allclose(got["rec_scores"][0], want.scores, atol=1e-5)


class _FakeTensor:
    """pb_utils.Tensor stand-in: host numpy or a DLPack-imported torch tensor."""

    def __init__(self, name, value):
        self.name, self.value = name, value

    @classmethod
    def from_dlpack(cls, name, capsule):
        from torch.utils.dlpack import from_dlpack

        return cls(name, from_dlpack(capsule))

    def is_cpu(self):
        return not hasattr(self.value, "device") or self.value.device.type == "cpu"

    def as_numpy(self):
        assert isinstance(self.value, np.ndarray), "as_numpy() on a DLPack tensor copies; the codec must not call it"
        return self.value

    def to_dlpack(self):
        import torch
        from torch.utils.dlpack import to_dlpack

        value = self.value if hasattr(self.value, "device") else torch.from_numpy(self.value)
        return to_dlpack(value)


class _FakePb:
    Tensor = _FakeTensor
    TRITONSERVER_MEMORY_CPU, TRITONSERVER_MEMORY_GPU = "CPU", "GPU"

    @staticmethod
    def PreferredMemory(kind, device):
        return kind, device

    @staticmethod
    def get_input_tensor_by_name(request, name):
        return request[name]


def test_tensor_codec_moves_kv_by_dlpack_without_copy():
    import torch

    kv = torch.arange(24, dtype=torch.float32).reshape(1, 2, 3, 4)
    dl = codec.TensorCodec(_FakePb, "dlpack", "gpu:1")
    sent = dl.tensor("kv", kv)
    received = dl.kv(sent)
    assert isinstance(received, torch.Tensor) and received.data_ptr() == kv.data_ptr()  # zero copy
    request = {
        "kv": sent,
        "hist_len": _FakeTensor("hist_len", np.array([[3]], np.int64)),
        **{name: _FakeTensor(name, np.zeros((1, 2, 1))) for name in ("cand_sids", "cand_attrs", "cand_bid")},
    }
    got = dl.inputs(request, contract.RANKER)
    assert isinstance(got["kv"], torch.Tensor) and isinstance(got["hist_len"], np.ndarray)
    assert dl.preferred_memory() == ("GPU", 1)
    host = codec.TensorCodec(_FakePb, "numpy")
    assert isinstance(host.kv(_FakeTensor("kv", kv.numpy())), np.ndarray)
    assert host.preferred_memory() == ("CPU", 0)
    with pytest.raises(ValueError, match="kv_transport"):
        codec.TensorCodec(_FakePb, "shm")
    with pytest.raises(ValueError, match="kv_memory"):
        codec.TensorCodec(_FakePb, "dlpack", "tpu:0")


def test_kv_relayout_is_the_same_in_torch_and_numpy():
    import torch

    kv = np.random.default_rng(0).standard_normal((2, 4, 3 + 5 + 2, 8)).astype(np.float32)
    for to_len in (2, 5, 9):
        want = batching.relayout_kv(kv, 3, 5, to_len)
        got = batching.relayout_kv(torch.from_numpy(kv), 3, 5, to_len)
        assert isinstance(got, torch.Tensor)
        np.testing.assert_array_equal(got.numpy(), want)
