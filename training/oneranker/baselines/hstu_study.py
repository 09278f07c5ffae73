"""HSTU on the study's data: `baselines.hstu.HSTUBaseline` (the Step-1 G-Decoder alone with a
next-item head over item ids) fed from the study's `Prepared` (Dataset + Samples) instead of the
MovieLens `SeqData` it was written for, scored under the study's two protocols.

Data flow (S samples of one split, L = model.max_history, A ads, C contents, n candidates):

    Samples rows [hist_start, hist_end) of the EventLog (the window OneRanker reads)
      -> engaged events only: ad clicks / conversions (token = ad_idx) and content views
         (token = A + content_idx). Ad impressions without engagement are dropped: the model has
         no action input, so a shown-but-ignored ad would read as an interaction.
      -> items [S, L] (oldest first, -1 = padding), ts [S, L] seconds, lengths [S] >= 1 (a sample
         with no engaged event keeps one padding token: its user vector comes from the position
         embedding alone)
    HSTUBaseline.user_vectors -> u [S, d] (L2-normalised)
    next-item logits over the ads: u @ item_table[:A].T / temperature -> [S, A]
      * paper protocol: the logit of each of the n candidates (candidates[:, 0] = target) -> [S, n]
      * full catalogue: the top-N ads by logit are its generation candidates (generation recall);
        the final slate is the top SLATE_K of them (it has no ranker)

Training (`fit`): the study's training rows (train Samples: every positive before the valid
target), one supervised position per row (its target ad); sampled softmax over the A ads with
`num_negatives` uniform negatives (a negative equal to the positive is masked, as in HSTU);
AdamW with the study's schedule (`train.lr_at`: warm-up, cosine over train.steps) and gradient
clip; batches = a fresh permutation of the training rows per epoch. Stopping = `TrainConfig`'s
rule on the study's validation split: HR@5 of the 30-candidate protocol every `eval_every`
steps, `patience` evaluations without a strict improvement, `steps` at most, best restored.

Sizes follow the study's ModelConfig (d_model, g_layers blocks, heads, max_history, time
buckets, dropout) and TrainConfig (lr, weight decay, batch); from HSTU's public config: the
softmax temperature 0.05, 128 negatives (at most A - 1), AdamW betas (0.9, 0.98).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..config import ACTION_CLICK, ACTION_CONTENT_VIEW, ACTION_CONVERSION, ExperimentConfig
from ..evaluate import ranking_metrics
from .hstu import HSTUBaseline, HSTUBaselineConfig, sampled_softmax_loss

STOP_K = 5  # HR@5: TrainConfig.stop_metric's cut-off is read from the config; this is the default


def hstu_config(cfg: ExperimentConfig) -> HSTUBaselineConfig:
    """The study's HSTU configuration of one (source, seed): widths from the study config,
    temperature / negatives / betas from HSTU's public config (module docstring)."""
    m, t = cfg.model, cfg.train
    return HSTUBaselineConfig(
        num_blocks=m.g_layers,
        d_model=m.d_model,
        num_heads=m.num_heads,
        num_negatives=128,
        dropout=m.dropout,
        lr=t.lr,
        weight_decay=t.weight_decay,
        adam_betas=(0.9, 0.98),
        batch_size=t.batch_size,
        max_len=m.max_history,
        temperature=0.05,
        time_buckets=m.time_buckets,
        time_bucket_scale=m.time_bucket_scale,
        seed=t.seed,
        num_threads=t.num_threads,
    )


def protocol_entry(cfg: ExperimentConfig) -> dict:
    """What the protocol file records for the HSTU run: its resolved config and stopping rule."""
    hcfg = asdict(hstu_config(cfg))
    for unused in ("max_epochs", "patience", "max_minutes", "eval_batch_size"):  # MovieLens loop only
        hcfg.pop(unused)
    t = cfg.train
    return {
        "hstu": hcfg,
        "stopping": {
            "metric": f"valid {t.stop_metric} (30-candidate protocol, next-item logits)",
            "eval_every": t.eval_every,
            "patience": t.patience,
            "max_steps": t.steps,
            "early_stopping": t.early_stopping,
        },
        "engaged_tokens": "ad clicks/conversions and content views; impressions dropped",
    }


@dataclass
class StudyInputs:
    """One split as HSTU input: items / ts [S, L] (-1 / 0 padding), lengths [S] >= 1, the
    candidates [S, n] (column 0 = target) and targets [S] ad_idx."""

    items: np.ndarray
    ts: np.ndarray
    lengths: np.ndarray
    candidates: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    def batch(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lengths = self.lengths[index]
        w = int(lengths.max())
        return (
            torch.from_numpy(self.items[index, :w]),
            torch.from_numpy(self.ts[index, :w]),
            torch.from_numpy(lengths),
        )


def study_inputs(prep, split: str, max_len: int) -> StudyInputs:
    """The split's Samples -> StudyInputs (module docstring: engaged events of the history window,
    the most recent max_len, oldest first)."""
    ds = prep.dataset
    log, num_ads = ds.log, ds.catalog.num_ads
    samples = prep.splits[split]
    span = (samples.hist_end - samples.hist_start).astype(np.int64)
    width = max(int(span.max()), 1)
    rows = samples.hist_start[:, None] + np.arange(width)[None, :]
    inside = np.arange(width)[None, :] < span[:, None]
    rows = np.where(inside, rows, 0)
    action = log.action[rows]
    engaged = inside & np.isin(action, (ACTION_CLICK, ACTION_CONVERSION, ACTION_CONTENT_VIEW))
    token = np.where(action == ACTION_CONTENT_VIEW, num_ads + log.item[rows], log.item[rows])
    # keep the last max_len engaged events: rank them from the end of each row
    from_end = np.cumsum(engaged[:, ::-1], axis=1)[:, ::-1]
    keep = engaged & (from_end <= max_len)
    lengths = keep.sum(1)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :max_len]  # kept columns first, in time order
    items = np.where(np.take_along_axis(keep, order, 1), np.take_along_axis(token, order, 1), -1)
    ts = np.where(items >= 0, np.take_along_axis(log.timestamp[rows], order, 1), 0)
    out_w = max(int(lengths.max()), 1)
    return StudyInputs(
        items[:, :out_w].astype(np.int64),
        ts[:, :out_w].astype(np.int64),
        np.maximum(lengths, 1).astype(np.int64),
        samples.candidates.astype(np.int64),
        samples.target.astype(np.int64),
    )


class StudyHSTU:
    """A trained HSTUBaseline over the joint [ads; contents] vocabulary, scored on ads only."""

    def __init__(self, model: HSTUBaseline, num_ads: int):
        self.model, self.num_ads = model, num_ads

    def ad_logits(self, items, ts, lengths) -> torch.Tensor:
        """[B, A] next-item logits of every ad."""
        u = self.model.user_vectors(items, ts, lengths)
        return u @ self.model.item_table()[: self.num_ads].T / self.model.cfg.temperature

    @torch.no_grad()
    def candidate_scores(self, inputs: StudyInputs, batch_size: int = 256) -> np.ndarray:
        """[S, n]: the next-item logit of each candidate ad (paper protocol)."""
        self.model.eval()
        out = []
        for start in range(0, len(inputs), batch_size):
            index = np.arange(start, min(len(inputs), start + batch_size))
            u = self.model.user_vectors(*inputs.batch(index))  # [b, d]
            emb = self.model.item_table()[torch.from_numpy(inputs.candidates[index])]  # [b, n, d]
            out.append((torch.einsum("bd,bnd->bn", u, emb) / self.model.cfg.temperature).numpy())
        return np.concatenate(out).astype(np.float64)

    @torch.no_grad()
    def catalogue(self, inputs: StudyInputs, num_candidates: int, slate_k: int, batch_size: int = 256) -> dict:
        """Full catalogue: {"candidates" [S, N] ad_idx by descending logit (its generation order),
        "slate" [S, slate_k] = the first slate_k of them}. Ties by ad index."""
        self.model.eval()
        n = min(num_candidates, self.num_ads)
        cands = np.empty((len(inputs), n), dtype=np.int64)
        for start in range(0, len(inputs), batch_size):
            index = np.arange(start, min(len(inputs), start + batch_size))
            logits = self.ad_logits(*inputs.batch(index)).numpy()
            cands[index] = np.argsort(-logits, axis=1, kind="stable")[:, :n]
        return {"candidates": cands, "slate": cands[:, :slate_k].copy()}


def fit(prep, cfg: ExperimentConfig, progress: bool = False, after_step=None) -> dict:
    """Train HSTU on the study's training rows under TrainConfig's stopping rule (module
    docstring). -> {"model": StudyHSTU (best weights, eval mode), "history": [{"step", "total"}],
    "stopping": {...as train._Stopper.record}, "train_seconds", "steps", "config"}.
    `after_step(steps_done)` is called after every optimizer step (timing)."""
    from ..train import lr_at

    t = cfg.train
    hcfg = hstu_config(cfg)
    torch.manual_seed(t.seed)
    torch.set_num_threads(t.num_threads)
    rng = np.random.default_rng([t.seed, 0x6873])
    gen = torch.Generator().manual_seed(t.seed)
    started = time.time()
    ds = prep.dataset
    num_ads = ds.catalog.num_ads
    train_in = study_inputs(prep, "train", hcfg.max_len)
    valid_in = study_inputs(prep, "valid", hcfg.max_len) if t.eval_every > 0 else None
    net = HSTUBaseline(hcfg, num_ads + ds.catalog.num_contents)
    wrapped = StudyHSTU(net, num_ads)
    optimizer = torch.optim.AdamW(net.parameters(), lr=t.lr, weight_decay=t.weight_decay, betas=hcfg.adam_betas)
    num_neg = min(hcfg.num_negatives, num_ads - 1)
    stop_k = int(t.stop_metric.split("@")[1]) if "@" in t.stop_metric else STOP_K
    history, evaluations = [], []
    best_value, best_step, best_state, bad = -math.inf, 0, None, 0
    queue: list[np.ndarray] = []
    done = 0
    for step in range(t.steps):
        if not queue:
            order = rng.permutation(len(train_in))
            queue = [order[i : i + t.batch_size] for i in range(0, order.size, t.batch_size)]
        index = queue.pop(0)
        net.train()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        u = net.user_vectors(*train_in.batch(index))
        positive = torch.from_numpy(train_in.targets[index])
        negatives = torch.randint(0, num_ads, (index.size, num_neg), generator=gen)
        loss = sampled_softmax_loss(u, positive, negatives, net.item_table()[:num_ads], hcfg.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), t.grad_clip)
        optimizer.step()
        done = step + 1
        if after_step is not None:
            after_step(done)
        row = {"step": step, "total": float(loss.detach())}
        if valid_in is not None and done % t.eval_every == 0:
            value = ranking_metrics(wrapped.candidate_scores(valid_in), ks=(stop_k,))[t.stop_metric]
            row[f"valid_{t.stop_metric}"] = value
            evaluations.append([done, value])
            if value > best_value:
                best_value, best_step, bad = value, done, 0
                if t.early_stopping:
                    best_state = copy.deepcopy(net.state_dict())
            else:
                bad += 1
        history.append(row)
        if progress and step % t.log_every == 0:
            print(f"hstu step {step} loss {row['total']:.4f}", flush=True)
        if t.early_stopping and bad >= t.patience:
            break
    restored = best_state is not None
    if restored:
        net.load_state_dict(best_state)
    net.eval()
    stopping = {
        "early_stopping": t.early_stopping,
        "metric": f"valid {t.stop_metric}",
        "eval_every": t.eval_every,
        "patience": t.patience,
        "max_steps": t.steps,
        "stopped_step": done,
        "best_step": best_step if evaluations else None,
        "best_value": best_value if evaluations else None,
        "restored_best": restored,
        "evaluations": evaluations,
    }
    return {
        "model": wrapped,
        "history": history,
        "stopping": stopping,
        "train_seconds": time.time() - started,
        "steps": done,
        "config": asdict(hcfg),
    }
