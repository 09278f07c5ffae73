"""TensorRT path: what can be checked without TensorRT is checked; the build itself skips here.
(The build's and the runner's control flow under a fake TensorRT: tests/unit/test_tensorrt_fakes.py.)"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys

import onnx
import pytest

from oneranker.config import PRESETS, preset
from oneranker_build import cli, tensorrt_build
from oneranker_build.render import RenderSettings
from oneranker_serving import plans

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
        tensorrt_build.build_plans(tiny_export / "export", tmp_path / "tensorrt", "tiny", tmp_path / "cache")


def _leftovers(out) -> list[str]:
    """Hidden staging or replaced repositories a build left in OUT."""
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


def test_build_cli_without_tensorrt_fails_and_leaves_no_repository(tiny_run, tmp_path, monkeypatch, capsys):
    """`oneranker build --engine tensorrt` without TensorRT: non-zero exit naming the reason, no
    repository at OUT/tensorrt (nothing for `deploy promote` to find), a previous one untouched."""
    from oneranker.cli import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` fails, installed or not
    out = tmp_path / "out"
    argv = ["build", "--run-dir", str(tiny_run.run_dir), "--engine", "tensorrt", "--out", str(out)]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "TensorRT is not installed" in err and "NGC" in err, err
    assert not (out / "tensorrt").exists()
    assert not out.exists() or not _leftovers(out)

    previous = out / "tensorrt" / "generation" / "1" / "model.plan"
    previous.parent.mkdir(parents=True)
    previous.write_bytes(b"the previous release")
    assert main(argv) != 0
    assert previous.read_bytes() == b"the previous release"
    assert sorted(p.name for p in (out / "tensorrt").rglob("*")) == ["1", "generation", "model.plan"]
    assert not _leftovers(out)


@pytest.fixture
def quick_export(tiny_run, tiny_export, monkeypatch):
    """cli.build's export step, answered with a copy of the session's export (same run)."""
    from oneranker.checkpoint import load_run
    from oneranker_build.export import dims_for

    cfg, model, _, manifest = load_run(tiny_run.run_dir)
    dims = dims_for(model)

    def export_run(run_dir, export_dir, beam_search_graphs=True, onnx_too=True):
        shutil.rmtree(export_dir, ignore_errors=True)
        shutil.copytree(tiny_export / "export", export_dir)
        return json.loads((export_dir / "export_info.json").read_text()), dims, manifest, cfg

    monkeypatch.setattr(cli, "export_run", export_run)


def test_a_failed_plan_build_keeps_the_previous_repository_and_a_good_one_replaces_it(
    tiny_run, quick_export, tmp_path, monkeypatch
):
    """The repository is rendered and its plans built in a hidden folder of OUT, moved to
    OUT/tensorrt only once complete; the timing cache goes to a folder no build deletes."""
    out = tmp_path / "out"
    previous = out / "tensorrt" / "marker"
    previous.parent.mkdir(parents=True)
    previous.write_text("previous release")
    monkeypatch.setattr(tensorrt_build, "require_tensorrt", lambda: None)

    def failing(export_dir, repo_dir, preset, cache_dir):
        plans.plan_path(repo_dir, "generation").parent.mkdir(parents=True, exist_ok=True)
        plans.plan_path(repo_dir, "generation").write_bytes(b"half a build")
        raise RuntimeError("TensorRT could not parse ranking.onnx")

    monkeypatch.setattr(tensorrt_build, "build_plans", failing)
    with pytest.raises(RuntimeError, match="could not parse"):
        cli.build(tiny_run.run_dir, out, ["tensorrt"])
    assert sorted(p.name for p in (out / "tensorrt").iterdir()) == ["marker"]
    assert not _leftovers(out)

    caches = []

    def working(export_dir, repo_dir, preset, cache_dir):
        caches.append(cache_dir)
        for model in plans.PLAN_MODELS:
            plans.plan_path(repo_dir, model).write_bytes(b"plan")
        return {model: {"timing_cache_reused": False} for model in plans.PLAN_MODELS}

    monkeypatch.setattr(tensorrt_build, "build_plans", working)
    result = cli.build(tiny_run.run_dir, out, ["tensorrt"])
    assert not previous.exists() and not _leftovers(out)
    assert (out / "tensorrt" / "oneranker" / "config.pbtxt").is_file()
    assert all(plans.plan_path(out / "tensorrt", m).read_bytes() == b"plan" for m in plans.PLAN_MODELS)
    assert result["plans"]["tensorrt"]["generation"] == {"timing_cache_reused": False}
    assert caches == [out / tensorrt_build.TIMING_CACHE_DIR]  # not under OUT/export nor OUT/tensorrt


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_TRT, reason=NO_TRT)
def test_build_plans_and_compare_with_onnxruntime(tiny_export, tmp_path):  # pragma: no cover - NGC only
    info = tensorrt_build.build_plans(tiny_export / "export", tmp_path, "tiny", tmp_path / "cache")
    assert tuple(info) == tensorrt_build.PLAN_MODELS == ("generation", "ranking")
    for model in tensorrt_build.PLAN_MODELS:
        assert (tmp_path / model / "1" / "model.plan").stat().st_size > 0
        assert info[model]["onnx_sha256"] == tensorrt_build.sha256(tiny_export / "export" / f"{model}.onnx")
