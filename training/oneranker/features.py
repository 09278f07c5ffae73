"""Raw behaviour events -> model tensors. numpy only: training and the Triton preprocess share it.

Data flow (one request):
    user_features [F] int, events (item ids [L], actions [L], timestamps [L]), request_time
      -> validate (ids known, actions legal, times before the request, lengths equal, L >= 1)
      -> hist_sids [L, D] int64 (semantic-ID path of each item), hist_actions [L] int64,
         hist_dt [L] float32 (request_time - timestamp, seconds), hist_len = L
      -> batched and right-padded to a length bucket: hist_* [B, Lb, ...], hist_len [B].
Candidates: ad_idx [n] -> cand_sids [n, D], cand_attrs [n, 2] (advertiser, category), cand_bid [n].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ACTION_CONTENT_VIEW, NUM_ACTIONS


class RequestError(ValueError):
    """A request (or data row) is invalid; the message says which field and why."""


@dataclass
class ItemTables:
    """Id <-> index <-> semantic-ID lookups, versioned with the checkpoint that uses them."""

    ad_ids: np.ndarray  # [A] int64
    ad_codes: np.ndarray  # [A, D] int64
    ad_advertiser: np.ndarray  # [A] int64
    ad_category: np.ndarray  # [A] int64
    ad_bid: np.ndarray  # [A] float32
    content_ids: np.ndarray  # [C] int64
    content_codes: np.ndarray  # [C, D] int64

    def __post_init__(self):
        self._ad_order = np.argsort(self.ad_ids, kind="stable")
        self._content_order = np.argsort(self.content_ids, kind="stable")

    @staticmethod
    def _lookup(ids: np.ndarray, table: np.ndarray, order: np.ndarray) -> np.ndarray:
        """Indices of `ids` in `table` (-1 where unknown), vectorized by binary search."""
        if len(table) == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        sorted_table = table[order]
        pos = np.clip(np.searchsorted(sorted_table, ids), 0, len(table) - 1)
        found = sorted_table[pos] == ids
        return np.where(found, order[pos], -1).astype(np.int64)

    def ad_index(self, ids: np.ndarray) -> np.ndarray:
        return self._lookup(np.asarray(ids, dtype=np.int64), self.ad_ids, self._ad_order)

    def content_index(self, ids: np.ndarray) -> np.ndarray:
        return self._lookup(np.asarray(ids, dtype=np.int64), self.content_ids, self._content_order)

    @property
    def sid_depth(self) -> int:
        return int(self.ad_codes.shape[1])

    def event_codes(self, item_idx: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """[L, D] semantic-ID paths of events given dense indices (content vs ad by action)."""
        is_content = actions == ACTION_CONTENT_VIEW
        codes = np.empty((len(item_idx), self.sid_depth), dtype=np.int64)
        if is_content.any():
            codes[is_content] = self.content_codes[item_idx[is_content]]
        if (~is_content).any():
            codes[~is_content] = self.ad_codes[item_idx[~is_content]]
        return codes

    def candidate_features(self, ad_idx: np.ndarray):
        """ad_idx [..., n] -> (cand_sids [..., n, D], cand_attrs [..., n, 2], cand_bid [..., n])."""
        attrs = np.stack([self.ad_advertiser[ad_idx], self.ad_category[ad_idx]], axis=-1)
        return self.ad_codes[ad_idx], attrs.astype(np.int64), self.ad_bid[ad_idx].astype(np.float32)


@dataclass
class UserTokens:
    """One user's tokens before batching."""

    user_features: np.ndarray  # [F] int64
    hist_sids: np.ndarray  # [L, D] int64
    hist_actions: np.ndarray  # [L] int64
    hist_dt: np.ndarray  # [L] float32

    @property
    def length(self) -> int:
        return int(self.hist_actions.shape[0])


def tokenize_request(
    tables: ItemTables,
    user_features,
    item_ids,
    actions,
    timestamps,
    request_time,
    feature_cardinality: int,
    max_history: int,
) -> UserTokens:
    """Validate one raw request and turn it into tokens (see module docstring)."""
    feats = np.asarray(user_features).reshape(-1)
    item_ids = np.asarray(item_ids).reshape(-1)
    actions = np.asarray(actions).reshape(-1)
    timestamps = np.asarray(timestamps).reshape(-1)
    if feats.size and not np.issubdtype(feats.dtype, np.integer):
        raise RequestError(f"user_features must be integers, got {feats.dtype}")
    if feats.size and (feats.min() < 0 or feats.max() >= feature_cardinality):
        raise RequestError(f"user_features values must lie in [0, {feature_cardinality})")
    if not (len(item_ids) == len(actions) == len(timestamps)):
        raise RequestError(
            "history fields have different lengths: "
            f"item_ids={len(item_ids)} actions={len(actions)} timestamps={len(timestamps)}"
        )
    if len(item_ids) == 0:
        raise RequestError("history is empty: at least one behaviour event is required")
    if len(item_ids) > max_history:
        raise RequestError(f"history has {len(item_ids)} events, the maximum is {max_history}")
    bad_action = (actions < 1) | (actions >= NUM_ACTIONS)
    if bad_action.any():
        raise RequestError(f"unknown action code {int(actions[bad_action][0])} (allowed 1..{NUM_ACTIONS - 1})")
    request_time = int(np.asarray(request_time).reshape(-1)[0])
    if (timestamps > request_time).any():
        raise RequestError("an event timestamp is after the request time")
    is_content = actions == ACTION_CONTENT_VIEW
    idx = np.where(is_content, tables.content_index(item_ids), tables.ad_index(item_ids))
    if (idx < 0).any():
        unknown = item_ids[idx < 0][:5].tolist()
        raise RequestError(f"unknown item ids {unknown} (not in the catalogue of this model version)")
    return UserTokens(
        user_features=feats.astype(np.int64),
        hist_sids=tables.event_codes(idx, actions),
        hist_actions=actions.astype(np.int64),
        hist_dt=(request_time - timestamps).astype(np.float32),
    )


def bucket_for(length: int, buckets) -> int:
    for b in buckets:
        if length <= b:
            return int(b)
    raise RequestError(f"history length {length} exceeds the largest bucket {buckets[-1]}")


def pad_batch(users: list[UserTokens], length: int) -> dict[str, np.ndarray]:
    """Right-pad a list of users to `length`; returns the generator's input tensors."""
    depth = users[0].hist_sids.shape[1]
    batch = len(users)
    out = {
        "user_features": np.stack([u.user_features for u in users]).astype(np.int64),
        "hist_sids": np.zeros((batch, length, depth), dtype=np.int64),
        "hist_actions": np.zeros((batch, length), dtype=np.int64),
        "hist_dt": np.zeros((batch, length), dtype=np.float32),
        "hist_len": np.array([u.length for u in users], dtype=np.int64),
    }
    for row, u in enumerate(users):
        n = u.length
        out["hist_sids"][row, :n] = u.hist_sids
        out["hist_actions"][row, :n] = u.hist_actions
        out["hist_dt"][row, :n] = u.hist_dt
    return out
