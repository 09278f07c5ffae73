"""Training past one process: data parallelism with torchrun + DistributedDataParallel.

The training command is the same for 1 process and N: `oneranker train ...` runs single-process;
under torchrun (which sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT) every
process joins one process group and trains a replica:

    # one machine, 2 processes
    torchrun --standalone --nproc-per-node 2 -m oneranker.cli train --preset small
    # N machines x G GPUs (run the same command on every node)
    torchrun --nnodes N --nproc-per-node G --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
        -m oneranker.cli train --preset paper --run-dir artifacts/runs/paper

Backend: NCCL when the process drives a CUDA device, gloo on CPU. Device: CUDA (cuda:LOCAL_RANK)
when available, unless ONERANKER_DEVICE=cpu; ONERANKER_DEVICE=cuda requires it.

What each piece does (see `oneranker.train.train` for the loop):

* `init()` joins the process group from the torchrun environment (env:// rendezvous) and picks the
  device; single-process runs get a context with world_size 1 and no process group.
* Every rank builds the same dataset, splits and semantic IDs (all deterministic in the seeds);
  `check_same` verifies the semantic-ID version is identical on every rank before training.
* `wrap()` wraps a `TrainStep` (model + loss, so every parameter is used inside DDP's forward) in
  DistributedDataParallel: gradients are averaged across ranks in the backward pass; rank 0's
  initial parameters are broadcast at construction. Parameters that receive no gradient under the
  config's ablation switches are detected with one probe backward on the first batch
  (find_unused_parameters only then). Buffers are constant item tables: not re-broadcast.
* `RankBucketSampler` (benchmarks; training uses `pipeline.EpochSampler`, which splits global
  batches by rank the same way): every rank draws the SAME length bucket at each step (one shared stream)
  and its OWN examples from it (a per-rank stream), so all ranks run the same padded shape per
  step (no rank waits for a longer bucket) and see different data. `train.batch_size` is the
  per-process batch: the global batch is batch_size x world_size.
* `Prefetcher`: a background thread assembles the next batches (index, pad/trim, pin memory on
  CUDA) while the current step runs; the loop's wait for data is reported as data_wait_seconds.
  On CUDA, histories are padded to their length bucket (pinned shapes per bucket); on CPU to the
  batch's longest history (less padding). The padding fraction of the tensors actually fed is
  reported either way.
* Logged losses are all-reduced (mean over ranks) so the history and progress bar show the
  global loss; only rank 0 shows progress and writes the checkpoint, item tables and history
  (the checkpoint holds the bare model's state: it reloads into a single-process run).
* CPU threads: each process uses max(1, train.num_threads // LOCAL_WORLD_SIZE) intra-op threads
  so N processes on one machine do not oversubscribe its cores.
* ONERANKER_CHECK_SYNC=1: after every optimizer step every rank's parameter checksum is gathered
  into the history row (`param_checksums`); they must be identical (a debugging aid, used by the
  tests).
"""

from __future__ import annotations

import os
import queue
import threading
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .pipeline import BucketSampler, to_batch


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # init() created the process group (shutdown() destroys it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip() else default


def pick_device(local_rank: int = 0) -> torch.device:
    want = os.environ.get("ONERANKER_DEVICE", "auto").lower()
    if want not in ("auto", "cpu", "cuda"):
        raise ValueError(f"ONERANKER_DEVICE must be auto, cpu or cuda, got {want!r}")
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("ONERANKER_DEVICE=cuda but torch sees no CUDA device")
    if want != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init() -> DistContext:
    """Context from the torchrun environment; joins the process group when WORLD_SIZE > 1."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    device = pick_device(local_rank)
    ctx = DistContext(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world, device=device)
    if world <= 1:
        return ctx
    if device.type == "cuda":
        torch.cuda.set_device(device)
    ctx.backend = "nccl" if device.type == "cuda" else "gloo"
    if dist.is_initialized():
        ctx.backend = dist.get_backend()
        ctx.rank, ctx.world_size = dist.get_rank(), dist.get_world_size()
    else:
        dist.init_process_group(backend=ctx.backend, init_method="env://")
        ctx.owns_group = True
    return ctx


def shutdown(ctx: DistContext, failed: bool = False) -> None:
    """Leave the process group init() created (after a barrier, unless this rank failed: a barrier
    would then wait for ranks that may never arrive)."""
    if ctx.owns_group and dist.is_initialized():
        if not failed:
            dist.barrier()
        dist.destroy_process_group()
        ctx.owns_group = False


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def threads_per_process(ctx: DistContext, num_threads: int) -> int:
    return max(1, num_threads // max(1, ctx.local_world_size))


def check_same(value, ctx: DistContext, what: str) -> None:
    """Raise on every rank when `value` differs between ranks (e.g. the semantic-ID version)."""
    if not ctx.enabled:
        return
    values = [None] * ctx.world_size
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        raise RuntimeError(f"{what} differs across ranks: {values}; every rank must build the same data")


class TrainStep(nn.Module):
    """model + loss as one module: forward(batch, step) -> loss_terms dict (what DDP wraps)."""

    def __init__(self, model: nn.Module, cfg, loss_fn):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.loss_fn = loss_fn

    def forward(self, batch: dict, step: int) -> dict:
        return self.loss_fn(self.model, batch, self.cfg, step)


def unused_parameters(step_module: TrainStep, batch: dict, step: int) -> list[str]:
    """Names of parameters that get no gradient from one forward/backward (gradients cleared)."""
    terms = step_module(batch, step)
    terms["total"].backward()
    names = [n for n, p in step_module.named_parameters() if p.requires_grad and p.grad is None]
    step_module.zero_grad(set_to_none=True)
    return names


def wrap(step_module: TrainStep, ctx: DistContext, probe_batch: dict | None = None, step: int = 0) -> nn.Module:
    """DDP around `step_module` when world_size > 1, else the module itself."""
    if not ctx.enabled:
        return step_module
    unused = unused_parameters(step_module, probe_batch, step) if probe_batch is not None else []
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    with warnings.catch_warnings():  # newer torch deprecates broadcast_buffers; False is still what we mean
        warnings.simplefilter("ignore", FutureWarning)
        return nn.parallel.DistributedDataParallel(
            step_module, device_ids=device_ids, broadcast_buffers=False, find_unused_parameters=bool(unused)
        )


def all_reduce_mean(values: dict[str, torch.Tensor], ctx: DistContext) -> dict[str, float]:
    """Mean over ranks of scalar loss terms (detached), as floats."""
    keys = list(values)
    flat = torch.stack([values[k].detach().float().reshape(()) for k in keys])
    if ctx.enabled:
        if ctx.backend == "gloo":
            flat = flat.cpu()
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat = flat / ctx.world_size
    return dict(zip(keys, flat.tolist()))


@torch.no_grad()
def param_checksum(model: nn.Module) -> float:
    """Order-sensitive float64 checksum of every parameter (bitwise-equal models -> equal sums)."""
    total = torch.zeros((), dtype=torch.float64)
    for i, p in enumerate(model.parameters()):
        v = p.detach().double().flatten().cpu()
        w = torch.arange(1, v.numel() + 1, dtype=torch.float64) / v.numel()
        total += (i + 1) * (v.sum() + (v * w).sum())
    return float(total)


def gather_floats(value: float, ctx: DistContext) -> list[float]:
    if not ctx.enabled:
        return [value]
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device if ctx.backend == "nccl" else "cpu")
    out = [torch.zeros_like(t) for _ in range(ctx.world_size)]
    dist.all_gather(out, t)
    return [float(x.item()) for x in out]


class RankBucketSampler(BucketSampler):
    """BucketSampler for rank `rank` of `world`: the bucket of each step comes from a stream shared
    by all ranks (same padded shape everywhere), the examples from a per-rank stream."""

    def __init__(self, lengths: np.ndarray, buckets, batch_size: int, seed: int, rank: int, world: int):
        super().__init__(lengths, buckets, batch_size, seed)
        self.bucket_rng = np.random.default_rng([seed, 0, world])
        self.rng = np.random.default_rng([seed, 1 + rank, world])

    def next(self) -> np.ndarray:
        group = self.groups[self.bucket_rng.choice(len(self.groups), p=self.probs)]
        index = self.rng.choice(group, size=min(self.batch_size, len(group)), replace=False)
        longest = int(self.lengths[index].max())
        self.tokens += int(self.lengths[index].sum())
        self.padded += longest * len(index)
        return index


def make_sampler(lengths: np.ndarray, buckets, batch_size: int, seed: int, ctx: DistContext) -> BucketSampler:
    if ctx.enabled:
        return RankBucketSampler(lengths, buckets, batch_size, seed, ctx.rank, ctx.world_size)
    return BucketSampler(lengths, buckets, batch_size, seed)


class Prefetcher:
    """Assembles `count` batches in a background thread, `depth` ahead of the training loop.

    Batches are padded to their length bucket when `pin_shapes` (fixed shapes per bucket), else
    to the batch's longest history; pinned (page-locked) on CUDA and copied non-blocking.
    `make_batch(index, step, buckets)` builds a batch (default: `to_batch` of `arrays`); the
    i-th batch gets step = start_step + i (per-step candidate draws are seeded by it)."""

    def __init__(
        self,
        arrays: dict,
        sampler: BucketSampler,
        count: int,
        device: torch.device,
        buckets=None,
        pin_shapes: bool = False,
        depth: int = 3,
        make_batch=None,
        start_step: int = 0,
    ):
        self.arrays, self.sampler, self.count = arrays, sampler, count
        self.make_batch = make_batch or (lambda index, step, bk: to_batch(arrays, index, bk))
        self.start_step = start_step
        self.device = device
        self.buckets = list(buckets) if (pin_shapes and buckets) else None
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.tokens = 0  # real history tokens fed
        self.padded = 0  # history slots fed (tokens + padding)
        self.wait_seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="oneranker-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for i in range(self.count):
                index = self.sampler.next()
                batch = self.make_batch(index, self.start_step + i, self.buckets)
                if self.device.type == "cuda":
                    batch = {k: v.pin_memory() for k, v in batch.items()}
                while not self._stop.is_set():
                    try:
                        self.queue.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as err:  # surfaced in the training loop
            self.queue.put(err)

    def __iter__(self):
        for _ in range(self.count):
            t0 = time.perf_counter()
            batch = self.queue.get()
            self.wait_seconds += time.perf_counter() - t0
            if isinstance(batch, BaseException):
                raise batch
            self.tokens += int(batch["hist_len"].sum())
            self.padded += int(batch["hist_actions"].shape[0] * batch["hist_actions"].shape[1])
            if self.device.type != "cpu":
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            yield batch

    def padding_fraction(self) -> float:
        return 1.0 - self.tokens / max(1, self.padded)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
