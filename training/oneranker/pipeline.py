"""Dataset -> splits -> semantic IDs -> item tables -> padded sample tensors -> model.

`prepare(cfg)` is the single entry every stage (train, evaluate, export, serve) starts from, so
they all see the same items, codes and tokenization.
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
    sids: "object"  # tokenizer.SemanticIds
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
    from .data.splits import make_splits, popularity_scores
    from .tokenizer import fit_semantic_ids

    ds = load_dataset(cfg)
    splits = make_splits(ds, cfg.data, num_task_tokens=cfg.model.num_task_tokens, seed=cfg.data.seed)
    if sids is None:
        sids = fit_semantic_ids(ds, cfg.tokenizer)
    return Prepared(cfg, ds, splits, sids, item_tables(ds, sids), popularity_scores(ds, splits["train"]))


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
