"""Training: L = alpha*L_MTP + beta*L_rank + gamma*L_DC with the config's ablation switches.

`train(cfg, run_dir)` prepares data and semantic IDs, trains with AdamW (cosine decay, warm-up),
shows a progress bar, writes a safetensors checkpoint and returns the run's metrics. `--resume`
continues from the optimizer state in `run_dir`.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import losses
from .checkpoint import load_optimizer_state, save_checkpoint
from .config import ExperimentConfig
from .pipeline import BucketSampler, Prepared, build_model, prepare, sample_arrays, to_batch


def seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


def loss_terms(model, batch: dict, cfg: ExperimentConfig, step: int) -> dict[str, torch.Tensor]:
    """Forward one batch and return each active loss term and the weighted total."""
    m, lc = cfg.model, cfg.loss
    out = model(batch)
    enc, scores = out["encoding"], out["scores"]
    terms: dict[str, torch.Tensor] = {}
    total = scores.new_zeros(())
    if m.use_generation:
        per_head = model.path_log_probs(enc.level_logits, batch["head_paths"])  # [B, H, H]
        head_logp = torch.diagonal(per_head, dim1=1, dim2=2)  # head h scored on its own target
        terms["mtp"] = losses.mtp_loss(head_logp, batch["head_valid"])
        total = total + lc.alpha * terms["mtp"]
    if m.use_ranker:
        terms["rank"] = losses.bpr_loss(scores, batch["cand_values"], weight_by_gap=lc.bpr_weight_by_gap)
        total = total + lc.beta * terms["rank"]
    if m.use_ranker and m.use_generation and m.use_dc_loss:
        gen = model.generation_scores(enc.level_logits, batch["cand_sids"])
        terms["dc"] = losses.dc_loss(scores, gen, lc.tau)
        warm = step >= lc.dc_warmup_fraction * cfg.train.steps
        total = total + (lc.gamma if warm else 0.0) * terms["dc"]
    terms["total"] = total
    return terms


def lr_at(step: int, cfg: ExperimentConfig) -> float:
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    return t.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(cfg: ExperimentConfig, run_dir: Path, prep: Prepared | None = None, resume: bool = False,
          progress: bool = True) -> dict:
    cfg.validate()
    seed_everything(cfg.train.seed, cfg.train.num_threads)
    started = time.time()
    prep = prep or prepare(cfg)
    arrays = sample_arrays(prep, prep.splits["train"])
    cat = prep.dataset.catalog
    model = build_model(cfg, prep.sids, cat.num_advertisers, cat.num_categories)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    start_step = load_optimizer_state(run_dir, optimizer) if resume else 0
    if resume:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(Path(run_dir) / "model.safetensors")))
    sampler = BucketSampler(arrays["hist_len"], cfg.serve.length_buckets, cfg.train.batch_size,
                            cfg.train.seed + start_step)
    n = len(prep.splits["train"])
    history: list[dict] = []
    first: dict[str, float] = {}
    model.train()
    bar = tqdm(range(start_step, cfg.train.steps), desc=f"train {cfg.name}", disable=not progress,
               initial=start_step, total=cfg.train.steps)
    for step in bar:
        batch = to_batch(arrays, sampler.next())
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        terms = loss_terms(model, batch, cfg, step)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        values = {k: float(v) for k, v in terms.items()}
        if not first:
            first = values
        history.append({"step": step, **values})
        if step % cfg.train.log_every == 0 or step == cfg.train.steps - 1:
            bar.set_postfix({k: f"{v:.3f}" for k, v in values.items()})
    model.eval()
    tail = history[-max(1, len(history) // 10):]
    last = {k: float(np.mean([h[k] for h in tail])) for k in (tail[0] if tail else {}) if k != "step"}
    from .checkpoint import file_sha256
    from .reference import save_item_tables

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    save_item_tables(run_dir, prep)
    manifest = save_checkpoint(
        run_dir, model, cfg, prep.sids, cfg.train.steps, optimizer,
        extra={"num_advertisers": cat.num_advertisers, "num_categories": cat.num_categories,
               "dataset": prep.dataset.name,
               "item_tables_sha256": file_sha256(Path(run_dir) / "item_tables.safetensors")},
    )
    summary = {"first_loss": first, "last_loss": last, "train_seconds": time.time() - started,
               "train_samples": n, "padding_fraction": sampler.padding_fraction(), "manifest": manifest}
    import json

    (Path(run_dir) / "train_history.json").write_text(json.dumps(history))
    return {"model": model, "prep": prep, "summary": summary}
