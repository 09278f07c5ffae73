"""Training candidates, redrawn at every step: the logged positive + sampled negatives.

`NegativeSampler(ds, cfg, seed).draw(index, step)` -> candidates [B, n] (ad_idx) for the training
samples `index` (rows of `make_splits(...)["train"]`), n = cfg.num_train_candidates:

* column 0 = the sample's target (the logged positive);
* up to `cfg.num_hard_negatives` hard negatives: ads shown in the target's session and not
  engaged with, i.e. ACTION_IMPRESSION rows of the same session (a session = the user's events
  separated by gaps <= `cfg.session_gap_seconds`). On the synthetic log these are real
  impressions; on MovieLens-100K they are ratings <= 3, a PROXY for "seen, not engaged" (the
  loader maps them to ACTION_IMPRESSION). Only training rows (`training_rows_mask` of the
  configured split: before the user's validation target, or before the global cutoff) are used;
* the rest uniform over the catalogue;
* never one of the user's positives (click/conversion rows among the training rows; the
  validation/test targets are not consulted, that would leak them), no duplicates in a row.

The draw is a pure function of (seed, step, index): reproducible under a seed and different
between steps (a fresh numpy Generator seeded with [seed, step] per call). The eval candidates
(valid/test) stay the fixed ones of `make_splits` (paper protocol: target among 30).
"""

from __future__ import annotations

import numpy as np

from ..config import ACTION_CLICK, ACTION_CONVERSION, ACTION_IMPRESSION, DataConfig
from .schema import Dataset
from .splits import split_target_rows, training_rows_mask


def session_ids(ds: Dataset, gap_seconds: int) -> np.ndarray:
    """[E] int64 session index per log row: a new session starts at a user's first row and after
    every gap > gap_seconds."""
    log = ds.log
    if log.user.size == 0:
        return np.zeros(0, dtype=np.int64)
    new = np.ones(log.user.size, dtype=bool)
    new[1:] = (np.diff(log.user) != 0) | (np.diff(log.timestamp) > gap_seconds)
    return np.cumsum(new) - 1


class NegativeSampler:
    """See module docstring. Built once per run (vectorised precomputation over the log)."""

    def __init__(self, ds: Dataset, cfg: DataConfig, seed: int):
        log = ds.log
        self.num_ads = ds.catalog.num_ads
        self.n = cfg.num_train_candidates
        self.num_hard = cfg.num_hard_negatives
        self.seed = seed
        if self.n - 1 > self.num_ads - 1:
            raise ValueError(f"cannot sample {self.n - 1} candidates besides the target from {self.num_ads} ads")
        rows = split_target_rows(ds, cfg)["train"][0]
        self.users = log.user[rows].astype(np.int64)
        self.targets = log.item[rows].astype(np.int64)
        # [S, F] request context of each training sample (ground-truth values of its candidates)
        self.context = None if ds.context is None else ds.context[rows].astype(np.int64)
        train_rows = training_rows_mask(ds, cfg)
        positive = np.isin(log.action, (ACTION_CLICK, ACTION_CONVERSION)) & train_rows
        self.positive_keys = np.unique(log.user[positive] * self.num_ads + log.item[positive])
        # hard pools: per training sample, the impressions of its target's session (CSR)
        session = session_ids(ds, cfg.session_gap_seconds)
        imp = np.flatnonzero((log.action == ACTION_IMPRESSION) & train_rows)
        imp = imp[~self.is_positive(log.user[imp], log.item[imp])]
        imp_session = session[imp]  # non-decreasing (log sorted by user, time)
        target_session = session[rows]
        lo = np.searchsorted(imp_session, target_session, side="left")
        hi = np.searchsorted(imp_session, target_session, side="right")
        self.pool_start, self.pool_len = lo, hi - lo
        self.pool_items = log.item[imp].astype(np.int64)

    def is_positive(self, users: np.ndarray, ads: np.ndarray) -> np.ndarray:
        """bool, same shape: (user, ad) is a positive of the user among the training rows."""
        keys = users.astype(np.int64) * self.num_ads + ads
        if self.positive_keys.size == 0:
            return np.zeros(keys.shape, dtype=bool)
        pos = np.minimum(np.searchsorted(self.positive_keys, keys), self.positive_keys.size - 1)
        return self.positive_keys[pos] == keys

    def hard_pool(self, i: int) -> np.ndarray:
        """The hard-negative ads of training sample i (may repeat an ad shown twice)."""
        return self.pool_items[self.pool_start[i] : self.pool_start[i] + self.pool_len[i]]

    def _hard(self, index: np.ndarray, rng) -> np.ndarray:
        """[B, num_hard] ad_idx or -1: a uniform subset of each sample's pool."""
        B = index.size
        lens = self.pool_len[index]
        width = int(lens.max()) if B else 0
        if self.num_hard == 0 or width == 0:
            return np.full((B, self.num_hard), -1, dtype=np.int64)
        col = np.arange(width)[None, :]
        inside = col < lens[:, None]
        pool = np.where(
            inside,
            self.pool_items[np.minimum(self.pool_start[index][:, None] + col, max(0, self.pool_items.size - 1))],
            -1,
        )
        keys = np.where(inside, rng.random((B, width)), np.inf)
        pick = np.take_along_axis(pool, np.argsort(keys, axis=1)[:, : self.num_hard], axis=1)
        if pick.shape[1] < self.num_hard:
            pick = np.pad(pick, ((0, 0), (0, self.num_hard - pick.shape[1])), constant_values=-1)
        return pick

    def draw(self, index: np.ndarray, step: int) -> np.ndarray:
        """[B, n] int64 candidates of training samples `index` at training step `step`."""
        index = np.asarray(index, dtype=np.int64)
        rng = np.random.default_rng([self.seed, step, 0x6E6567])
        B, need = index.size, self.n - 1
        users, targets = self.users[index], self.targets[index]
        out = np.empty((B, self.n), dtype=np.int64)
        out[:, 0] = targets
        todo = np.arange(B)
        pre = self._hard(index, rng)
        while todo.size:
            uniform = rng.integers(0, self.num_ads, size=(todo.size, 2 * need + 8))
            cand = np.concatenate([pre[todo], uniform], axis=1)
            ok = (cand >= 0) & (cand != targets[todo, None])
            ok &= ~self.is_positive(np.broadcast_to(users[todo, None], cand.shape), np.maximum(cand, 0))
            # keep the first occurrence of each ad in the row
            order = np.argsort(np.where(ok, cand, -1), axis=1, kind="stable")
            srt = np.take_along_axis(np.where(ok, cand, -1), order, axis=1)
            dup_sorted = np.zeros_like(ok)
            dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
            dup = np.zeros_like(ok)
            np.put_along_axis(dup, order, dup_sorted, axis=1)
            ok &= ~dup
            enough = ok.sum(1) >= need
            rows = todo[enough]
            keep = ok[enough]
            col = np.argsort(~keep, axis=1, kind="stable")[:, :need]  # first `need` kept, in order
            out[rows, 1:] = np.take_along_axis(cand[enough], col, axis=1)
            todo = todo[~enough]
        out[:, 1:] = rng.permuted(out[:, 1:], axis=1)
        return out
