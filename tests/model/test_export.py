"""ONNX export parity with PyTorch (ONNX Runtime, fp32) and the engine runners' KV binding."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from oneranker_build.export import (
    GeneratorGraph,
    example_candidates,
    example_generator_inputs,
)
from oneranker_client import contract
from oneranker_serving.runners.onnxruntime import OrtRunner

SCORE_TOL = 1e-4


@pytest.fixture(scope="module")
def sessions(tiny_export):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    export = tiny_export / "export"
    return (
        ort.InferenceSession(str(export / "generator.onnx"), opts, providers=["CPUExecutionProvider"]),
        ort.InferenceSession(str(export / "ranker.onnx"), opts, providers=["CPUExecutionProvider"]),
    )


def _shapes(max_history, buckets):
    lengths = sorted(
        {1, 2, 3, 7, max_history}
        | set(buckets)
        | {b + 1 for b in buckets if b < max_history}
        | {b - 1 for b in buckets}
    )
    combos = list(itertools.product((1, 2, 3), lengths, (1, 9)))
    return combos


def test_graphs_pass_checker_and_use_contract_names(tiny_export):
    for spec in (contract.GENERATOR, contract.RANKER):
        model = onnx.load(str(tiny_export / "export" / f"{spec.name}.onnx"))
        onnx.checker.check_model(model)
        names_in = [i.name for i in model.graph.input]
        names_out = [o.name for o in model.graph.output]
        assert names_in == [t.name for t in spec.inputs]
        assert names_out == [t.name for t in spec.outputs]
        elem = {1: np.float32, 7: np.int64}
        for value, t in zip(model.graph.input, spec.inputs):
            assert elem[value.type.tensor_type.elem_type] == t.numpy_dtype, t.name
        for value, t in zip(model.graph.output, spec.outputs):
            assert elem[value.type.tensor_type.elem_type] == t.numpy_dtype, t.name


def test_onnx_parity_over_many_shapes(tiny_run, sessions):
    model = tiny_run.model
    cfg = model.cfg
    gen, rank = sessions
    cat = tiny_run.prep.dataset.catalog
    shapes = _shapes(cfg.max_history, tiny_run.prep.cfg.serve.length_buckets)
    assert len(shapes) >= 50
    worst = {"decoder_state": 0.0, "kv": 0.0, "scores": 0.0}
    for i, (batch, length, n) in enumerate(shapes):
        inputs = example_generator_inputs(model, batch, length, seed=i)
        cands = example_candidates(model, batch, n, cat.num_advertisers, cat.num_categories, seed=i)
        with torch.no_grad():
            logits_t, kv_t = GeneratorGraph(model)(*inputs.values())
            scores_t = model(dict(inputs, **cands))["scores"]  # the joint pass
        logits_o, kv_o = gen.run(None, {k: v.numpy() for k, v in inputs.items()})
        scores_o = rank.run(
            None, {"kv": kv_o, "hist_len": inputs["hist_len"].numpy(), **{k: v.numpy() for k, v in cands.items()}}
        )[0]
        finite = logits_t.numpy() > -1e8
        worst["decoder_state"] = max(worst["decoder_state"], float(np.abs(logits_o - logits_t.numpy())[finite].max()))
        worst["kv"] = max(worst["kv"], float(np.abs(kv_o - kv_t.numpy()).max()))
        worst["scores"] = max(worst["scores"], float(np.abs(scores_o - scores_t.numpy()).max()))
    assert worst["scores"] <= SCORE_TOL, worst
    assert worst["decoder_state"] <= SCORE_TOL * 10, worst
    assert worst["kv"] <= SCORE_TOL, worst


def _runner_inputs(model, tiny_run, seed):
    inputs = {k: v.numpy() for k, v in example_generator_inputs(model, 2, 16, seed=seed).items()}
    cat = tiny_run.prep.dataset.catalog
    cands = {
        k: v.numpy()
        for k, v in example_candidates(model, 2, 6, cat.num_advertisers, cat.num_categories, seed=seed).items()
    }
    return inputs, cands


def _run(runner, inputs, cands):
    logits, kv = runner.generate(inputs)
    scores = runner.rank(kv, inputs["hist_len"], cands["cand_sids"], cands["cand_attrs"], cands["cand_bid"])
    runner.release(kv)
    return logits, scores


def test_bound_and_unbound_runner_agree(tiny_run, tiny_export):
    bound = OrtRunner(tiny_export / "export", threads=2, bind_kv=True)
    unbound = OrtRunner(tiny_export / "export", threads=2, bind_kv=False)
    for seed in range(3):
        inputs, cands = _runner_inputs(tiny_run.model, tiny_run, seed)
        lb, sb = _run(bound, inputs, cands)
        lu, su = _run(unbound, inputs, cands)
        np.testing.assert_array_equal(lb, lu)
        np.testing.assert_array_equal(sb, su)
    assert bound.pool.allocations == 1  # same shape: the KV buffer is reused


def test_concurrent_requests_never_share_kv(tiny_run, tiny_export):
    runner = OrtRunner(tiny_export / "export", threads=1, bind_kv=True)
    cases = [_runner_inputs(tiny_run.model, tiny_run, seed) for seed in range(8)]
    expected = [_run(runner, *case)[1] for case in cases]

    def work(i):
        return _run(runner, *cases[i % len(cases)])[1]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(40)))
    for i, got in enumerate(results):
        np.testing.assert_array_equal(got, expected[i % len(cases)])
    assert runner.pool.allocations >= 2  # concurrent holders got distinct buffers
