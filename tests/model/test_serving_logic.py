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
        served = arrays.tokens_to_arrays(rec, example_request(tiny_run.prep, row), 1)
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
def test_graphs_topology_helpers_round_trip(tiny_run, tiny_export, engine):
    """What the `generation` and `ranking` models run (generation batching + KV re-layout + ranking
    batching) reproduces the in-process graph path; with the torch engine the KV stays a torch
    tensor all the way (the DLPack transport's path)."""
    import torch

    export = tiny_export / "export"
    rec = artifacts.load_recommender(export, engine=engine, threads=1, bind_kv=False, search="graph")
    info = artifacts.read_export_info(export)
    f, t2 = info["dims"]["F"], info["num_step2_tokens"]
    requests = [example_request(tiny_run.prep, row) for row in (0, 50, 120)]
    tokens = [arrays.tokens_to_arrays(rec, r, 1) for r in requests]
    generated = batching.generate_graphs(rec.runner, tokens, f, keep_device=engine == "torch")
    for out in generated:
        assert isinstance(out["kv"], torch.Tensor if engine == "torch" else np.ndarray)
    ranked = batching.rank_graphs(
        rec.runner,
        [{**out, "hist_len": tok["hist_len"], "top_k": tok["top_k"]} for out, tok in zip(generated, tokens)],
        f,
        t2,
    )
    for req, got in zip(requests, ranked):
        want = rec.recommend([req])[0]  # the in-process graph path, same engine, each request alone
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

    @staticmethod
    def get_input_tensor_by_name(request, name):
        return request[name]


def test_tensor_codec_moves_kv_by_dlpack_without_copy():
    import torch

    kv = torch.arange(24, dtype=torch.float32).reshape(1, 2, 3, 4)
    dl = codec.TensorCodec(_FakePb, "dlpack")
    sent = dl.tensor("kv", kv)
    received = dl.kv(sent)
    assert isinstance(received, torch.Tensor) and received.data_ptr() == kv.data_ptr()  # zero copy
    request = {
        "kv": sent,
        **{name: _FakeTensor(name, np.array([[3]], np.int64)) for name in ("hist_len", "top_k")},
        **{name: _FakeTensor(name, np.zeros((1, 2))) for name in ("cand_idx", "cand_logp", "cand_stream")},
    }
    got = dl.inputs(request, contract.RANKING)
    assert isinstance(got["kv"], torch.Tensor) and got["kv"].data_ptr() == kv.data_ptr()
    assert all(isinstance(got[name], np.ndarray) for name in got if name != "kv")
    host = codec.TensorCodec(_FakePb, "numpy")
    assert isinstance(host.kv(_FakeTensor("kv", kv.numpy())), np.ndarray)
    with pytest.raises(ValueError, match="kv_transport"):
        codec.TensorCodec(_FakePb, "shm")


def test_kv_relayout_is_the_same_in_torch_and_numpy():
    import torch

    kv = np.random.default_rng(0).standard_normal((2, 4, 3 + 5 + 2, 8)).astype(np.float32)
    for to_len in (2, 5, 9):
        want = batching.relayout_kv(kv, 3, 5, to_len)
        got = batching.relayout_kv(torch.from_numpy(kv), 3, 5, to_len)
        assert isinstance(got, torch.Tensor)
        np.testing.assert_array_equal(got.numpy(), want)
