"""Pure serving glue used by the Triton Python models (no pb_utils here, testable without a
server): load a rendered model's artifacts, turn request arrays into `serving.Parsed`, turn
responses into output arrays named by the contract.

    preprocess:  raw arrays (contract.PUBLIC inputs) -> token arrays (contract.PREPROCESS outputs)
    recommender: token arrays -> Parsed -> Recommender.recommend_parsed -> rec_* arrays
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from oneranker.config import ServeConfig
from oneranker.features import RequestError, UserTokens
from oneranker.serving import Parsed, Recommender, Request, Response
from oneranker_client import contract

from .export import load_generation_tables


class ArtifactMismatch(RuntimeError):
    pass


def read_export_info(artifact_dir: Path, expected_checkpoint: str | None = None) -> dict:
    info = json.loads((Path(artifact_dir) / "export_info.json").read_text())
    if expected_checkpoint and info["checkpoint_sha256"] != expected_checkpoint:
        raise ArtifactMismatch(
            f"{artifact_dir}: artifacts belong to checkpoint {info['checkpoint_sha256'][:12]}, the model "
            f"config expects {expected_checkpoint[:12]}; re-run `oneranker build`"
        )
    return info


def serve_config(info: dict) -> ServeConfig:
    raw = dict(info["serve"])
    raw["length_buckets"] = tuple(raw["length_buckets"])
    return ServeConfig(**raw)


def load_recommender(artifact_dir: Path, engine: str, threads: int = 2, expected_checkpoint: str | None = None,
                     runner=None) -> Recommender:
    from .runners import make_runner

    artifact_dir = Path(artifact_dir)
    info = read_export_info(artifact_dir, expected_checkpoint)
    gen, items = load_generation_tables(artifact_dir / "generation_tables.safetensors",
                                        info["num_interest_heads"], info["num_value_heads"])
    runner = runner or make_runner(engine, artifact_dir, threads=threads)
    return Recommender(runner, items, gen, serve_config(info), info["feature_cardinality"], info["dims"]["F"])


def _first(value, name: str):
    arr = np.asarray(value).reshape(-1)
    if arr.size != 1:
        raise RequestError(f"{name} must hold exactly one value, got {arr.size}")
    return arr[0]


def _check_batch_one(arrays: dict) -> None:
    for name, value in arrays.items():
        if value is not None and np.asarray(value).shape[:1] != (1,):
            raise RequestError(f"{name} must have a leading batch dimension of 1, got shape {np.shape(value)}")


def request_from_arrays(arrays: dict) -> Request:
    """contract.PUBLIC input arrays ([1, ...] each; optional ones may be None) -> Request."""
    _check_batch_one(arrays)
    for spec in contract.PUBLIC.inputs:
        value = arrays.get(spec.name)
        if value is None:
            if not spec.optional:
                raise RequestError(f"missing input {spec.name}")
            continue
        if np.asarray(value).dtype != spec.numpy_dtype:
            raise RequestError(f"{spec.name} must be {spec.wire_dtype}, got {np.asarray(value).dtype}")
        if np.asarray(value).ndim != len(spec.dims) + 1:
            raise RequestError(f"{spec.name} must have {len(spec.dims) + 1} dims (batch first), got {np.ndim(value)}")
    if np.issubdtype(arrays["timestamps"].dtype, np.floating) and not np.isfinite(arrays["timestamps"]).all():
        raise RequestError("timestamps must be finite")

    def option(name):
        value = arrays.get(name)
        return None if value is None else int(_first(value, name))

    exclude = arrays.get("exclude_item_ids")
    return Request(
        user_features=arrays["user_features"][0],
        item_ids=arrays["item_ids"][0],
        actions=arrays["actions"][0],
        timestamps=arrays["timestamps"][0],
        request_time=int(_first(arrays["request_time"], "request_time")),
        top_k=option("top_k"),
        num_candidates=option("num_candidates"),
        beam_width=option("beam_width"),
        exclude_item_ids=np.zeros(0, np.int64) if exclude is None else exclude[0],
    )


def tokens_to_arrays(rec: Recommender, req: Request) -> dict[str, np.ndarray]:
    """Validate + tokenize one raw request -> contract.PREPROCESS outputs (batch dim 1)."""
    tokens, k, n, w, exclude = rec.validate(req)
    return {
        "user_features": tokens.user_features[None],
        "hist_sids": tokens.hist_sids[None],
        "hist_actions": tokens.hist_actions[None],
        "hist_dt": tokens.hist_dt[None],
        "hist_len": np.array([[tokens.length]], dtype=np.int64),
        "options": np.array([[k, n, w]], dtype=np.int32),
        "exclude_idx": exclude.astype(np.int64)[None],
    }


def parsed_from_arrays(slot: int, arrays: dict) -> Parsed:
    """contract.PREPROCESS outputs of one request -> Parsed (padding stripped by hist_len)."""
    length = int(np.asarray(arrays["hist_len"]).reshape(-1)[0])
    k, n, w = (int(x) for x in np.asarray(arrays["options"]).reshape(-1))
    tokens = UserTokens(
        user_features=np.asarray(arrays["user_features"])[0],
        hist_sids=np.asarray(arrays["hist_sids"])[0, :length],
        hist_actions=np.asarray(arrays["hist_actions"])[0, :length],
        hist_dt=np.asarray(arrays["hist_dt"])[0, :length],
    )
    return Parsed(slot, tokens, k, n, w, np.asarray(arrays["exclude_idx"]).reshape(-1))


def response_arrays(resp: Response) -> dict[str, np.ndarray]:
    """Response -> contract.PUBLIC outputs, batch dim 1."""
    values = {"rec_item_ids": resp.item_ids, "rec_scores": resp.scores, "rec_gen_logp": resp.gen_logp,
              "rec_source_head": resp.source_head}
    return {spec.name: np.asarray(values[spec.name], dtype=spec.numpy_dtype)[None] for spec in contract.PUBLIC.outputs}


class _NoRunner:
    """Runner of a model that only validates (preprocess): calling it is a bug."""

    def generate(self, inputs):
        raise RuntimeError("the preprocess model has no engine")

    rank = generate


NO_RUNNER = _NoRunner()
