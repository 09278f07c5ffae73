"""Rendered Triton configs parse, agree with the tensor contract, and rendering is strict."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from oneranker_build.render import RenderError, fill
from oneranker_client import contract
from oneranker_serving import artifacts
from oneranker_serving.triton import arrays


def _parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _dims(tiny_export):
    import json

    info = json.loads((tiny_export / "export" / "export_info.json").read_text())
    return contract.ContractDims(**info["dims"])


def test_every_rendered_config_parses_and_matches_contract(tiny_repository, tiny_export):
    dims = _dims(tiny_export)
    configs = sorted(tiny_repository.glob("*/config.pbtxt"))
    ensembles = set(contract.ENSEMBLES)
    assert {c.parent.name for c in configs} == ensembles | set(contract.MODELS)
    for path in configs:
        cfg = _parse(path)
        spec = contract.MODELS[contract.PUBLIC_MODEL if cfg.name in ensembles else cfg.name].resolve(dims)
        assert cfg.max_batch_size > 0
        for section, tensors in ((cfg.input, spec.inputs), (cfg.output, spec.outputs)):
            assert [t.name for t in section] == [t.name for t in tensors], cfg.name
            for got, want in zip(section, tensors):
                assert model_config_pb2.DataType.Name(got.data_type) == want.dtype, (cfg.name, want.name)
                assert tuple(got.dims) == tuple(want.dims), (cfg.name, want.name)
                if hasattr(got, "optional"):
                    assert got.optional == want.optional
                if want.reshape is not None:
                    assert tuple(got.reshape.shape) == tuple(want.reshape)


@pytest.mark.parametrize("ensemble", sorted(contract.ENSEMBLES))
def test_ensemble_wiring_is_closed(tiny_repository, ensemble):
    cfg = _parse(tiny_repository / ensemble / "config.pbtxt")
    available = {t.name for t in cfg.input}
    for step in cfg.ensemble_scheduling.step:
        spec = contract.MODELS[step.model_name]
        required = {t.name for t in spec.inputs if not t.optional}
        assert required <= set(step.input_map) <= {t.name for t in spec.inputs}, step.model_name
        assert set(step.input_map.values()) <= available, step.model_name
        # every output a later step or the ensemble reads; unread internal ones are left out
        assert set(step.output_map) <= {t.name for t in spec.outputs}, step.model_name
        available |= set(step.output_map.values())
    assert {t.name for t in cfg.output} <= available


def test_dynamic_batching_and_queue_policy(tiny_repository, tiny_export, tmp_path):
    """Every Python model batches (ragged where dims are variable) with no queue policy by default;
    `queue_policy=True` renders the bounded queue and timeout into every one of them."""
    from oneranker_build.render import RenderSettings, render_repository

    names = (contract.PREPROCESS_MODEL, contract.FUSED_MODEL, contract.GENERATION_MODEL, contract.RANKING_MODEL)
    for name in names:
        cfg = _parse(tiny_repository / name / "config.pbtxt")
        assert cfg.dynamic_batching.max_queue_delay_microseconds == RenderSettings().max_queue_delay_us
        assert not cfg.dynamic_batching.HasField("default_queue_policy"), name
        ragged = {t.name for t in cfg.input if t.allow_ragged_batch}
        assert ragged == {t.name for t in cfg.input if -1 in t.dims}
    export = tiny_export / "export"
    settings = RenderSettings(queue_policy=True, max_queue_size=7, queue_timeout_us=123_000)
    sha = artifacts.read_export_info(export)["checkpoint_sha256"]
    repo = render_repository(export, tmp_path / "policy", "onnxruntime", _dims(tiny_export), sha, settings=settings)
    for name in names:
        policy = _parse(repo / name / "config.pbtxt").dynamic_batching.default_queue_policy
        assert (policy.max_queue_size, policy.default_timeout_microseconds) == (7, 123_000), name
        assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT


def test_glue_outputs_follow_contract(tiny_run, tiny_export):
    from oneranker.cli import example_request

    rec = artifacts.load_recommender(tiny_export / "export", engine="onnxruntime", threads=1)
    req = example_request(tiny_run.prep, 0)
    tokens = arrays.tokens_to_arrays(rec, req, model_version=7)
    assert list(tokens) == [t.name for t in contract.PREPROCESS.outputs]
    assert tokens["model_version"].tolist() == [[7]] and tokens["history_unknown"].tolist() == [[0]]
    for spec in contract.PREPROCESS.outputs:
        assert tokens[spec.name].dtype == spec.numpy_dtype, spec.name
        assert tokens[spec.name].ndim == len(spec.dims) + 1, spec.name
    parsed = arrays.parsed_from_arrays(0, tokens)
    response = rec.recommend_parsed([parsed])[0]
    for version, specs in ((None, contract.NUMPY_BEAM.outputs), (7, contract.FUSED.outputs)):
        outputs = arrays.response_arrays(response, version)  # tokens-format model / fused model
        assert list(outputs) == [t.name for t in specs]
        for spec in specs:
            assert outputs[spec.name].dtype == spec.numpy_dtype


def test_artifacts_refuse_a_foreign_checkpoint(tiny_export):
    with pytest.raises(artifacts.ArtifactMismatch):
        artifacts.load_recommender(tiny_export / "export", engine="onnxruntime", expected_checkpoint="0" * 64)


def test_fill_fails_on_missing_unused_and_leftover(tmp_path):
    template = tmp_path / "t.tmpl"
    template.write_text('name: "${name}"\nmax_batch_size: ${mbs}\n')
    assert fill(template, {"name": "x", "mbs": 4}) == 'name: "x"\nmax_batch_size: 4\n'
    with pytest.raises(RenderError, match="no value"):
        fill(template, {"name": "x"})
    with pytest.raises(RenderError, match="not used"):
        fill(template, {"name": "x", "mbs": 1, "extra": 2})
    with pytest.raises(RenderError, match="leftover"):
        fill(template, {"name": "${oops}", "mbs": 1})


def test_markdown_contract_lists_every_tensor():
    text = contract.markdown_tables()
    for spec in (*contract.MODELS.values(), *contract.GRAPHS.values()):
        for t in spec.inputs + spec.outputs:
            assert f"`{t.name}`" in text


def test_repository_readme_shows_current_contract():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "model_repository" / "README.md").read_text()
    assert contract.markdown_tables() in readme, "run: python -m oneranker_client.contract model_repository/README.md"


def test_kv_transport_follows_engine_and_instance_kind(tiny_run, tiny_export, tmp_path):
    """The `graphs` topology's generation -> ranking KV: onnxruntime as host numpy; torch by
    DLPack with GPU inputs allowed (FORCE_CPU_ONLY_INPUT_TENSORS=no), on the instance kind asked
    for, so with KIND_GPU the KV stays on the device."""
    from oneranker_build.render import RenderSettings, render_repository

    export, dims, sha = (
        tiny_export / "export",
        _dims(tiny_export),
        artifacts.read_export_info(tiny_export / "export")["checkpoint_sha256"],
    )
    cases = {
        ("onnxruntime", "KIND_CPU"): ("numpy", "yes"),
        ("torch", "KIND_CPU"): ("dlpack", "no"),
        ("torch", "KIND_GPU"): ("dlpack", "no"),
    }
    for (engine, kind), (transport, force_cpu) in cases.items():
        repo = render_repository(
            export, tmp_path / f"{engine}-{kind}", engine, dims, sha, settings=RenderSettings(instance_kind=kind)
        )
        for model in (contract.GENERATION_MODEL, contract.RANKING_MODEL):
            cfg = _parse(repo / model / "config.pbtxt")
            params = {k: v.string_value for k, v in cfg.parameters.items()}
            assert params["kv_transport"] == transport, (engine, kind, model)
            assert params["FORCE_CPU_ONLY_INPUT_TENSORS"] == force_cpu, (engine, kind, model)
            assert model_config_pb2.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind) == kind
        fused = _parse(repo / contract.FUSED_MODEL / "config.pbtxt")
        assert model_config_pb2.ModelInstanceGroup.Kind.Name(fused.instance_group[0].kind) == kind


def test_cascade_is_rendered_only_beside_a_compatible_unified_model(tiny_run, tiny_export, tmp_path):
    """The cascade shares OneRanker's preprocess, so its semantic IDs and item tables must match;
    its model checks both of its checkpoints; TensorRT does not render it."""
    import json
    import shutil

    from oneranker_build.render import CascadeExports, RenderError, render_repository

    export, dims = tiny_export / "export", _dims(tiny_export)
    sha = artifacts.read_export_info(export)["checkpoint_sha256"]
    halves = {h: tiny_export / "export_cascade" / h for h in artifacts.CASCADE_HALVES}
    cascade = CascadeExports(halves["generator"], halves["ranker"])
    repo = render_repository(export, tmp_path / "ok", "onnxruntime", dims, sha, cascade=cascade)
    cfg = _parse(repo / contract.CASCADE_MODEL / "config.pbtxt")
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["system"] == "cascade"
    assert params["checkpoint_sha256"].split(",") == [
        artifacts.read_export_info(halves[h])["checkpoint_sha256"] for h in artifacts.CASCADE_HALVES
    ]
    assert (repo / contract.CASCADE_MODEL / "1" / "artifacts" / "ranker" / "ranker.onnx").exists()
    with pytest.raises(RenderError, match="onnxruntime and torch"):
        render_repository(export, tmp_path / "trt", "tensorrt", dims, sha, cascade=cascade)
    foreign = tmp_path / "foreign_ranker"
    shutil.copytree(halves["ranker"], foreign)
    info = json.loads((foreign / "export_info.json").read_text())
    info["sid_version"] = "another-tokenizer"
    (foreign / "export_info.json").write_text(json.dumps(info))
    with pytest.raises(RenderError, match="sid_version"):
        render_repository(
            export, tmp_path / "bad", "onnxruntime", dims, sha, cascade=CascadeExports(halves["generator"], foreign)
        )


def test_build_flags_set_instances_and_threads_of_every_engine_model(tiny_export, tmp_path):
    """`oneranker build --engine-instances N --intra-op-threads T` reaches every engine model's
    config (and only those); unset flags keep the defaults (two instances, one thread)."""
    import argparse
    import dataclasses

    from oneranker_build.cli import register, settings_overrides
    from oneranker_build.render import SPILL_PRIORITY, RenderSettings, render_repository

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(), lambda p: None, None, None)
    export, dims = tiny_export / "export", _dims(tiny_export)
    sha = artifacts.read_export_info(export)["checkpoint_sha256"]
    engine_models = (contract.FUSED_MODEL, contract.NUMPY_BEAM_MODEL, contract.GENERATION_MODEL, contract.RANKING_MODEL)
    for argv, (count, threads) in (
        (["build"], (2, 1)),
        (["build", "--engine-instances", "1", "--intra-op-threads", "2"], (1, 2)),
        (["build", "--engine-instances", "3"], (3, 1)),
    ):
        overrides = settings_overrides(parser.parse_args(argv))
        settings = dataclasses.replace(RenderSettings(), **overrides)
        repo = render_repository(export, tmp_path / "-".join(argv), "onnxruntime", dims, sha, settings=settings)
        for model in engine_models:
            cfg = _parse(repo / model / "config.pbtxt")
            assert sum(g.count for g in cfg.instance_group) == count, (argv, model)
            assert cfg.parameters["intra_op_threads"].string_value == str(threads), (argv, model)
            # one preferred instance (priority 1) and the rest spill-over, when there is a rest
            groups = [(g.name, g.count, g.rate_limiter.priority) for g in cfg.instance_group]
            want = [(f"{model}_preferred", 1, 1), (f"{model}_spill", count - 1, SPILL_PRIORITY)]
            assert groups == (want if count > 1 else [("", 1, 0)]), (argv, groups)
        preprocess = _parse(repo / contract.PREPROCESS_MODEL / "config.pbtxt")
        # not an engine model: --engine-instances leaves it at its own default, in one plain group
        assert [(g.count, g.rate_limiter.priority) for g in preprocess.instance_group] == [(2, 0)], argv
    plain = render_repository(
        export, tmp_path / "plain", "onnxruntime", dims, sha, settings=RenderSettings(preferred_instance=False)
    )
    for model in engine_models:
        groups = [(g.count, g.rate_limiter.priority) for g in _parse(plain / model / "config.pbtxt").instance_group]
        assert groups == [(2, 0)], (model, groups)


def test_recommender_knobs_reach_every_recommender_config(tiny_repository, tiny_export, tmp_path):
    """The counter send interval and the cancellation-check interval are render settings of the
    recommender models (fused and numpy beam search): defaults in the session repository, and a
    changed value in every one of them (the models fall back to a default when one is missing,
    so a render that dropped it would go unnoticed by serving)."""
    from oneranker_build.render import RenderSettings, render_repository

    models = (contract.FUSED_MODEL, contract.NUMPY_BEAM_MODEL)
    defaults = RenderSettings()
    export = tiny_export / "export"
    sha = artifacts.read_export_info(export)["checkpoint_sha256"]
    settings = RenderSettings(counter_interval_ms=1234, cancel_check_interval_us=77)
    repo = render_repository(export, tmp_path / "knobs", "onnxruntime", _dims(tiny_export), sha, settings=settings)
    for root, want in ((tiny_repository, defaults), (repo, settings)):
        for model in models:
            params = _parse(root / model / "config.pbtxt").parameters
            got = (params["counter_interval_ms"].string_value, params["cancel_check_interval_us"].string_value)
            assert got == (str(want.counter_interval_ms), str(want.cancel_check_interval_us)), (root, model)
