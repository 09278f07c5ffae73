"""HSTU baseline: OneRanker's Step-1 G-Decoder alone over item-id embeddings, next-item head.

Data flow (B users, W = max_len + 1 training window, L = max_len, I items, d = d_model):

    train_windows (most recent W train events per user)  items [B, W], timestamps [B, W]
      input  = items[:, :-1]                                 [B, L]
      target = items[:, 1:]  (every valid position supervised, as HSTU does)
    encode: item_emb * sqrt(d) + pos_emb, dropout          [B, L, d]
            num_blocks x `oneranker.model.HSTULayer` (SiLU attention, U gating, relative
            position/time bias), causal mask `model.step1_allowed(0, len, L)`,
            residual dropout on each block's update                        [B, L, d]
            L2-normalised (HSTU's user_embedding_norm = "l2_norm")          [B, L, d]
    next-item head: dot product with the L2-normalised item table [I, d], / temperature
    loss: sampled softmax, `num_negatives` uniform negatives per supervised position
          (a negative equal to the positive is masked out, as in HSTU's SampledSoftmaxLoss)
    eval: output at the last history position [B, d] @ item table.T -> scores [B, I]
          -> `movielens.full_rank` (full catalogue; see that module for masking and ties)

Defaults of `HSTUBaselineConfig` = the public generative-recommenders ML-1M config
(configs/ml-1m/hstu-sampled-softmax-n128-final.gin): 2 blocks, d = 50, 1 head, 128 sampled
negatives, dropout 0.2, AdamW lr 1e-3, betas (0.9, 0.98), weight decay 0, no warm-up, batch 128,
101 epochs, softmax temperature 0.05, L2-normalised user and item embeddings, max length 200,
item embeddings truncated-normal(0.02), position embeddings truncated-normal(sqrt(1/d)).

Known differences from the public code (stated, not tuned):
  * dropout: HSTU drops the attention output inside the block ("linear dropout"); reusing
    `HSTULayer` unchanged, we drop each block's residual update instead (same rate 0.2).
  * validation: HSTU trains on everything but the last event and has no validation split; we
    hold out the second-to-last event for the stopping rule (train targets end one event
    earlier). Stopping: validation NDCG@10 after every epoch, patience `patience`, at most
    `max_epochs` and `max_minutes`, the best epoch's weights restored.
  * relative time bias: `model.time_bucket` (floor(log1p(dt) * scale)) instead of HSTU's
    log-bucketisation; relative positions clamped at max_len.
  * catalogue: items re-indexed densely over rated items (3,706 on ML-1M); HSTU's index holds
    every id up to the largest movie id (never-rated ids can only be negatives).
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..data import movielens as ml
from ..model import HSTULayer, step1_allowed, time_bucket
from .epochs import fit_by_epochs

DENSE_LOGITS_MAX_ITEMS = 50_000  # above this, negatives' logits are gathered per row


@dataclass
class HSTUBaselineConfig:
    """Written down before any run; defaults = HSTU's public ML-1M config (module docstring)."""

    num_blocks: int = 2
    d_model: int = 50
    num_heads: int = 1
    num_negatives: int = 128
    dropout: float = 0.2
    lr: float = 1e-3  # AdamW, constant (HSTU: no warm-up, no schedule)
    weight_decay: float = 0.0
    adam_betas: tuple = (0.9, 0.98)
    batch_size: int = 128
    max_len: int = ml.MAX_HISTORY  # 200
    temperature: float = 0.05
    time_buckets: int = 40  # floor(log1p(dt) * 2) < 40 covers dt up to ~15 years
    time_bucket_scale: float = 2.0
    # stopping rule (declared before any run): validation NDCG@10 (seen items masked, as the
    # reported metric) after every epoch; stop after `patience` epochs without improvement, at
    # `max_epochs` (HSTU's num_epochs = 101) or once `max_minutes` of training are spent;
    # restore the best epoch's weights. `max_minutes` counts wall time of the whole loop
    # (training steps AND the per-epoch validation), checked after each epoch.
    max_epochs: int = 101
    patience: int = 10
    max_minutes: float = 60.0
    eval_batch_size: int = 512
    seed: int = 0
    num_threads: int = 1  # 2-core machine shared by several engineers


class HSTUBaseline(nn.Module):
    """Item embeddings + HSTU blocks + dot-product next-item head (module docstring)."""

    def __init__(self, cfg: HSTUBaselineConfig, num_items: int):
        super().__init__()
        self.cfg, self.num_items = cfg, num_items
        d = cfg.d_model
        self.item_emb = nn.Embedding(num_items + 1, d, padding_idx=0)  # row 0 = padding, item i -> i + 1
        nn.init.trunc_normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.pos_emb = nn.Embedding(cfg.max_len, d)
        nn.init.trunc_normal_(self.pos_emb.weight, std=math.sqrt(1.0 / d))  # as HSTU's preprocessor
        block_cfg = ModelConfig(
            d_model=d,
            num_heads=cfg.num_heads,
            position_buckets=cfg.max_len + 1,
            time_buckets=cfg.time_buckets,
            time_bucket_scale=cfg.time_bucket_scale,
        )
        self.blocks = nn.ModuleList(HSTULayer(block_cfg) for _ in range(cfg.num_blocks))
        for block in self.blocks:
            _fast_bias_tables(block)
        self.drop = nn.Dropout(cfg.dropout)

    def item_table(self) -> torch.Tensor:
        """[I, d] L2-normalised item embeddings (padding row excluded)."""
        return F.normalize(self.item_emb.weight[1:], dim=-1, eps=1e-6)

    def encode(self, items: torch.Tensor, ts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """items [B, L] dense index (-1 = padding), ts [B, L] seconds, lengths [B] >= 1
        -> [B, L, d] L2-normalised outputs (position t summarises items[:, :t+1])."""
        b, n = items.shape
        d = self.cfg.d_model
        valid = (torch.arange(n).view(1, n) < lengths.view(b, 1)).unsqueeze(-1)
        x = self.item_emb(items + 1) * math.sqrt(d) + self.pos_emb(torch.arange(n)).unsqueeze(0)
        x = self.drop(x) * valid
        allowed = step1_allowed(0, lengths, n)  # causal, padded keys invisible
        pos = torch.arange(n)
        rel_pos = torch.clamp(pos.view(n, 1) - pos.view(1, n), 0, self.cfg.max_len)
        rel_time = time_bucket(
            (ts.unsqueeze(2) - ts.unsqueeze(1)).float(), self.cfg.time_bucket_scale, self.cfg.time_buckets
        )
        for block in self.blocks:
            x = x + self.drop(block(x, allowed, lengths, rel_pos, rel_time) - x)
        return F.normalize(x, dim=-1, eps=1e-6)

    def user_vectors(self, items, ts, lengths) -> torch.Tensor:
        """[B, d]: the output at each sequence's last valid position."""
        out = self.encode(items, ts, lengths)
        return out[torch.arange(out.shape[0]), lengths - 1]


def sampled_softmax_loss(
    query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, table: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean over rows of -log softmax([q.e_pos, q.e_neg_1..R] / T)[0].

    query [N, d], positive [N] and negatives [N, R] item indices into table [I, d]. A negative
    equal to the row's positive is masked (logit -5e4) so the positive is never its own
    negative: with every item sampled once this equals the full softmax cross-entropy."""
    pos_logit = (query * table[positive]).sum(-1, keepdim=True) / temperature  # [N, 1]
    if table.shape[0] <= DENSE_LOGITS_MAX_ITEMS:
        # same numbers as the per-row gather below, but one BLAS matmul [N, d] x [d, I] instead
        # of N tiny [1, d] x [d, R] products (about 6x faster on CPU for ML-1M's 3,706 items)
        neg_logit = (query @ table.T).gather(1, negatives) / temperature  # [N, R]
    else:
        neg_logit = torch.einsum("nd,nrd->nr", query, table[negatives]) / temperature  # [N, R]
    neg_logit = neg_logit.masked_fill(negatives == positive.unsqueeze(1), -5e4)
    return -torch.log_softmax(torch.cat([pos_logit, neg_logit], dim=1), dim=1)[:, 0].mean()


class _RowGather(torch.autograd.Function):
    """weight[index] with a bincount backward: nn.Embedding's dense backward sorts all B*L*L
    relative-time indices (5M per block at B=128, L=200) and took ~20% of a step on CPU."""

    @staticmethod
    def forward(ctx, weight, index):
        ctx.save_for_backward(index)
        ctx.rows = weight.shape[0]
        return weight[index]

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        flat = index.reshape(-1)
        g = grad.reshape(flat.shape[0], -1)
        cols = [torch.bincount(flat, weights=g[:, c], minlength=ctx.rows) for c in range(g.shape[1])]
        return torch.stack(cols, dim=1).to(grad.dtype), None


class _BincountEmbedding(nn.Embedding):
    """Drop-in for the few-row bias tables of `HSTULayer` (same parameter, same state_dict key,
    same forward values); only the backward differs (`_RowGather`)."""

    def forward(self, index):
        return _RowGather.apply(self.weight, index)


def _fast_bias_tables(block: HSTULayer) -> None:
    for name in ("pos_bias", "time_bias"):
        old = getattr(block, name)
        new = _BincountEmbedding(old.num_embeddings, old.embedding_dim)
        new.weight = old.weight
        setattr(block, name, new)


class _Windows:
    """Training windows as tensors, batched by user with the batch's longest window."""

    def __init__(self, data: ml.SeqData, max_len: int):
        items, ts, lengths = ml.train_windows(data, max_len)
        keep = lengths >= 2  # a window of one event has nothing to predict
        self.items = torch.from_numpy(items[keep])
        self.ts = torch.from_numpy(ts[keep])
        self.lengths = torch.from_numpy(lengths[keep])

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    def batch(self, index: np.ndarray):
        idx = torch.from_numpy(index)
        lengths = self.lengths[idx]
        w = int(lengths.max())
        return self.items[idx, :w], self.ts[idx, :w], lengths


def train_step(model: HSTUBaseline, optimizer, items, ts, lengths, gen: torch.Generator) -> float:
    """One sampled-softmax step on windows items/ts [B, W], lengths [B] >= 2."""
    cfg = model.cfg
    inp, inp_ts, in_len = items[:, :-1], ts[:, :-1], lengths - 1
    target = items[:, 1:]
    supervised = target >= 0  # every valid position of the causal sequence
    out = model.encode(inp, inp_ts, in_len)
    query, positive = out[supervised], target[supervised]
    negatives = torch.randint(0, model.num_items, (positive.shape[0], cfg.num_negatives), generator=gen)
    loss = sampled_softmax_loss(query, positive, negatives, model.item_table(), cfg.temperature)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def evaluate(model: HSTUBaseline, inputs: ml.EvalInputs, mask_seen: bool = True) -> dict:
    """Full-catalogue ranking of each user's target (`movielens.full_rank`)."""
    model.eval()
    table = model.item_table()
    hist = torch.from_numpy(inputs.hist)
    hist_ts = torch.from_numpy(inputs.hist_ts)
    hist_len = torch.from_numpy(inputs.hist_len).clamp(min=1)

    def scores(index):
        idx = torch.from_numpy(index)
        w = int(hist_len[idx].max())
        return model.user_vectors(hist[idx, :w], hist_ts[idx, :w], hist_len[idx]) @ table.T

    return ml.full_rank(scores, inputs, batch_size=model.cfg.eval_batch_size, mask_seen=mask_seen)


def fit(data: ml.SeqData, cfg: HSTUBaselineConfig, progress: bool | None = None, max_steps_per_epoch: int = 0) -> dict:
    """Train under the declared stopping rule; -> {"model" (best weights, eval mode), "curve",
    "best_epoch", "epochs", "stopped_by", "train_seconds", "epoch_seconds", "steps"}.

    `progress` None = a tqdm bar only when stderr is a terminal. `max_steps_per_epoch` > 0
    truncates epochs (smoke tests and timing only)."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.num_threads)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    if progress is None:
        progress = sys.stderr.isatty()
    windows = _Windows(data, cfg.max_len)
    valid = ml.eval_inputs(data, "valid", cfg.max_len)
    model = HSTUBaseline(cfg, data.num_items)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.adam_betas)
    )
    steps_per_epoch = math.ceil(len(windows) / cfg.batch_size)
    if max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, max_steps_per_epoch)
    steps = 0

    def run_epoch(epoch: int) -> list[float]:
        nonlocal steps
        order = rng.permutation(len(windows))
        losses = []
        for s in range(steps_per_epoch):
            index = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            losses.append(train_step(model, optimizer, *windows.batch(index), gen))
            steps += 1
        return losses

    def validate() -> dict:
        val = evaluate(model, valid)["metrics"]
        return {"val_ndcg@10": val["ndcg@10"], "val_hr@10": val["hr@10"]}

    loop = fit_by_epochs(
        model,
        run_epoch,
        validate,
        cfg.max_epochs,
        cfg.patience,
        cfg.max_minutes,
        f"hstu {data.name} seed {cfg.seed}",
        progress,
    )
    return {
        "model": model,
        **loop,
        "steps": steps,
        "steps_per_epoch": steps_per_epoch,
        "config": asdict(cfg),
    }
