"""Request and response arrays of the Triton models, named by the contract (numpy only).

preprocess:  raw arrays (contract.PUBLIC inputs) -> Request -> validate/tokenize
             -> token arrays (contract.PREPROCESS outputs, history padded to its bucket)
             + status (history_unknown, history_dropped, model_version)
recommender: token arrays -> Parsed -> Recommender.recommend_parsed -> Response -> rec_* arrays
             (+ status when it validated the request itself: the fused model)
"""

from __future__ import annotations

import numpy as np

from oneranker_client import contract

from ..recommender import Parsed, Request, RequestValidator, Response
from ..tokenize import RequestError, UserTokens, bucket_for, pad_batch, pad_exclusions


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


def status_arrays(tokens: UserTokens | Response, model_version: int) -> dict[str, np.ndarray]:
    """contract.STATUS_OUTPUTS of one request, batch dim 1: history counts and the answering version."""
    unknown, dropped = (
        (tokens.unknown, tokens.dropped)
        if isinstance(tokens, UserTokens)
        else (tokens.history_unknown, tokens.history_dropped)
    )
    return {
        "history_unknown": np.array([[unknown]], dtype=np.int64),
        "history_dropped": np.array([[dropped]], dtype=np.int64),
        "model_version": np.array([[model_version]], dtype=np.int64),
    }


def tokens_to_arrays(validator: RequestValidator, req: Request, model_version: int) -> dict[str, np.ndarray]:
    """Validate + tokenize one raw request -> contract.PREPROCESS outputs (batch dim 1, history
    right-padded to its length bucket so same-bucket requests batch in shape-strict engines)."""
    tokens, k, n, w, exclude = validator.validate(req)
    padded = pad_batch([tokens], bucket_for(tokens.length, validator.serve.length_buckets))  # one shape per bucket
    return {
        "user_features": padded["user_features"],
        "hist_sids": padded["hist_sids"],
        "hist_actions": padded["hist_actions"],
        "hist_dt": padded["hist_dt"],
        "hist_len": np.array([[tokens.length]], dtype=np.int64),
        "options": np.array([[k, n, w]], dtype=np.int32),
        "exclude_idx": pad_exclusions([exclude])[:1],
        "beam_width": np.array([[w]], dtype=np.int64),
        "num_candidates": np.array([[n]], dtype=np.int64),
        "top_k": np.array([[k]], dtype=np.int64),
        **status_arrays(tokens, model_version),
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
    exclude = np.asarray(arrays["exclude_idx"]).reshape(-1)
    return Parsed(slot, tokens, k, n, w, exclude[exclude >= 0])


def response_arrays(resp: Response, model_version: int | None = None) -> dict[str, np.ndarray]:
    """Response -> contract.REC_OUTPUTS, batch dim 1, and with a model_version (the model that
    validated the request: the fused one) contract.STATUS_OUTPUTS too."""
    values = {
        "rec_item_ids": resp.item_ids,
        "rec_scores": resp.scores,
        "rec_gen_logp": resp.gen_logp,
        "rec_source_head": resp.source_head,
    }
    out = {spec.name: np.asarray(values[spec.name], dtype=spec.numpy_dtype)[None] for spec in contract.REC_OUTPUTS}
    if model_version is not None:
        out.update(status_arrays(resp, model_version))
    return out
