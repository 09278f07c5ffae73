"""Training: L = alpha*L_MTP + beta*L_rank + gamma*L_DC with the config's ablation switches.

`train(cfg, run_dir)` prepares data and semantic IDs, trains with AdamW (cosine decay over the
maximum budget `train.steps`, warm-up), shows a progress bar, writes a safetensors checkpoint and
returns the run's metrics. `--resume` continues from the optimizer state in `run_dir`.

Data per step: `pipeline.EpochSampler` picks the batch from the epoch's rotating subset of cut
points, `pipeline.TrainBatcher` redraws its candidates and applies the OOV replacement.
Stopping (`TrainConfig`): every `eval_every` steps the final scorer's `stop_metric` on the valid
split is recorded (history rows get "valid_<metric>"); with `early_stopping`, training ends after
`patience` evaluations without a strict improvement (or at `steps`) and the best evaluation's
weights are restored. The summary, the manifest (`stopping`) and the history record it. The same
function runs under torchrun as one DistributedDataParallel replica per process
(`oneranker.distributed`; gloo on CPU, NCCL on GPU).
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
from .pipeline import EpochSampler, Prepared, TrainBatcher, build_model, prepare, sample_arrays


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
    constants = model.decoder_constants() if m.use_generation else None  # shared by MTP and DC
    if m.use_generation:
        # head h scored on its own target path: head_paths [B, H, D] -> [B, H, 1, D] -> [B, H]
        head_logp = model.path_log_probs(enc.decoder_state, batch["head_paths"].unsqueeze(2), constants=constants)[
            ..., 0
        ]
        terms["mtp"] = losses.mtp_loss(head_logp, batch["head_valid"])
        total = total + lc.alpha * terms["mtp"]
    if m.use_ranker:
        engaged = batch.get("cand_engaged")
        if engaged is None:  # fixed-candidate batches (evaluation arrays, benchmarks): column 0 = positive
            engaged = torch.zeros_like(scores, dtype=torch.bool)
            engaged[:, 0] = True
        values = batch["cand_values"]
        known = batch.get("cand_value_known")
        known = (values != 0).any(1) if known is None else known
        terms["rank"] = losses.bpr_loss(scores, engaged, values, known, lc.engagement_pair_weight)
        total = total + lc.beta * terms["rank"]
    if m.use_ranker and m.use_generation and m.use_dc_loss:
        gen = model.generation_scores(enc.decoder_state, batch["cand_sids"], constants=constants)
        terms["dc"] = losses.dc_loss(scores, gen, lc.tau)
        warm = step >= lc.dc_warmup_fraction * cfg.train.steps
        total = total + (lc.gamma if warm else 0.0) * terms["dc"]
    terms["total"] = total
    return terms


def optimizer_step(net, model, optimizer, batch: dict, step: int, cfg: ExperimentConfig) -> dict:
    """One training step (schedule, forward, backward, clip, AdamW); `net(batch, step)` returns
    the loss terms. Shared by `train` and the training benchmark so both time the same work."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, cfg)
    terms = net(batch, step)
    optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    optimizer.step()
    return terms


def lr_at(step: int, cfg: ExperimentConfig) -> float:
    """Linear warm-up, then cosine decay reaching 0 at the maximum budget `train.steps`."""
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    return t.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(
    cfg: ExperimentConfig,
    run_dir: Path,
    prep: Prepared | None = None,
    resume: bool = False,
    progress: bool = True,
    after_step=None,
) -> dict:
    """Train `cfg` into `run_dir`; -> {"model" (bare model, CPU, eval mode), "prep", "summary"}.

    Single process by default; under torchrun every process trains a DDP replica (see
    `oneranker.distributed`): per-process batch `train.batch_size`, gradients averaged, logged
    losses averaged over ranks, rank 0 writes the checkpoint (which reloads single-process).
    `after_step(steps_done, model)` is called after every optimizer step (tests use it to
    snapshot or perturb the model)."""
    from . import distributed as dist_

    cfg.validate()
    ctx = dist_.init()
    try:
        result = _train(cfg, Path(run_dir), prep, resume, progress, ctx, after_step)
    except BaseException:
        dist_.shutdown(ctx, failed=True)
        raise
    dist_.shutdown(ctx)
    return result


def save_run(
    run_dir: Path, model, cfg: ExperimentConfig, prep: Prepared, step: int, optimizer=None, extra=None
) -> dict:
    """Item tables + checkpoint + manifest of a run directory (what `checkpoint.load_run`, export
    and serving read); returns the manifest."""
    from .checkpoint import file_sha256
    from .reference import save_item_tables

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    save_item_tables(run_dir, prep)
    cat = prep.dataset.catalog
    info = {
        "num_advertisers": cat.num_advertisers,
        "num_categories": cat.num_categories,
        "dataset": prep.dataset.name,
        "item_tables_sha256": file_sha256(Path(run_dir) / "item_tables.safetensors"),
        "oov_code": model.oov_code,
    }
    return save_checkpoint(run_dir, model, cfg, prep.sids, step, optimizer, extra={**info, **(extra or {})})


def init_run(cfg: ExperimentConfig, run_dir: Path, prep: Prepared | None = None) -> dict:
    """A run directory holding the randomly initialised model (seed `train.seed`, step 0, no
    optimizer state): what latency checks serve, since cost does not depend on the weights.
    Returns the manifest (`"untrained": true`)."""
    seed_everything(cfg.train.seed, cfg.train.num_threads)
    prep = prep or prepare(cfg)
    cat = prep.dataset.catalog
    model = build_model(cfg, prep.sids, cat.num_advertisers, cat.num_categories).eval()
    return save_run(run_dir, model, cfg, prep, 0, extra={"untrained": True})


class _Stopper:
    """Validation stopping state: best value/step/weights, evaluations since the best."""

    def __init__(self, cfg: ExperimentConfig, prep: Prepared):
        self.t, self.prep = cfg.train, prep
        self.arrays = sample_arrays(prep, prep.splits["valid"]) if cfg.train.eval_every > 0 else None
        self.best_value, self.best_step, self.best_state = -math.inf, 0, None
        self.bad, self.evaluations = 0, []

    def due(self, done: int) -> bool:
        return self.t.eval_every > 0 and done % self.t.eval_every == 0

    def update(self, model, done: int) -> tuple[float, bool]:
        """Evaluate after `done` steps -> (value, stop now)."""
        from .evaluate import validation_metric

        value = validation_metric(model, self.prep, self.t.stop_metric, arrays=self.arrays)
        model.train()
        self.evaluations.append([done, value])
        if value > self.best_value:
            self.best_value, self.best_step, self.bad = value, done, 0
            if self.t.early_stopping:
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad += 1
        return value, self.t.early_stopping and self.bad >= self.t.patience

    def record(self, stopped_step: int, restored: bool) -> dict:
        return {
            "early_stopping": self.t.early_stopping,
            "metric": f"valid {self.t.stop_metric}",
            "eval_every": self.t.eval_every,
            "patience": self.t.patience,
            "max_steps": self.t.steps,
            "stopped_step": stopped_step,
            "best_step": self.best_step if self.evaluations else None,
            "best_value": self.best_value if self.evaluations else None,
            "restored_best": restored,
            "evaluations": self.evaluations,
        }


def _train(
    cfg: ExperimentConfig, run_dir: Path, prep: Prepared | None, resume: bool, progress: bool, ctx, after_step=None
) -> dict:
    import json
    import os

    from . import distributed as dist_

    seed_everything(cfg.train.seed, dist_.threads_per_process(ctx, cfg.train.num_threads))
    started = time.time()
    prep = prep or prepare(cfg)
    dist_.check_same(prep.sids.version, ctx, "semantic-ID version")
    train_samples = prep.splits["train"]
    arrays = sample_arrays(prep, train_samples)
    cat = prep.dataset.catalog
    model = build_model(cfg, prep.sids, cat.num_advertisers, cat.num_categories)
    start_step = 0
    if resume:
        from safetensors.torch import load_file

        from .checkpoint import upgrade_state_dict

        model.load_state_dict(upgrade_state_dict(load_file(str(Path(run_dir) / "model.safetensors"))))
    model.to(ctx.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    if resume:
        start_step = load_optimizer_state(run_dir, optimizer)
    buckets = cfg.serve.length_buckets
    sampler = EpochSampler(
        train_samples.user,
        arrays["hist_len"],
        buckets,
        cfg.train.batch_size,
        cfg.data.train_cuts_per_epoch,
        cfg.train.seed,
        ctx.rank,
        ctx.world_size,
    )
    for _ in range(start_step):  # resume: the same batch sequence as an uninterrupted run
        sampler.next()
    make_batch = TrainBatcher(prep, arrays, cfg.train.seed, cfg.train.oov_history_share, model.oov_code)
    pin_shapes = ctx.device.type == "cuda" or os.environ.get("ONERANKER_PIN_SHAPES", "") == "1"
    batches = dist_.Prefetcher(
        arrays,
        sampler,
        max(0, cfg.train.steps - start_step),
        ctx.device,
        buckets,
        pin_shapes=pin_shapes,
        make_batch=make_batch,
        start_step=start_step,
    )
    check_sync = os.environ.get("ONERANKER_CHECK_SYNC", "") == "1"
    n = len(train_samples)
    history: list[dict] = []
    first: dict[str, float] = {}
    step_module = dist_.TrainStep(model, cfg, loss_terms)
    stopper = _Stopper(cfg, prep)
    net = None
    model.train()
    bar = tqdm(
        range(start_step, cfg.train.steps),
        desc=f"train {cfg.name}",
        disable=not (progress and ctx.is_main),
        initial=start_step,
        total=cfg.train.steps,
    )
    done = start_step
    try:
        for step, batch in zip(bar, batches):
            if net is None:  # DDP needs the first batch to probe for unused parameters
                net = dist_.wrap(step_module, ctx, batch if ctx.enabled else None, step)
            terms = optimizer_step(net, model, optimizer, batch, step, cfg)
            done = step + 1
            if after_step is not None:
                after_step(done, model)
            values = dist_.all_reduce_mean(terms, ctx)
            if not first:
                first = values
            row = {"step": step, **values}
            if check_sync:
                row["param_checksums"] = dist_.gather_floats(dist_.param_checksum(model), ctx)
            stop = False
            if stopper.due(done):
                row[f"valid_{cfg.train.stop_metric}"], stop = stopper.update(model, done)
            history.append(row)
            if step % cfg.train.log_every == 0 or step == cfg.train.steps - 1:
                bar.set_postfix({k: f"{v:.3f}" for k, v in values.items()})
            if stop:
                break
    finally:
        batches.close()
        bar.close()
    restored = stopper.best_state is not None
    if restored:
        model.load_state_dict(stopper.best_state)
    stopping = stopper.record(done, restored)
    train_seconds = time.time() - started
    model.eval()
    model.cpu()
    for state in optimizer.state.values():  # checkpoints are written from CPU tensors
        for key, value in state.items():
            if torch.is_tensor(value):
                state[key] = value.cpu()
    tail = history[-max(1, len(history) // 10) :]
    last = {
        k: float(np.mean([h[k] for h in tail if k in h]))
        for k in (tail[0] if tail else {})
        if k not in ("step", "param_checksums") and not k.startswith("valid_")
    }
    manifest = None
    if ctx.is_main:
        manifest = save_run(
            run_dir, model, cfg, prep, done, optimizer, {"world_size": ctx.world_size, "stopping": stopping}
        )
        (Path(run_dir) / "train_history.json").write_text(json.dumps(history))
    dist_.barrier(ctx)
    if manifest is None:
        manifest = json.loads((Path(run_dir) / "manifest.json").read_text())
    steps_run = len(history)
    examples = steps_run * cfg.train.batch_size * ctx.world_size
    summary = {
        "first_loss": first,
        "last_loss": last,
        "train_seconds": train_seconds,
        "train_samples": n,
        "padding_fraction": batches.padding_fraction(),
        "sampler_padding_fraction": sampler.padding_fraction(),
        "data_wait_seconds": batches.wait_seconds,
        "world_size": ctx.world_size,
        "rank": ctx.rank,
        "device": str(ctx.device),
        "examples_seen": examples,
        "epochs": sampler.epoch + 1,  # epochs the sampler began (it runs <= 3 batches ahead)
        "stopping": stopping,
        "manifest": manifest,
    }
    return {"model": model, "prep": prep, "summary": summary}
