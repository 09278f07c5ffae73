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
from torch import nn

from oneranker_serving.selection import stream_matrix  # noqa: F401  (re-exported: export, benches)

NEG = -1e30


class StreamDecoder(nn.Module):
    """Per-stream log-probabilities of the next code given each live beam's prefix, from one of
    the model's decoders (`oneranker.decoders`): every head scores its stream's beams in one
    batched call (W beams x H heads), log-softmax per head, then the stream's mean over heads.

    stream_log_probs(state [B, H, Z], level, prefix [B, S, w, level] int64) -> [B, S, w, K].
    The decoder's per-weights constants (factorized: the transition tables) are computed once
    here and become constants of the exported graph."""

    def __init__(self, decoder, streams: np.ndarray):
        super().__init__()
        self.decoder = decoder
        constants = decoder.constants()
        self.register_buffer("constants", constants.detach().float().clone())
        self.register_buffer("streams", torch.as_tensor(streams, dtype=torch.float32))
        self.register_buffer("head_stream", torch.as_tensor(np.asarray(streams).argmax(0), dtype=torch.int64))

    def stream_log_probs(self, state, level, prefix):
        w = prefix.shape[2]
        per_head_prefix = prefix[:, self.head_stream]  # [B, H, w, level]: each head follows its stream's beams
        logits = self.decoder.level_logits(state, level, per_head_prefix, self.constants)  # [B, H, w|1, K]
        per_head = torch.log_softmax(logits.expand(-1, -1, w, -1), dim=-1)
        return torch.einsum("sh,bhwk->bswk", self.streams, per_head)


def _per_request_cut(values: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
    """values [B, ..., k] sorted descending along the last axis: positions >= limit[b] -> NEG."""
    k = values.shape[-1]
    pos = torch.arange(k, device=values.device)
    keep = pos.view(*([1] * (values.dim() - 1)), k) < limit.view(-1, *([1] * (values.dim() - 1)))
    return torch.where(keep, values, torch.full_like(values, NEG))


class TrieBeamSearch(nn.Module):
    """Beam search per stream over the trie of legal ad paths, then merge, dedupe, exclusions.

    trie: level l -> [nodes_l, K] child node id (last level: ad index), -1 where no child."""

    def __init__(self, decoder: StreamDecoder, trie: list):
        super().__init__()
        self.decoder = decoder
        self.depth = len(trie)
        for level, children in enumerate(trie):
            self.register_buffer(f"trie_{level}", torch.as_tensor(np.asarray(children), dtype=torch.int64))

    def trie_level(self, level: int) -> torch.Tensor:
        return getattr(self, f"trie_{level}")

    def forward(self, state, beam_width, num_candidates, exclude_idx):
        """state [B, ...] (the decoder's), beam_width [B], num_candidates [B], exclude_idx [B, E]
        -> cand_idx [B, N], cand_logp [B, N], cand_stream [B, N] (see module docstring)."""
        b = state.shape[0]
        s = self.decoder.streams.shape[0]
        codes = self.trie_level(0).shape[1]
        width = beam_width.max().item()  # one TopK k per batch: the largest requested width
        torch._check(width >= 1)
        nodes = torch.zeros(b, s, 1, dtype=torch.int64, device=state.device)
        logp = torch.zeros(b, s, 1, dtype=torch.float32, device=state.device)
        prefix = torch.zeros(b, s, 1, 0, dtype=torch.int64, device=state.device)
        for level in range(self.depth):
            live = nodes.shape[2]
            step = self.decoder.stream_log_probs(state, level, prefix)  # [B, S, w, K]
            children = self.trie_level(level)[nodes.clamp(min=0)]  # [B, S, w, K]
            allowed = (children >= 0) & (logp > NEG / 2).unsqueeze(-1)
            total = torch.where(allowed, logp.unsqueeze(-1) + step, torch.full_like(step, NEG))
            total = total.reshape(b, s, live * codes)
            k = torch.sym_min(width, live * codes)
            torch._check(k >= 1)
            logp, flat = torch.topk(total, k, dim=-1)  # sorted; ties: the lower flat index first
            logp = _per_request_cut(logp, beam_width)
            beam, code = flat // codes, flat % codes
            nodes = torch.gather(children.reshape(b, s, live * codes), 2, flat)
            kept = torch.gather(prefix, 2, beam.unsqueeze(-1).expand(-1, -1, -1, level))
            prefix = torch.cat([kept, code.unsqueeze(-1)], dim=-1)
        return self.merge(nodes, logp, num_candidates, exclude_idx)

    def merge(self, ads, logp, num_candidates, exclude_idx):
        """ads, logp [B, S, W] (ad index, -1 / NEG where dead) -> the merged candidate set."""
        b, s, w = ads.shape
        stream = torch.arange(s, device=ads.device).view(1, s, 1).expand(b, s, w).reshape(b, s * w)
        ads, logp = ads.reshape(b, s * w), logp.reshape(b, s * w)
        valid = (logp > NEG / 2) & (ads >= 0)
        ads = torch.where(valid, ads, torch.full_like(ads, -1))
        # a duplicate loses to the copy with the higher log-prob, ties to the earlier (lower) stream
        m = s * w
        order = torch.arange(m, device=ads.device)
        same = (ads.unsqueeze(2) == ads.unsqueeze(1)) & valid.unsqueeze(2) & valid.unsqueeze(1)  # [B, i, j]
        better = (logp.unsqueeze(1) > logp.unsqueeze(2)) | (
            (logp.unsqueeze(1) == logp.unsqueeze(2)) & (order.view(1, 1, m) < order.view(1, m, 1))
        )
        duplicate = (same & better).any(dim=2)
        excluded = ((ads.unsqueeze(2) == exclude_idx.unsqueeze(1)) & (exclude_idx >= 0).unsqueeze(1)).any(dim=2)
        keep = valid & ~duplicate & ~excluded
        score = torch.where(keep, logp, torch.full_like(logp, NEG))
        wanted = num_candidates.max().item()
        torch._check(wanted >= 1)
        k = torch.sym_min(wanted, m)
        top, pos = torch.topk(score, k, dim=-1)
        top = _per_request_cut(top, num_candidates)
        alive = top > NEG / 2
        cand = torch.where(alive, torch.gather(ads, 1, pos), torch.full_like(pos, -1))
        cand_stream = torch.where(alive, torch.gather(stream, 1, pos), torch.full_like(pos, -1))
        return cand, top, cand_stream
