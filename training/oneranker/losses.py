"""L_total = alpha * L_MTP + beta * L_rank + gamma * L_DC (paper §1.10; resolutions in config)."""

from __future__ import annotations

import torch


def mtp_loss(path_logp: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Multi-token prediction NLL. path_logp [B, H] = log P(target path of head h), summed over
    semantic-ID levels; valid [B, H] bool (a head without a target in the window is skipped)."""
    weight = valid.to(path_logp.dtype)
    return -(path_logp * weight).sum() / weight.sum().clamp(min=1.0)


def bpr_pair_weights(
    engaged: torch.Tensor,
    values: torch.Tensor,
    value_known: torch.Tensor,
    engagement_weight: float,
    mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Weights of the ordered pairs (a, b) ("a should score above b") of the two BPR families.

    engaged [B, n] bool: the user engaged with the candidate (the logged positive, column 0);
    values [B, n] expected eCPM; value_known [B] bool: the source knows the expected eCPM of
    this row's candidates (synthetic ground truth); mask [B, n] bool: real (not padded) slots.
    -> {"engagement": [B, n, n], "value": [B, n, n]}: each family's weights sum to its share,
    `engagement_weight` and 1 - engagement_weight, spread evenly over its pairs in the batch
    (each family normalised by its own pair count). An empty family gets no weight: without
    known values (real sources) the engagement family carries all of it, and vice versa.
    """
    valid = torch.ones_like(engaged) if mask is None else mask
    ok = valid.unsqueeze(2) & valid.unsqueeze(1)
    eng = engaged.unsqueeze(2) & ~engaged.unsqueeze(1) & ok
    val = (values.unsqueeze(2) > values.unsqueeze(1)) & ok & value_known.view(-1, 1, 1)
    eng, val = eng.to(values.dtype), val.to(values.dtype)
    n_eng, n_val = eng.sum(), val.sum()
    # tensor-valued choices (no host sync on GPU): an empty family hands its share to the other
    w_eng = torch.where(n_val > 0, n_val.new_tensor(engagement_weight), n_val.new_tensor(1.0))
    w_val = torch.where(n_eng > 0, n_eng.new_tensor(1.0 - engagement_weight), n_eng.new_tensor(1.0))
    return {"engagement": eng * (w_eng / n_eng.clamp(min=1.0)), "value": val * (w_val / n_val.clamp(min=1.0))}


def bpr_loss(
    scores: torch.Tensor,
    engaged: torch.Tensor,
    values: torch.Tensor,
    value_known: torch.Tensor,
    engagement_weight: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Two-family pairwise BPR: sum over ordered pairs of weight(a, b) * -log sigmoid(s_a - s_b)
    with `bpr_pair_weights` (scores [B, n]; other arguments as there)."""
    w = bpr_pair_weights(engaged, values, value_known, engagement_weight, mask)
    diff = scores.unsqueeze(2) - scores.unsqueeze(1)  # [B, n, n] s_a - s_b
    return -(torch.nn.functional.logsigmoid(diff) * (w["engagement"] + w["value"])).sum()


def dc_loss(
    rank_scores: torch.Tensor, gen_logp: torch.Tensor, tau: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
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
