"""Trie-constrained beam search over semantic-ID levels, in torch, exportable (torch.export ->
ONNX / TensorRT): the part of the generation graph that turns the user's decoder state into the
candidate set, so a served request is two engine calls and nothing goes back to the host between
generation and ranking.

    decoder state [B, H, Z] (`oneranker.decoders`) + per-request knobs
      beam_width [B], num_candidates [B], exclude_idx [B, E] (dense ad indices, -1 = padding)
      -> per stream (S = interest heads + 1 bagged value stream), for each level l = 0..D-1:
         stream log-probs of every child of every live beam [B, S, w, K] (the decoder),
         + beam log-prob, children outside the trie -> NEG, TopK over w*K (k = the batch's
         largest beam width, positions past a request's own width masked)
      -> union of the S*W final beams: the duplicate of an ad with the better log-prob wins (ties:
         the lower stream), excluded ads dropped, TopK by log-prob (k = the batch's largest
         num_candidates, positions past a request's own count masked)
      -> cand_idx [B, N] int64 (-1 = empty slot), cand_logp [B, N] float32, cand_stream [B, N] int64

`oneranker_serving.selection` is the numpy reference this module is tested against: the same
streams, trie, merge and tie rules; candidate sets differ only where two log-probs at a cut are
equal to float precision.

Both decoders (factorized, prefix-conditioned) sit behind `StreamDecoder.stream_log_probs`; the
graph's inputs and outputs do not depend on which one. Every op here is in the onnx-tensorrt
supported list (TopK's K is a runtime tensor below 3840 there; the serve limits keep it so).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from oneranker_serving.selection import stream_matrix  # noqa: F401  (re-exported: export, benches)

NEG = -1e30


class StreamDecoder(nn.Module):
    """Per-stream log-probabilities of every child of every live beam, from one of the model's
    decoders (`oneranker.decoders`, in its graph form): each head scores its stream's beams,
    log-softmax per head, then the stream's mean over its heads (one MatMul by `streams` [S, H]).

    node_rows(level, prefixes [nodes, level]) -> [nodes, R]   once per trie level, at export
    user_terms(state [B, H, Z])                -> per level    once per call
    stream_log_probs(terms, level, rows [B, H, w, R] | None) -> [B, S, w*K]   (w = 1 at level 0)

    The decoder's per-weights tables become constants of the exported graph."""

    def __init__(self, decoder, streams: np.ndarray):
        super().__init__()
        self.decoder = decoder
        self.codes = decoder.codes
        with torch.no_grad():
            consts = decoder.graph_constants()
        self.const_names = tuple(consts)
        for name, value in consts.items():
            self.register_buffer(f"const_{name}", value.detach().float().clone())
        self.register_buffer("streams", torch.as_tensor(streams, dtype=torch.float32))
        self.register_buffer("head_stream", torch.as_tensor(np.asarray(streams).argmax(0), dtype=torch.int64))

    def consts(self) -> dict:
        return {name: getattr(self, f"const_{name}") for name in self.const_names}

    def node_rows(self, level: int, prefixes: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return self.decoder.prefix_rows(level, torch.as_tensor(prefixes, dtype=torch.int64)).float().contiguous()

    def user_terms(self, state) -> list:
        return self.decoder.user_terms(state, self.consts())

    def stream_log_probs(self, terms, level, rows):
        per_head = torch.log_softmax(self.decoder.node_logits(terms[level], level, rows, self.consts()), dim=-1)
        b = per_head.shape[0]
        return torch.matmul(self.streams, per_head.reshape(b, per_head.shape[1], -1))


def _per_request_cut(values: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
    """values [B, ..., k] sorted descending along the last axis: positions >= limit[b] -> NEG."""
    pos = torch.arange(values.shape[-1], device=values.device)
    keep = pos < limit.view(-1, *([1] * (values.dim() - 1)))
    return torch.where(keep, values, NEG)


def child_prefixes(children: np.ndarray, prefixes: np.ndarray, num_children: int) -> np.ndarray:
    """children [nodes_l, K] (node ids at level l+1, -1 = none), prefixes [nodes_l, l] ->
    [nodes_{l+1}, l+1]: each child's prefix is its parent's plus the child's code."""
    out = np.zeros((num_children, prefixes.shape[1] + 1), dtype=np.int64)
    parent, code = np.nonzero(children >= 0)
    out[children[parent, code]] = np.concatenate([prefixes[parent], code[:, None]], axis=1)
    return out


class TrieBeamSearch(nn.Module):
    """Beam search per stream over the trie of legal ad paths, then merge, dedupe, exclusions.

    trie: level l -> [nodes_l, K] child node id (last level: ad index), -1 where no child.
    A beam is a trie node. Everything its prefix (the codes on the path to it) adds to the
    decoder is a row of `node_rows_{level}` [nodes_l, R], tabulated at export, so a level costs two
    lookups by node id (its row, its children) and no prefix is carried between levels. The rows
    are float32 [nodes_l, R] beside the int64 child table [nodes_l, K]; R = K (factorized) or the
    hidden width (conditioned), so they add at most half the trie's bytes to the graph.
    Positions past a request's own beam width are cut with one mask, `keep` [B, 1, W]."""

    def __init__(self, decoder: StreamDecoder, trie: list):
        super().__init__()
        self.decoder = decoder
        self.depth = len(trie)
        prefixes = np.zeros((1, 0), dtype=np.int64)  # the root's
        for level, children in enumerate(trie):
            children = np.asarray(children)
            self.register_buffer(f"trie_{level}", torch.as_tensor(children, dtype=torch.int64))
            if level > 0:  # the root has no prefix
                self.register_buffer(f"node_rows_{level}", decoder.node_rows(level, prefixes))
            if level + 1 < self.depth:
                prefixes = child_prefixes(children, prefixes, len(trie[level + 1]))

    def trie_level(self, level: int) -> torch.Tensor:
        return getattr(self, f"trie_{level}")

    def forward(self, state, beam_width, num_candidates, exclude_idx):
        """state [B, ...] (the decoder's), beam_width [B], num_candidates [B], exclude_idx [B, E]
        -> cand_idx [B, N], cand_logp [B, N], cand_stream [B, N] (see module docstring)."""
        b = state.shape[0]
        s = self.decoder.streams.shape[0]
        codes = self.decoder.codes
        width = beam_width.max().item()  # one TopK k per batch: the largest requested width
        torch._check(width >= 1)
        terms = self.decoder.user_terms(state)
        keep = torch.arange(width, device=state.device) < beam_width.view(-1, 1, 1)  # [B, 1, W]
        # level 0: every stream starts at the root (node 0)
        root = self.trie_level(0)[0]  # [K]
        total = torch.where(root >= 0, self.decoder.stream_log_probs(terms, 0, None), NEG)  # [B, S, K]
        k = torch.sym_min(width, codes)
        logp, flat = torch.topk(total, k, dim=-1)  # sorted; ties: the lower flat index first
        logp = torch.where(keep[..., :k], logp, NEG)
        nodes = F.embedding(flat, root.unsqueeze(-1)).squeeze(-1)  # [B, S, k]; embedding: one Gather
        for level in range(1, self.depth):
            live = nodes.shape[2]
            safe = nodes.clamp(min=0)  # a dead beam (-1) reads node 0; its log-prob stays NEG
            # each head follows its stream's beams: [B, H, w] -> their prefix rows [B, H, w, R]
            rows = F.embedding(torch.index_select(safe, 1, self.decoder.head_stream), self.node_rows(level))
            step = self.decoder.stream_log_probs(terms, level, rows).view(b, s, live, codes)
            children = F.embedding(safe, self.trie_level(level))  # [B, S, w, K]
            # NEG + a finite log-prob rounds to NEG in float32, so a dead beam's children stay dead
            total = torch.where(children >= 0, logp.unsqueeze(-1) + step, NEG).reshape(b, s, live * codes)
            k = torch.sym_min(width, live * codes)
            torch._check(k >= 1)
            logp, flat = torch.topk(total, k, dim=-1)
            logp = torch.where(keep[..., :k], logp, NEG)
            nodes = torch.gather(children.reshape(b, s, live * codes), 2, flat)
        return self.merge(nodes, logp, num_candidates, exclude_idx)

    def node_rows(self, level: int) -> torch.Tensor:
        """[nodes_level, R]: the decoder's per-prefix row of each node of `level` (level >= 1)."""
        return getattr(self, f"node_rows_{level}")

    def merge(self, ads, logp, num_candidates, exclude_idx):
        """ads, logp [B, S, W] (ad index; logp NEG where dead) -> the merged candidate set. A live
        beam always ends at an ad (children outside the trie are NEG), so logp alone tells dead."""
        b, s, w = ads.shape
        m = s * w
        stream = torch.arange(s, device=ads.device).view(s, 1).expand(s, w).reshape(m)  # [m]
        ads, logp = ads.reshape(b, m), logp.reshape(b, m)
        valid = logp > NEG / 2
        ads = torch.where(valid, ads, -1)
        # a duplicate loses to the copy with the higher log-prob, ties to the earlier (lower) stream
        order = torch.arange(m, device=ads.device)
        same = (ads.unsqueeze(2) == ads.unsqueeze(1)) & valid.unsqueeze(2)  # [B, i, j]; equal ads: both valid
        better = (logp.unsqueeze(1) > logp.unsqueeze(2)) | (
            (logp.unsqueeze(1) == logp.unsqueeze(2)) & (order.view(1, m) < order.view(m, 1))
        )
        # excluded: padding (-1) only ever equals a dead slot's -1, which `valid` drops anyway
        excluded = ads.unsqueeze(2) == exclude_idx.unsqueeze(1)  # [B, i, E]
        keep = valid & ~torch.cat([same & better, excluded], dim=2).any(dim=2)
        score = torch.where(keep, logp, NEG)
        wanted = num_candidates.max().item()
        torch._check(wanted >= 1)
        k = torch.sym_min(wanted, m)
        top, pos = torch.topk(score, k, dim=-1)
        top = _per_request_cut(top, num_candidates)
        alive = top > NEG / 2
        cand = torch.where(alive, torch.gather(ads, 1, pos), -1)
        cand_stream = torch.where(alive, stream[pos], -1)
        return cand, top, cand_stream
