"""TensorRT path: what can be checked without TensorRT is checked; the build itself skips here."""

from __future__ import annotations

import importlib.util
import json

import onnx
import pytest

from oneranker.config import PRESETS, preset
from oneranker_build import tensorrt_build
from oneranker_build.render import RenderSettings

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
NO_TRT = "TensorRT is not installable on these machines (shared/docs/platform.md); runs in the NGC builder image"


def test_every_exported_op_is_supported_by_onnx_tensorrt(tiny_export):
    supported = tensorrt_build.supported_ops()
    assert {"MatMul", "LayerNormalization", "Softmax"} <= supported
    for name in tensorrt_build.PLAN_MODELS:
        graph = onnx.load(str(tiny_export / "export" / f"{name}.onnx"))
        ops = {node.op_type for node in graph.graph.node}
        assert ops <= supported, (name, sorted(ops - supported))
        opset = {o.domain: o.version for o in graph.opset_import}[""]
        assert 9 <= opset <= 20  # the opset range of the pinned parser list


def test_topk_sizes_stay_within_tensorrt_limits():
    """The graphs' TopK K is a runtime tensor (the batch's largest beam width, candidate count or
    top_k); onnx-tensorrt (TensorRT 10) requires K < 3840, so the serve limits must keep it there.
    The beam TopK runs over beams x codes, but its K is the beam width."""
    for name in PRESETS:
        serve = preset(name).serve
        assert max(serve.max_beam_width, serve.max_num_candidates, serve.max_top_k) < 3840, name


def test_profiles_file_is_current_and_aligned_with_buckets():
    data = json.loads(tensorrt_build.PROFILES.read_text())
    assert data["max_batch_size"] == RenderSettings().max_batch_size
    for name in PRESETS:
        cfg = preset(name)
        assert data["presets"][name] == json.loads(json.dumps(tensorrt_build.profile_for(cfg, data["max_batch_size"])))
        gen = data["presets"][name]["generation"]["hist_actions"]
        assert gen["max"][1] == cfg.serve.length_buckets[-1]
        assert gen["opt"][1] in cfg.serve.length_buckets
        for model in data["presets"][name].values():
            for shapes in model.values():
                assert shapes["max"][0] == data["max_batch_size"]
                assert all(lo <= op <= hi for lo, op, hi in zip(shapes["min"], shapes["opt"], shapes["max"]))


def test_missing_tensorrt_stops_with_a_clear_message(tiny_export, tmp_path):
    if HAS_TRT:
        pytest.skip("TensorRT is installed: the real build test below runs instead")
    with pytest.raises(tensorrt_build.TensorRTUnavailable, match="NGC"):
        tensorrt_build.build_plans(tiny_export / "export", tmp_path, "tiny")


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_TRT, reason=NO_TRT)
def test_build_plans_and_compare_with_onnxruntime(tiny_export, tmp_path):  # pragma: no cover - NGC only
    info = tensorrt_build.build_plans(tiny_export / "export", tmp_path, "tiny")
    assert tuple(info) == tensorrt_build.PLAN_MODELS == ("generation", "ranking")
    for model in tensorrt_build.PLAN_MODELS:
        assert (tmp_path / model / "1" / "model.plan").stat().st_size > 0
        assert info[model]["onnx_sha256"] == tensorrt_build.sha256(tiny_export / "export" / f"{model}.onnx")
