"""L_total = alpha * L_MTP + beta * L_rank + gamma * L_DC (paper §1.10; resolutions in config)."""

from __future__ import annotations

import torch


def mtp_loss(path_logp: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Multi-token prediction NLL. path_logp [B, H] = log P(target path of head h), summed over
    semantic-ID levels; valid [B, H] bool (a head without a target in the window is skipped)."""
    weight = valid.to(path_logp.dtype)
    return -(path_logp * weight).sum() / weight.sum().clamp(min=1.0)


def bpr_loss(scores: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None = None,
             weight_by_gap: bool = False) -> torch.Tensor:
    """Pairwise BPR over every ordered pair (a, b) of a candidate set with value_a > value_b:
    mean of -log sigmoid(s_a - s_b). scores, values [B, n]; mask [B, n] bool for padded slots."""
    diff = scores.unsqueeze(2) - scores.unsqueeze(1)  # [B, n, n] s_a - s_b
    gap = values.unsqueeze(2) - values.unsqueeze(1)
    pairs = gap > 0
    if mask is not None:
        pairs = pairs & mask.unsqueeze(2) & mask.unsqueeze(1)
    weight = pairs.to(scores.dtype) * (gap.clamp(min=0) if weight_by_gap else 1.0)
    return -(torch.nn.functional.logsigmoid(diff) * weight).sum() / weight.sum().clamp(min=1e-12)


def dc_loss(rank_scores: torch.Tensor, gen_logp: torch.Tensor, tau: float,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Distribution consistency: cross-entropy of the generator's distribution over the
    candidate set, softmax(gen_logp), against the stop-gradient ranker soft label
    softmax(rank_scores / tau). [B, n] each; gradients reach only the generator."""
    target_logits = rank_scores.detach() / tau
    if mask is not None:
        target_logits = target_logits.masked_fill(~mask, float("-inf"))
        gen_logp = gen_logp.masked_fill(~mask, float("-inf"))
    p_target = torch.softmax(target_logits, dim=-1)
    log_pi = torch.log_softmax(gen_logp, dim=-1)
    return -(p_target * torch.nan_to_num(log_pi, neginf=0.0)).sum(-1).mean()
