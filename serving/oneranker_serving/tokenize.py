"""Request validation and tokenization: raw behaviour events -> model tensors (numpy only).

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

from oneranker_client.contract import ACTION_CONTENT_VIEW, NUM_ACTIONS

from .tables import ItemTables


class RequestError(ValueError):
    """A request is invalid; the message says which field and why (sent back as INVALID_ARG)."""


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


def pad_exclusions(lists: list[np.ndarray]) -> np.ndarray:
    """Dense ad indices per request -> [B, E] int64, -1-padded to the longest list (E >= 1, so a
    shape-strict engine never sees an empty dimension)."""
    longest = max([1] + [len(x) for x in lists])
    out = np.full((len(lists), longest), -1, dtype=np.int64)
    for row, x in enumerate(lists):
        out[row, : len(x)] = x
    return out
