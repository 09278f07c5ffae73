"""Request validation and tokenization: raw behaviour events -> model tensors (numpy only).

Data flow (one request):
    user_features [F] int, events (item ids [L], actions [L], timestamps [L]), request_time
      -> validate (actions legal, 0 <= times <= request_time, lengths equal, L >= 1), keep the
         most recent max_history events, unknown item ids -> the OOV path (or refused: policy)
      -> hist_sids [L, D] int64 (semantic-ID path of each item), hist_actions [L] int64,
         hist_dt [L] float32 (request_time - timestamp, seconds), hist_len = L
      -> batched and right-padded to a length bucket: hist_* [B, Lb, ...], hist_len [B].
Candidates: ad_idx [n] -> cand_sids [n, D], cand_attrs [n, 2] (advertiser, category), cand_bid [n].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oneranker_client.contract import ACTION_CONTENT_VIEW, NUM_ACTIONS

from .config import OOV_REJECT, OOV_TOKEN
from .tables import ItemTables


class RequestError(ValueError):
    """A request is invalid; the message says which field and why (sent back as INVALID_ARG)."""


@dataclass
class UserTokens:
    """One user's tokens before batching, and what tokenization did to the raw history."""

    user_features: np.ndarray  # [F] int64
    hist_sids: np.ndarray  # [L, D] int64
    hist_actions: np.ndarray  # [L] int64
    hist_dt: np.ndarray  # [L] float32
    unknown: int = 0  # history events whose item id is unknown (served as the OOV token)
    dropped: int = 0  # oldest events cut beyond max_history

    @property
    def length(self) -> int:
        return int(self.hist_actions.shape[0])


@dataclass(frozen=True)
class HistoryPolicy:
    """How raw histories are turned into tokens (from `ServeConfig` and the export's OOV code)."""

    feature_cardinality: int
    max_history: int
    oov_code: int | None  # None: the model has no OOV token (older exports): unknown ids are refused
    oov_policy: str = OOV_TOKEN
    # request_time may differ from the server clock by at most this many seconds; None = unchecked
    # (benches and offline evaluation replay old logs).
    timestamp_skew_s: int | None = None


def tokenize_request(
    tables: ItemTables, user_features, item_ids, actions, timestamps, request_time, policy: HistoryPolicy, now=None
) -> UserTokens:
    """Validate one raw request and turn it into tokens (see module docstring). Events are in
    chronological order; beyond `max_history` the oldest are dropped, as training keeps the most
    recent ones. `now`: the server clock (unix seconds), for the optional skew check."""
    feats = np.asarray(user_features).reshape(-1)
    item_ids = np.asarray(item_ids).reshape(-1)
    actions = np.asarray(actions).reshape(-1)
    timestamps = np.asarray(timestamps).reshape(-1)
    if feats.size and not np.issubdtype(feats.dtype, np.integer):
        raise RequestError(f"user_features must be integers, got {feats.dtype}")
    if feats.size and (feats.min() < 0 or feats.max() >= policy.feature_cardinality):
        raise RequestError(f"user_features values must lie in [0, {policy.feature_cardinality})")
    if not (len(item_ids) == len(actions) == len(timestamps)):
        raise RequestError(
            "history fields have different lengths: "
            f"item_ids={len(item_ids)} actions={len(actions)} timestamps={len(timestamps)}"
        )
    if len(item_ids) == 0:
        raise RequestError("history is empty: at least one behaviour event is required")
    bad_action = (actions < 1) | (actions >= NUM_ACTIONS)
    if bad_action.any():
        raise RequestError(f"unknown action code {int(actions[bad_action][0])} (allowed 1..{NUM_ACTIONS - 1})")
    request_time = int(np.asarray(request_time).reshape(-1)[0])
    if request_time < 0:
        raise RequestError(f"request_time must be >= 0 (unix seconds), got {request_time}")
    if policy.timestamp_skew_s is not None and now is not None and abs(request_time - now) > policy.timestamp_skew_s:
        raise RequestError(
            f"request_time {request_time} is {request_time - int(now)} s from the server clock "
            f"(allowed +-{policy.timestamp_skew_s} s)"
        )
    if (timestamps < 0).any():
        raise RequestError(f"event timestamps must be >= 0 (unix seconds), got {int(timestamps.min())}")
    if (timestamps > request_time).any():
        raise RequestError("an event timestamp is after the request time")
    dropped = max(0, len(item_ids) - policy.max_history)
    if dropped:
        item_ids, actions, timestamps = item_ids[dropped:], actions[dropped:], timestamps[dropped:]
    is_content = actions == ACTION_CONTENT_VIEW
    idx = np.where(is_content, tables.content_index(item_ids), tables.ad_index(item_ids))
    unknown = idx < 0
    if unknown.any() and (policy.oov_policy == OOV_REJECT or policy.oov_code is None):
        why = "oov policy is reject" if policy.oov_code is not None else "this model version has no OOV token"
        raise RequestError(
            f"unknown item ids {item_ids[unknown][:5].tolist()} (not in the catalogue of this model version; {why})"
        )
    hist_sids = np.full((len(idx), tables.sid_depth), policy.oov_code or 0, dtype=np.int64)
    hist_sids[~unknown] = tables.event_codes(idx[~unknown], actions[~unknown])
    return UserTokens(
        user_features=feats.astype(np.int64),
        hist_sids=hist_sids,
        hist_actions=actions.astype(np.int64),
        hist_dt=(request_time - timestamps).astype(np.float32),
        unknown=int(unknown.sum()),
        dropped=dropped,
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
