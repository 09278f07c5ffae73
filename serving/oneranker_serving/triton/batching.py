"""Batching for the `graphs` topology, where the two engine calls are separate Triton models
(`generation`, `ranking`): several requests -> one engine call -> per-request results again.

    generation: tokens [b_i, L_i, ...] + knobs (beam_width, num_candidates [b_i], exclude_idx
                [b_i, E_i]) -> one batch (history padded to the longest L, exclusions -1-padded
                to the widest) -> cand_* [b_i, N], kv re-laid out to each request's own L
    ranking:    kv [b_i, R2, S_i, DM] + cand_* [b_i, N_i] + top_k -> one batch (kv to the longest
                history, candidates -1-padded) -> rec_* per request, cut to its rec_count
The KV is numpy (ONNX Runtime) or a torch tensor on its device (torch engine, DLPack transport).
"""

from __future__ import annotations

import sys

import numpy as np

from .codec import is_torch


def _rows(value) -> int:
    return int(np.asarray(value).shape[0])


def stack_history_inputs(items: list[dict]) -> tuple[dict, list[int]]:
    """History inputs of several Triton requests (each [b_i, L_i, ...], history padded to L_i)
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


GENERATION_KNOBS = ("beam_width", "num_candidates")
CANDIDATES = ("cand_idx", "cand_logp", "cand_stream")
# what the generation graph leaves in an empty candidate slot (the ranking graph masks cand_idx < 0)
CANDIDATE_PAD = {"cand_idx": -1, "cand_logp": -1e30, "cand_stream": 0}


def _pad_columns(parts: list[np.ndarray], fill) -> np.ndarray:
    """[b_i, n_i] arrays -> [sum b_i, max n_i], right-padded with `fill`."""
    width = max(1, max(p.shape[1] for p in parts))
    return np.concatenate([np.pad(p, [(0, 0), (0, width - p.shape[1])], constant_values=fill) for p in parts])


def _host(value) -> np.ndarray:
    return value.detach().cpu().numpy() if is_torch(value) else np.asarray(value)


def stack_generation_inputs(items: list[dict]) -> tuple[dict, dict, list[int]]:
    """Generation-graph inputs of several requests -> (token batch padded to the longest history,
    knobs {beam_width, num_candidates [B], exclude_idx [B, E]}, each request's own history length)."""
    batch, own = stack_history_inputs(items)
    knobs = {k: np.concatenate([np.asarray(a[k], np.int64).reshape(-1) for a in items]) for k in GENERATION_KNOBS}
    knobs["exclude_idx"] = _pad_columns([np.asarray(a["exclude_idx"], np.int64) for a in items], -1)
    return batch, knobs, own


def generate_graphs(runner, items: list[dict], num_prefix: int, keep_device: bool = False) -> list[dict]:
    """One generation-graph call for several requests -> per request {cand_idx, cand_logp,
    cand_stream [b_i, N] (host), kv laid out for its own history (numpy, or torch where it lives
    with `keep_device`)}. The runner is built with `bind_kv=False`: the KV leaves the model."""
    batch, knobs, own = stack_generation_inputs(items)
    cands, kv = runner.generate(batch, knobs)
    cands = {k: _host(cands[k]) for k in CANDIDATES}
    kv = getattr(kv, "value", kv)
    if is_torch(kv) and not keep_device:
        kv = kv.detach().cpu().numpy()
    out, row, length = [], 0, max(own)
    for a, n in zip(items, own):
        b = _rows(a["hist_actions"])
        per = {k: np.ascontiguousarray(cands[k][row : row + b]) for k in CANDIDATES}
        per["kv"] = _contiguous(relayout_kv(kv[row : row + b], num_prefix, length, n))
        out.append(per)
        row += b
    return out


def rank_graphs(runner, items: list[dict], num_prefix: int, num_step2: int) -> list[dict]:
    """One ranking-graph call for several requests (kv [b_i, R2, S_i, DM], cand_* [b_i, N_i],
    hist_len, top_k) -> per request {rec_* [b_i, k_i]} cut to the request's own rec_count
    (rows of one request share its top_k), plus rec_count [b_i]."""
    lengths = [a["kv"].shape[2] - num_prefix - num_step2 for a in items]
    longest = max(lengths)
    kv = _concat([relayout_kv(a["kv"], num_prefix, n, longest) for a, n in zip(items, lengths)], axis=0)
    cands = {k: _pad_columns([np.asarray(a[k]) for a in items], CANDIDATE_PAD[k]) for k in CANDIDATES}
    hist_len = np.concatenate([np.asarray(a["hist_len"], np.int64).reshape(-1) for a in items])
    top_k = np.concatenate([np.asarray(a["top_k"], np.int64).reshape(-1) for a in items])
    rec = runner.rank(kv, hist_len, cands, top_k)
    names = ("rec_item_ids", "rec_scores", "rec_gen_logp", "rec_source_head")
    out, row = [], 0
    for a in items:
        b = _rows(a["hist_len"])
        count = np.asarray(rec["rec_count"][row : row + b], np.int64).reshape(-1)
        width = int(count.max()) if b else 0
        per = {k: np.ascontiguousarray(np.asarray(rec[k])[row : row + b, :width]) for k in names}
        per["rec_count"] = count
        out.append(per)
        row += b
    return out
