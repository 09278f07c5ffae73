"""Dataset -> splits -> semantic IDs -> item tables -> padded sample tensors -> model.

`prepare(cfg)` is the single entry every stage (train, evaluate, export, serve) starts from, so
they all see the same items, codes and tokenization. Training batches: `EpochSampler` (which
cut points, rotating per epoch) -> `TrainBatcher` (per-step candidates and OOV replacement).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from oneranker_serving.tables import ItemTables

from .config import ACTION_IMPRESSION, ExperimentConfig
from .data.schema import Dataset, Samples
from .model import OneRanker


@dataclass
class Prepared:
    cfg: ExperimentConfig
    dataset: Dataset
    splits: dict[str, Samples]
    sids: object  # tokenizer.SemanticIds
    tables: ItemTables
    popularity: np.ndarray  # [A] training-portion positive counts


def load_dataset(cfg: ExperimentConfig) -> Dataset:
    source = cfg.data.source
    if source == "synthetic":
        from .data.synthetic import make_synthetic

        return make_synthetic(cfg.data)
    from .data import real  # MovieLens-100K, Ta-Feng, user CSV/TSV/Parquet

    return real.load(cfg.data)


def item_tables(ds: Dataset, sids) -> ItemTables:
    cat = ds.catalog
    return ItemTables(
        ad_ids=cat.ad_ids.astype(np.int64),
        ad_codes=sids.ad_codes.astype(np.int64),
        ad_advertiser=cat.ad_advertiser.astype(np.int64),
        ad_category=cat.ad_category.astype(np.int64),
        ad_bid=cat.ad_bid.astype(np.float32),
        content_ids=cat.content_ids.astype(np.int64),
        content_codes=sids.content_codes.astype(np.int64),
    )


def prepare(cfg: ExperimentConfig, sids=None) -> Prepared:
    from .data.splits import make_splits, popularity_scores, training_rows_mask
    from .tokenizer import fit_semantic_ids

    ds = load_dataset(cfg)
    splits = make_splits(ds, cfg.data, num_task_tokens=cfg.model.num_task_tokens, seed=cfg.data.seed)
    if sids is None:
        sids = fit_semantic_ids(ds, cfg.tokenizer, training_rows_mask(ds, cfg.data))
    return Prepared(cfg, ds, splits, sids, item_tables(ds, sids), popularity_scores(ds, splits["train"], cfg.data))


def level_sizes(cfg: ExperimentConfig) -> list[int]:
    t = cfg.tokenizer
    return [t.codebook_size] * t.num_levels + [t.max_collisions]


def build_model(cfg: ExperimentConfig, sids, num_advertisers: int, num_categories: int) -> OneRanker:
    return OneRanker(
        cfg.model,
        cfg.tokenizer,
        cfg.data,
        fake_item_centroids=torch.from_numpy(np.asarray(sids.centroids, dtype=np.float32)),
        level_code_features=torch.from_numpy(np.asarray(sids.level_code_features, dtype=np.float32)),
        level_sizes=level_sizes(cfg),
        num_advertisers=num_advertisers,
        num_categories=num_categories,
    )


def sample_arrays(prep: Prepared, samples: Samples) -> dict[str, np.ndarray]:
    """Every sample as padded numpy arrays (history padded to the split's longest history)."""
    ds, tables = prep.dataset, prep.tables
    log = ds.log
    lengths = (samples.hist_end - samples.hist_start).astype(np.int64)
    width = max(int(lengths.max()), 1)
    rows = samples.hist_start[:, None] + np.arange(width)[None, :]
    valid = np.arange(width)[None, :] < lengths[:, None]
    rows = np.where(valid, rows, 0)
    actions = np.where(valid, log.action[rows], 0)
    items = np.where(valid, log.item[rows], 0)
    lookup = np.where(valid, actions, ACTION_IMPRESSION)  # padded slots look up ad 0, zeroed below
    codes = tables.event_codes(items.reshape(-1), lookup.reshape(-1)).reshape(len(samples), width, -1)
    codes = np.where(valid[..., None], codes, 0)
    dt = np.where(valid, samples.request_time[:, None] - log.timestamp[rows], 0).astype(np.float32)
    feats = np.concatenate([log.profile[samples.user], samples.context], axis=1).astype(np.int64)
    cand_sids, cand_attrs, cand_bid = tables.candidate_features(samples.candidates)
    head_valid = samples.head_targets >= 0
    head_paths = np.where(head_valid[..., None], tables.ad_codes[np.maximum(samples.head_targets, 0)], -1)
    return {
        "user_features": feats,
        "hist_sids": codes.astype(np.int64),
        "hist_actions": actions.astype(np.int64),
        "hist_dt": dt,
        "hist_len": lengths,
        "cand_sids": cand_sids,
        "cand_attrs": cand_attrs,
        "cand_bid": cand_bid,
        "cand_values": samples.candidate_values.astype(np.float32),
        "cand_value_known": np.full(len(samples), ds.ground_truth is not None),
        "head_paths": head_paths.astype(np.int64),
        "head_valid": head_valid,
    }


def to_batch(arrays: dict[str, np.ndarray], index: np.ndarray, buckets=None) -> dict[str, torch.Tensor]:
    """Select rows and trim history padding to the batch's longest history (rounded up to a
    length bucket when `buckets` is given)."""
    length = int(arrays["hist_len"][index].max())
    if buckets is not None:
        length = next((b for b in buckets if b >= length), length)
    out = {}
    for key, value in arrays.items():
        v = value[index]
        if key in ("hist_sids", "hist_actions", "hist_dt"):
            v = v[:, :length]
            if v.shape[1] < length:
                pad = [(0, 0), (0, length - v.shape[1])] + [(0, 0)] * (v.ndim - 2)
                v = np.pad(v, pad)
        out[key] = torch.from_numpy(np.ascontiguousarray(v))
    return out


class BucketSampler:
    """Batches of similar history length: samples are grouped by their length bucket and a step
    draws its batch from one bucket (chosen with probability proportional to its size), so a
    batch is padded only up to that bucket. `padding_fraction()` reports the waste."""

    def __init__(self, lengths: np.ndarray, buckets, batch_size: int, seed: int):
        self.buckets = list(buckets)
        which = np.searchsorted(np.asarray(self.buckets), lengths)
        self.groups = [np.flatnonzero(which == i) for i in range(len(self.buckets))]
        self.groups = [g for g in self.groups if len(g)]
        sizes = np.array([len(g) for g in self.groups], dtype=np.float64)
        self.probs = sizes / sizes.sum()
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.lengths = lengths
        self.tokens = 0
        self.padded = 0

    def next(self) -> np.ndarray:
        group = self.groups[self.rng.choice(len(self.groups), p=self.probs)]
        index = self.rng.choice(group, size=min(self.batch_size, len(group)), replace=False)
        longest = int(self.lengths[index].max())
        self.tokens += int(self.lengths[index].sum())
        self.padded += longest * len(index)
        return index

    def padding_fraction(self) -> float:
        return 1.0 - self.tokens / max(1, self.padded)


class EpochSampler:
    """Bucketed batches over a rotating subset of training cut points (one epoch at a time).

    Cut points = rows of the train `Samples` (every positive before the validation target). Each
    user's cut points get one seeded permutation; epoch e takes the ones at permutation ranks
    e*k, ..., e*k + k - 1 (mod the user's count), k = `cuts_per_epoch`, so successive epochs walk
    through all of them and an epoch has sum_u min(k, n_u) samples. An epoch's samples are
    shuffled, grouped by history-length bucket and cut into global batches of batch_size * world
    (a bucket's last partial batch too), whose order is shuffled; rank r takes rows r::world of
    each global batch, so every rank runs the same bucket at every step. Deterministic in `seed`.
    """

    def __init__(
        self,
        users: np.ndarray,
        lengths: np.ndarray,
        buckets,
        batch_size: int,
        cuts_per_epoch: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
    ):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.rank, self.world = rank, world
        self.which = np.searchsorted(np.asarray(list(buckets)), lengths)
        rng = np.random.default_rng([seed, 0x657063])
        order = np.lexsort((rng.random(users.size), users))  # by user, then a random key
        counts = np.bincount(users)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.rank_in_user = np.empty(users.size, dtype=np.int64)
        self.rank_in_user[order] = np.arange(users.size) - first[users[order]]
        self.user_count = counts[users]
        self.k = cuts_per_epoch
        self.epoch = -1
        self.queue: list[np.ndarray] = []
        self.tokens = self.padded = 0

    def epoch_members(self, epoch: int) -> np.ndarray:
        """Sample indices of `epoch`'s rotating subset."""
        start = (epoch * self.k) % self.user_count
        return np.flatnonzero((self.rank_in_user - start) % self.user_count < np.minimum(self.k, self.user_count))

    def _next_epoch(self) -> None:
        self.epoch += 1
        rng = np.random.default_rng([self.seed, 0x657063, self.epoch + 1])
        members = rng.permutation(self.epoch_members(self.epoch))
        size = self.batch_size * self.world
        batches = []
        for b in np.unique(self.which[members]):
            group = members[self.which[members] == b]
            batches += [
                group[i : i + size] for i in range(0, group.size, size) if group[i : i + size].size >= self.world
            ]
        self.queue = [batches[i] for i in rng.permutation(len(batches))]

    def next(self) -> np.ndarray:
        while not self.queue:
            self._next_epoch()
        index = self.queue.pop(0)[self.rank :: self.world]
        self.tokens += int(self.lengths[index].sum())
        self.padded += int(self.lengths[index].max()) * len(index)
        return index

    def padding_fraction(self) -> float:
        return 1.0 - self.tokens / max(1, self.padded)


_FIXED_CANDIDATE_KEYS = ("cand_sids", "cand_attrs", "cand_bid", "cand_values")


class TrainBatcher:
    """make_batch(index, step, buckets) for training: `to_batch` of the train arrays, plus

    * candidates redrawn for this step (`data.negatives.NegativeSampler`): cand_sids [B,n,D],
      cand_attrs [B,n,2], cand_bid [B,n], cand_values [B,n] (expected eCPM, 0 where unknown),
      cand_engaged [B,n] bool (column 0, the logged positive), cand_value_known [B] bool;
    * the OOV replacement: each real history position is, with probability `oov_share`,
      replaced by the OOV path [oov_code] * D (its action and time are kept: the event happened,
      only the item is unknown).
    Both are seeded by (seed, step): reproducible, different between steps."""

    def __init__(self, prep: Prepared, arrays: dict[str, np.ndarray], seed: int, oov_share: float, oov_code: int):
        from .data.negatives import NegativeSampler

        self.prep, self.seed = prep, seed
        self.arrays = {k: v for k, v in arrays.items() if k not in _FIXED_CANDIDATE_KEYS}
        self.negatives = NegativeSampler(prep.dataset, prep.cfg.data, seed)
        self.oov_share, self.oov_code = oov_share, oov_code

    def candidates(self, index: np.ndarray, step: int) -> np.ndarray:
        return self.negatives.draw(index, step)

    def __call__(self, index: np.ndarray, step: int, buckets=None) -> dict[str, torch.Tensor]:
        batch = to_batch(self.arrays, index, buckets)
        ds, tables = self.prep.dataset, self.prep.tables
        cands = self.candidates(index, step)
        cand_sids, cand_attrs, cand_bid = tables.candidate_features(cands)
        if ds.ground_truth is not None:
            users = np.repeat(self.negatives.users[index], cands.shape[1])
            ctx = self.negatives.context
            ctx = None if ctx is None else np.repeat(ctx[index], cands.shape[1], axis=0)
            values = ds.ground_truth.expected_ecpm(users, cands.ravel(), ds.catalog, ctx).reshape(cands.shape)
        else:
            values = np.zeros(cands.shape)
        engaged = np.zeros(cands.shape, dtype=bool)
        engaged[:, 0] = True
        batch.update(
            cand_sids=torch.from_numpy(np.ascontiguousarray(cand_sids)),
            cand_attrs=torch.from_numpy(np.ascontiguousarray(cand_attrs)),
            cand_bid=torch.from_numpy(np.ascontiguousarray(cand_bid)),
            cand_values=torch.from_numpy(values.astype(np.float32)),
            cand_engaged=torch.from_numpy(engaged),
        )
        if self.oov_share > 0:
            rng = np.random.default_rng([self.seed, step, 0x6F6F76])
            length = batch["hist_actions"].shape[1]
            real = np.arange(length)[None, :] < batch["hist_len"].numpy()[:, None]
            hit = torch.from_numpy((rng.random(real.shape) < self.oov_share) & real)
            batch["hist_sids"] = batch["hist_sids"].masked_fill(hit.unsqueeze(-1), self.oov_code)
        return batch
