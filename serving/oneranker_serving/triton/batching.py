"""Batching for the split topologies (BLS, pure ensemble), where generator and ranker are
separate Triton models: several requests -> one engine call -> per-request results again.

    generator: token tensors [b_i, L_i, ...] -> one batch padded to max L -> level_logits, kv
               -> per request, kv re-laid out to that request's own L
    ranker:    kv [b_i, R2, S_i, DM] + candidates [b_i, n_i, ...] -> one batch (kv to the longest
               history, candidates zero-padded to the widest) -> scores [b_i, n_i]
The KV is numpy (ONNX Runtime) or a torch tensor on its device (torch engine, DLPack transport).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .codec import is_torch


def _rows(value) -> int:
    return int(np.asarray(value).shape[0])


def stack_generator_inputs(items: list[dict]) -> tuple[dict, list[int]]:
    """Generator inputs of several Triton requests (each [b_i, L_i, ...], history padded to L_i)
    -> one batch padded to the longest L; returns each request's own L."""
    own = [int(np.asarray(a["hist_actions"]).shape[1]) for a in items]
    length = max(own)

    def cat(name, dtype, pad_axis=1):
        parts = []
        for a in items:
            v = np.asarray(a[name], dtype=dtype)
            if pad_axis is not None and v.shape[pad_axis] < length:
                widths = [(0, 0)] * v.ndim
                widths[pad_axis] = (0, length - v.shape[pad_axis])
                v = np.pad(v, widths)
            parts.append(v)
        return np.concatenate(parts)

    batch = {
        "user_features": cat("user_features", np.int64, None),
        "hist_sids": cat("hist_sids", np.int64),
        "hist_actions": cat("hist_actions", np.int64),
        "hist_dt": cat("hist_dt", np.float32),
        "hist_len": np.concatenate([np.asarray(a["hist_len"], np.int64).reshape(-1) for a in items]),
    }
    return batch, own


def _concat(parts: list, axis: int):
    """np.concatenate or torch.cat, whichever the parts are (KV stays where it lives; a torch
    tensor here means the torch runner module is already loaded)."""
    if is_torch(parts[0]):
        return sys.modules["oneranker_serving.runners.torch"].cat(parts, dim=axis)
    return np.concatenate(parts, axis=axis)


def _contiguous(value):
    return value.contiguous() if is_torch(value) else np.ascontiguousarray(value)


def relayout_kv(kv, num_prefix: int, from_len: int, to_len: int):
    """kv [..., F + from_len + T2, DM] -> [..., F + to_len + T2, DM]: the H1 segment is cut or
    zero-padded, the H2 segment stays last (positions past the true length are masked anyway).
    numpy in, numpy out; torch in, torch out on the same device."""
    if from_len == to_len:
        return kv
    h1_end = num_prefix + from_len
    h1, h2 = kv[..., :h1_end, :], kv[..., h1_end:, :]
    if to_len < from_len:
        h1 = h1[..., : num_prefix + to_len, :]
    else:
        shape = tuple(kv.shape[:-2]) + (to_len - from_len, kv.shape[-1])
        pad = kv.new_zeros(shape) if is_torch(kv) else np.zeros(shape, dtype=kv.dtype)
        h1 = _concat([h1, pad], axis=-2)
    return _concat([h1, h2], axis=-2)


def split_generator_outputs(
    items: list[dict], level_logits: np.ndarray, kv, own: list[int], num_prefix: int
) -> list[dict]:
    """One batch of generator outputs -> per-request outputs, kv (numpy, or torch on its device)
    laid out for the request's L."""
    out, row, length = [], 0, max(own)
    for a, n in zip(items, own):
        b = _rows(a["hist_actions"])
        out.append(
            {
                "level_logits": level_logits[row : row + b],
                "kv": _contiguous(relayout_kv(kv[row : row + b], num_prefix, length, n)),
            }
        )
        row += b
    return out


def stack_ranker_inputs(items: list[dict], num_prefix: int, num_step2: int) -> tuple[dict, list[tuple[int, int]]]:
    """Ranker inputs of several requests (kv [b_i, R2, S_i, DM], candidates [b_i, n_i, ...]) ->
    one batch (kv re-laid out to the longest history, candidates zero-padded to the widest);
    returns (rows, candidates) per request."""
    lengths = [a["kv"].shape[2] - num_prefix - num_step2 for a in items]
    longest = max(lengths)
    shapes = [(_rows(a["cand_bid"]), int(np.asarray(a["cand_bid"]).shape[1])) for a in items]
    width = max(1, max(n for _, n in shapes))
    kv = _concat([relayout_kv(a["kv"], num_prefix, n, longest) for a, n in zip(items, lengths)], axis=0)

    def pad(name, dtype):
        parts = []
        for a in items:
            v = np.asarray(a[name], dtype=dtype)
            widths = [(0, 0)] * v.ndim
            widths[1] = (0, width - v.shape[1])
            parts.append(np.pad(v, widths))
        return np.concatenate(parts)

    batch = {
        "kv": kv,
        "hist_len": np.concatenate([np.asarray(a["hist_len"], np.int64).reshape(-1) for a in items]),
        "cand_sids": pad("cand_sids", np.int64),
        "cand_attrs": pad("cand_attrs", np.int64),
        "cand_bid": pad("cand_bid", np.float32),
    }
    return batch, shapes


def split_scores(scores: np.ndarray, shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    out, row = [], 0
    for b, n in shapes:
        out.append(np.ascontiguousarray(scores[row : row + b, :n]))
        row += b
    return out


def generate_split(runner, batch: dict, keep_device: bool = False) -> tuple[np.ndarray, Any]:
    """Run the generator for topologies (b)/(c), where the KV leaves the runner as a tensor of
    the Triton model (the runner is built with `bind_kv=False`). level_logits come back on the
    host (beam search is numpy); the KV as numpy, or, with `keep_device` (torch engine, DLPack
    transport), as the torch tensor on the runner's device."""
    level_logits, kv = runner.generate(batch)
    value = getattr(kv, "value", kv)
    if is_torch(value) and not keep_device:
        value = value.detach().cpu().numpy()
    return np.asarray(level_logits), value if is_torch(value) else np.asarray(value)


def rank_split(runner, batch: dict) -> np.ndarray:
    """Run the ranker on a KV that came from another model (numpy, or torch via DLPack)."""
    return np.asarray(
        runner.rank(batch["kv"], batch["hist_len"], batch["cand_sids"], batch["cand_attrs"], batch["cand_bid"])
    )
