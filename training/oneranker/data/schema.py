"""In-memory data model shared by every data source (synthetic, MovieLens, Ta-Feng, CSV).

Data flow: a source builds a `Catalog` (ads + organic content) and an `EventLog` (one row per
behaviour event, sorted by user then time); `oneranker.data.splits` cuts it into `Samples`
(leave-last-out per user, by time); `oneranker.pipeline` turns samples into model tensors.

Item indices (`ad_idx`, `content_idx`) are dense 0-based positions in the catalog arrays; the
external ids (`ad_ids`, `content_ids`) are what clients send. Ads and contents are two id
namespaces (the action code tells which one an event refers to).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..config import ACTION_CONTENT_VIEW


@dataclass
class Catalog:
    ad_ids: np.ndarray  # [A] int64 external ids, unique
    ad_advertiser: np.ndarray  # [A] int64 in [0, num_advertisers)
    ad_category: np.ndarray  # [A] int64 in [0, num_categories)
    ad_bid: np.ndarray  # [A] float32 > 0 (semi-synthetic on real data: say so)
    ad_price: np.ndarray  # [A] float32 >= 0, product price (GMV of one conversion)
    content_ids: np.ndarray  # [C] int64 external ids, unique
    num_advertisers: int
    num_categories: int

    @property
    def num_ads(self) -> int:
        return int(self.ad_ids.shape[0])

    @property
    def num_contents(self) -> int:
        return int(self.content_ids.shape[0])


@dataclass
class EventLog:
    """One row per behaviour event, sorted by (user, timestamp) stably."""

    user: np.ndarray  # [E] int64 user index in [0, num_users)
    item: np.ndarray  # [E] int64: ad_idx for ad actions, content_idx for ACTION_CONTENT_VIEW
    action: np.ndarray  # [E] int64 action code (config.ACTION_*), deepest funnel stage reached
    timestamp: np.ndarray  # [E] int64 seconds
    profile: np.ndarray  # [U, num_profile_features] int64 user features (U tokens)
    num_users: int

    def user_slices(self) -> np.ndarray:
        """[U + 1] offsets: events of user u are rows offsets[u]:offsets[u+1]."""
        return np.searchsorted(self.user, np.arange(self.num_users + 1), side="left")

    def is_ad(self) -> np.ndarray:
        return self.action != ACTION_CONTENT_VIEW


@dataclass
class GroundTruth:
    """Known response model of the synthetic marketplace (absent for real data).

    pctr(users [N], ads [N], context=None) -> [N]: context = the request's context rows
    ([N, num_context_features] as in `Dataset.context` / `Samples.context`, or [N] hour buckets);
    a world without a context term ignores it, a world with one takes the expectation over the
    request hour when it is None. pcvr(users [N], ads [N]) -> [N] (no world has a context term in
    conversion)."""

    pctr: Callable[..., np.ndarray]  # (user_idx[N], ad_idx[N], context=None) -> [N]
    pcvr: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (user_idx[N], ad_idx[N]) -> [N]

    def expected_ecpm(self, users: np.ndarray, ads: np.ndarray, catalog: Catalog, context=None) -> np.ndarray:
        """bid x pCTR x pCVR (oCPM conversion bidding), per (user, ad[, context]) pair."""
        return catalog.ad_bid[ads] * self.pctr(users, ads, context) * self.pcvr(users, ads)

    def expected_gmv(self, users: np.ndarray, ads: np.ndarray, catalog: Catalog, context=None) -> np.ndarray:
        """price x pCTR x pCVR: expected merchandise volume of showing the ad."""
        return catalog.ad_price[ads] * self.pctr(users, ads, context) * self.pcvr(users, ads)

    def slate_value(self, user: int, ads: np.ndarray, catalog: Catalog, context=None) -> dict[str, float]:
        """Expected eCPM and GMV summed over a slate shown to one user in one request (context =
        that request's context row [F], or None)."""
        users = np.full(len(ads), user, dtype=np.int64)
        ctx = None if context is None else np.repeat(np.asarray(context).reshape(1, -1), len(ads), axis=0)
        return {
            "ecpm": float(self.expected_ecpm(users, ads, catalog, ctx).sum()),
            "gmv": float(self.expected_gmv(users, ads, catalog, ctx).sum()),
        }


@dataclass
class Dataset:
    name: str
    catalog: Catalog
    log: EventLog
    ground_truth: GroundTruth | None = None
    context: np.ndarray | None = None  # [E, num_context_features] int64 per event (C tokens)
    label_sources: dict[str, str] = field(default_factory=dict)  # label -> real | proxy | simulated


@dataclass
class Samples:
    """Training or evaluation examples cut from an EventLog (see `oneranker.data.splits`).

    History of sample s = events log[hist_start[s]:hist_end[s]] (the most recent, at most
    max_history); everything in the history happened strictly before request_time[s].
    """

    user: np.ndarray  # [S] int64
    hist_start: np.ndarray  # [S] int64 row into EventLog
    hist_end: np.ndarray  # [S] int64 (exclusive)
    request_time: np.ndarray  # [S] int64 = timestamp of the target event
    context: np.ndarray  # [S, num_context_features] int64 context of the request
    target: np.ndarray  # [S] int64 ad_idx of the logged positive (click/conversion)
    head_targets: np.ndarray  # [S, num_task_tokens] int64 ad_idx per MTP head, -1 = none
    candidates: np.ndarray  # [S, n] int64 ad_idx, candidates[:, 0] == target, no duplicates
    candidate_values: np.ndarray  # [S, n] float32 value-pair BPR label (= candidate_ecpm, see LossConfig)
    candidate_ecpm: np.ndarray  # [S, n] float32 expected eCPM (0 where unknown)
    candidate_gmv: np.ndarray  # [S, n] float32 expected GMV or real revenue (0 where unknown)

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def subset(self, index: np.ndarray) -> Samples:
        return Samples(**{k: v[index] for k, v in self.__dict__.items()})
