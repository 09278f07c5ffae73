"""Warm-up samples of every non-ensemble model and the example request of a release, made from
the export's own item tables (random ids would be unknown to the version; zero action codes are
refused), so Triton runs each model once before it reports the model ready.

    export dir -> example request (known content and ad ids, valid actions and times)
      -> preprocess, recommender (raw)           contract.PUBLIC inputs
      -> recommender_numpy_beam, cascade         the preprocess token outputs (the validator)
      -> generation                              tokens + knobs (contract.GENERATION inputs)
      -> ranking                                 the generation graph's own outputs (run here)
    -> <model>/warmup/<input> raw row-major little-endian files (batch dimension excluded) and
       the `model_warmup` block of its config.pbtxt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from oneranker_client import contract
from oneranker_client.contract import ACTION_CLICK, ACTION_CONTENT_VIEW, ACTION_IMPRESSION
from oneranker_serving.artifacts import load_recommender, load_validator, read_export_info
from oneranker_serving.recommender import Request, RequestValidator
from oneranker_serving.triton import arrays, batching

WARMUP_DIR = "warmup"  # Triton reads input_data_file from <model>/warmup/
EXAMPLE_EVENTS = 8  # history length of the example request
EXAMPLE_REQUEST_TIME = 1_700_000_000  # unix seconds; the history ends one minute before


def example_request(validator: RequestValidator) -> Request:
    """A valid request of the release `validator` checks against: alternating content views and
    ad impressions/clicks on the first ids of its catalogue, one minute apart, user features 0."""
    tables = validator.tables
    content, ads = tables.content_ids[:EXAMPLE_EVENTS], tables.ad_ids[:EXAMPLE_EVENTS]
    ids, actions = [], []
    for i in range(EXAMPLE_EVENTS):
        if i % 2 == 0 and len(content):
            ids.append(int(content[(i // 2) % len(content)]))
            actions.append(ACTION_CONTENT_VIEW)
        else:
            ids.append(int(ads[i % len(ads)]))
            actions.append(ACTION_CLICK if i % 4 == 3 else ACTION_IMPRESSION)
    times = EXAMPLE_REQUEST_TIME - 60 * np.arange(EXAMPLE_EVENTS, 0, -1)
    return Request(
        user_features=np.zeros(validator.num_user_features, np.int64),
        item_ids=np.array(ids, np.int64),
        actions=np.array(actions, np.int64),
        timestamps=times.astype(np.int64),
        request_time=EXAMPLE_REQUEST_TIME,
    )


def example_request_json(export_dir: Path) -> dict:
    """The example request as the client's JSON (`oneranker-client recommend --json`)."""
    req = example_request(load_validator(export_dir))
    return {
        name: (np.asarray(getattr(req, name)).tolist() if name != "request_time" else int(req.request_time))
        for name in ("user_features", "item_ids", "actions", "timestamps", "request_time")
    }


def warmup_inputs(export_dir: Path, engine: str) -> dict[str, dict[str, np.ndarray]]:
    """{model name: {input name: array without the batch dimension}} for every non-ensemble
    model; `engine` runs the generation graph once for the ranking sample (tensorrt: ONNX Runtime
    over the same export)."""
    export_dir = Path(export_dir)
    validator = load_validator(export_dir)
    req = example_request(validator)
    tokens = arrays.tokens_to_arrays(validator, req, model_version=0)
    raw = {
        "user_features": req.user_features,
        "item_ids": req.item_ids,
        "actions": req.actions,
        "timestamps": req.timestamps,
        "request_time": np.array([req.request_time], np.int64),
    }
    token_inputs = {t.name: tokens[t.name][0] for t in contract.NUMPY_BEAM.inputs}
    generation = {t.name: tokens[t.name][0] for t in contract.GENERATION.inputs}
    runner_engine = "onnxruntime" if engine == "tensorrt" else engine
    rec = load_recommender(export_dir, engine=runner_engine, threads=1, bind_kv=False, search="graph")
    info = read_export_info(export_dir)
    item = {t.name: tokens[t.name] for t in contract.GENERATION.inputs}  # batch dimension kept
    generated = batching.generate_graphs(rec.runner, [item], info["dims"]["F"])[0]
    ranking = {
        "kv": np.asarray(generated["kv"])[0],
        "hist_len": tokens["hist_len"][0],
        **{k: np.asarray(generated[k])[0] for k in ("cand_idx", "cand_logp", "cand_stream")},
        "top_k": tokens["top_k"][0],
    }
    return {
        contract.PREPROCESS_MODEL: raw,
        contract.FUSED_MODEL: raw,
        contract.NUMPY_BEAM_MODEL: token_inputs,
        contract.CASCADE_MODEL: token_inputs,
        contract.GENERATION_MODEL: generation,
        contract.RANKING_MODEL: ranking,
    }


def warmup_block(spec: contract.ModelSpec, inputs: dict[str, np.ndarray]) -> str:
    """The `model_warmup` block of a model's config: one sample, batch size 1, every input of
    `spec` present in `inputs` read from <model>/warmup/<input name>."""
    lines = ["model_warmup [", "  {", '    name: "example_request"', "    batch_size: 1"]
    for t in spec.inputs:
        if t.name not in inputs:
            continue
        value = np.asarray(inputs[t.name], dtype=t.numpy_dtype)
        dims = ", ".join(str(d) for d in value.shape)
        lines.append(
            f'    inputs {{ key: "{t.name}" value: {{ data_type: {t.dtype} dims: [ {dims} ] '
            f'input_data_file: "{t.name}" }} }}'
        )
    lines += ["  }", "]"]
    return "\n".join(lines)


def write_warmup_files(model_dir: Path, spec: contract.ModelSpec, inputs: dict[str, np.ndarray]) -> None:
    folder = Path(model_dir) / WARMUP_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for t in spec.inputs:
        if t.name in inputs:
            value = np.ascontiguousarray(inputs[t.name], dtype=np.dtype(t.numpy_dtype).newbyteorder("<"))
            (folder / t.name).write_bytes(value.tobytes())
