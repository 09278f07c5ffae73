"""Reference candidate selection between the generator and the ranker (numpy only).

decoder state [H, Z] (one user) + the decoder's tables (`decoders.py`) + trie
  -> per generation stream (6 interest heads + 1 bagged value stream) beam search over the
     semantic-ID levels, constrained to paths of real ads
  -> union over streams, dedupe (best log-prob wins, its stream is the source head),
     drop excluded ads, keep the `num_candidates` most probable
  -> ad_idx [n], gen_logp [n], head [n]
"""

from __future__ import annotations

import numpy as np

from .tables import GenerationTables

NEG = -1e30


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def stream_matrix(num_interest: int, num_value: int) -> np.ndarray:
    """[S, H] averaging matrix: one stream per interest head, one bagged value stream (mean of the
    value heads' log-probabilities); float32, shared by this reference and the in-graph search."""
    streams = num_interest + (1 if num_value else 0)
    mat = np.zeros((streams, num_interest + num_value), dtype=np.float32)
    mat[np.arange(num_interest), np.arange(num_interest)] = 1.0
    if num_value:
        mat[num_interest, num_interest:] = 1.0 / num_value
    return mat


def beam_search(state: np.ndarray, tables: GenerationTables, beam_width: int, margins: list | None = None):
    """decoder state [H, Z] -> (ad_idx [S, W], logp [S, W]) per stream S. Each head scores the
    next level given its stream's live prefixes (`tables.decoder.level_logits`). A stream's level
    log-probs are the mean of its heads' log-softmaxes (bagging for the value stream). Paths
    follow the trie only; streams with fewer than W legal paths pad with ad_idx -1, logp NEG.
    `margins`, when given, receives per level the smallest gap between the last kept and the
    first dropped path log-prob over the streams (inf where nothing was dropped): how close a
    cut came to a tie, which decides whether float32 and float64 searches may differ."""
    depth, codes = len(tables.trie_children), tables.trie_children[0].shape[1]
    avg = stream_matrix(tables.num_interest_heads, tables.num_value_heads).astype(np.float64)
    head_stream = avg.argmax(0)  # [H] stream each head belongs to
    s = avg.shape[0]
    nodes = np.zeros((s, 1), dtype=np.int64)
    logp = np.zeros((s, 1), dtype=np.float64)
    prefix = np.zeros((s, 1, 0), dtype=np.int64)
    for level in range(depth):
        logits = tables.decoder.level_logits(state, level, prefix[head_stream])  # [H, b|1, K]
        per_head = log_softmax(np.broadcast_to(logits, (len(head_stream), nodes.shape[1], codes)))
        step = np.einsum("sh,hbk->sbk", avg, per_head)
        alive = logp > NEG / 2
        children = tables.trie_children[level][np.where(alive, nodes, 0)]  # [S, b, K]
        allowed = (children >= 0) & alive[..., None]
        total = np.where(allowed, logp[..., None] + step, NEG).reshape(s, -1)
        width = min(beam_width, total.shape[1])
        if margins is not None:
            margins.append(_cut_margin(total, width))
        top = np.argpartition(-total, width - 1, axis=1)[:, :width]
        order = np.argsort(-np.take_along_axis(total, top, 1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, 1)
        beam, code = top // codes, top % codes
        logp = np.take_along_axis(total, top, 1)
        nodes = np.take_along_axis(children.reshape(s, -1), top, 1)
        prefix = np.concatenate([np.take_along_axis(prefix, beam[..., None], 1), code[..., None]], axis=2)
    alive = logp > NEG / 2
    return np.where(alive, nodes, -1), np.where(alive, logp, NEG)


def _cut_margin(total: np.ndarray, width: int) -> float:
    """[S, M] path log-probs, `width` kept per row -> smallest (kept - dropped) over live rows."""
    if width >= total.shape[1]:
        return float("inf")
    ranked = -np.sort(-total, axis=1)
    kept, dropped = ranked[:, width - 1], ranked[:, width]
    live = dropped > NEG / 2
    return float((kept - dropped)[live].min()) if live.any() else float("inf")


def merge_candidates(ad_idx: np.ndarray, logp: np.ndarray, num_candidates: int, exclude: np.ndarray | None = None):
    """Union of every stream's beams -> (ad_idx [n], logp [n], stream [n]), best log-prob per ad,
    sorted by log-prob (ties: lower stream, then lower ad index), excluded ads removed."""
    stream = np.broadcast_to(np.arange(ad_idx.shape[0])[:, None], ad_idx.shape).reshape(-1)
    ads, lp = ad_idx.reshape(-1), logp.reshape(-1)
    keep = ads >= 0
    if exclude is not None and len(exclude):
        keep &= ~np.isin(ads, exclude)
    ads, lp, stream = ads[keep], lp[keep], stream[keep]
    order = np.lexsort((ads, stream, -lp))
    ads, lp, stream = ads[order], lp[order], stream[order]
    _, first = np.unique(ads, return_index=True)
    first = np.sort(first)[:num_candidates]
    return ads[first], lp[first], stream[first]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, ties by position (stable)."""
    return np.argsort(-scores, kind="stable")[:k]
