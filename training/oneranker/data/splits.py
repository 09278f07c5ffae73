"""Leakage-free temporal splits: `EventLog` -> train / valid / test `Samples`, for every source
(synthetic and real logs alike go through `make_splits`). `DataConfig.split` picks the cut.

Per user, the *positive* ad events are the rows with action ACTION_CLICK or ACTION_CONVERSION,
in log order (the log is sorted by (user, timestamp) stably; this is checked).

split = "leave_last_out" (default, the paper's protocol):

* test target  = the user's last positive row;
* valid target = the user's second-to-last positive row;
* train targets = every positive before the valid target (positives 3rd-, 4th-, ... from the
  end): the pool of training cut points; training draws a rotating subset of
  `train_cuts_per_epoch` of them per user and epoch (`pipeline.EpochSampler`).
* training rows (`training_rows_mask`) = each user's rows before their valid target. A user with
  fewer than 2 positives yields no sample at all (and all of their rows count as training rows:
  there is no evaluation target of theirs to leak).

split = "time_cutoff" (one global time T = `cutoff_time`, the `split_cutoff_quantile` quantile
of all event timestamps, an event's own time, numpy's "lower" quantile):

* training rows = every row with timestamp < T (all users); train targets = every positive
  strictly before T;
* valid target = the user's first positive with timestamp > T, test target = the second; users
  with fewer than 2 positives after T have no valid / test sample (as in leave-last-out, valid
  and test cover the same users). Rows AT T are neither training rows nor targets (strict on both
  sides, so "before T" and "after T" never share an event); they may be history of an
  evaluation sample.
* Why the first two after T rather than the last two: they are the events closest to the end of
  training, the same horizon for every user, and the test target still follows the valid one
  (the test history contains the valid target, as in leave-last-out). One sample per user keeps
  the study's per-user bootstrap.
* Evaluation histories are every row before the target, so they include rows between T and the
  target (what a deployed model would see at request time); the model never trains on them.

History of a sample = the user's rows with index < target row AND timestamp < target timestamp
(rows at the same second as the target are excluded: their order relative to the target is
unknown on real logs), the most recent `max_history` of them: rows [hist_start, hist_end).
A sample whose history would be empty is dropped (train, valid and test alike; on the synthetic
log this never happens for valid/test since every user has >= 3 positives at distinct seconds).
request_time = target timestamp; context = ds.context[target row] (zeros without context).

Head supervision (`head_targets`, [S, num_task_tokens], ad_idx or -1) comes from a future window
of at most `mtp_future_window` rows starting AT the target row and ending before a limit row:

* train sample: the user's first non-training row (leave-last-out: the valid target row;
  time_cutoff: the first row at or after T), so the window never leaves the training rows;
* valid sample: the user's test target row;
* test sample : target row + 1 (only the target itself).

With 8 task tokens (the paper's layout, see `LossConfig`): heads 0,1 = 1st/2nd ad event
(impression or deeper), 2,3 = 1st/2nd click-or-conversion, 4,5 = 1st/2nd conversion, 6,7 = value
heads: independent draws among the window's click/conversion rows with probability proportional
to the expected eCPM (ground truth bid*pCTR*pCVR when known, else ad_bid; uniform if all zero).
Other sizes: with T >= 3 tokens the first T-2 heads cycle through the 6 funnel slots above
(head i -> slot i % 6) and the last 2 are value heads; with T < 3 all heads cycle through the
funnel slots (no value heads). Since the window starts at the target (a positive), heads 0 and 2
always equal the target.

Candidates: [S, n], n = num_train_candidates (train) or num_eval_candidates (valid/test);
column 0 = target, the others are drawn uniformly without replacement from all other ads
(Floyd's algorithm, vectorised over rows; deterministic in `seed`; columns 1.. are shuffled).
These are the fixed evaluation candidates (paper protocol); training does not use the train
split's fixed ones but redraws candidates at every step (`data.negatives.NegativeSampler`).
candidate_ecpm / candidate_gmv = ground-truth expected eCPM / GMV of (user, candidate) in the
request's context when the dataset has ground truth, else 0 (no counterfactual values exist on
real logs).
candidate_values = candidate_ecpm, the value-pair label of BPR (`losses.bpr_pair_weights`); the
engagement label is the column (column 0 = the logged positive).
"""

from __future__ import annotations

import numpy as np

from ..config import ACTION_CLICK, ACTION_CONVERSION, AD_ACTIONS, SPLITS, DataConfig
from .schema import Dataset, Samples

_SPLIT_STREAM = {"train": 1, "valid": 2, "test": 3}


def _check_sorted(ds: Dataset) -> None:
    log = ds.log
    if log.user.size == 0:
        return
    du = np.diff(log.user)
    dt = np.diff(log.timestamp)
    if np.any(du < 0) or np.any((du == 0) & (dt < 0)):
        raise ValueError("EventLog must be sorted by (user, timestamp)")
    if log.user[0] < 0 or log.user[-1] >= log.num_users:
        raise ValueError("EventLog.user out of range [0, num_users)")


def _positives(ds: Dataset):
    """Positive rows, their user, their rank from the end, and per-user valid/test rows (-1 = none)."""
    log = ds.log
    U = log.num_users
    pos_rows = np.flatnonzero((log.action == ACTION_CLICK) | (log.action == ACTION_CONVERSION))
    pos_user = log.user[pos_rows]
    counts = np.bincount(pos_user, minlength=U)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rev = counts[pos_user] - 1 - (np.arange(pos_rows.size) - first[pos_user])
    valid_row = np.full(U, -1, dtype=np.int64)
    test_row = np.full(U, -1, dtype=np.int64)
    eligible = counts[pos_user] >= 2
    test_row[pos_user[eligible & (rev == 0)]] = pos_rows[eligible & (rev == 0)]
    valid_row[pos_user[eligible & (rev == 1)]] = pos_rows[eligible & (rev == 1)]
    return pos_rows, pos_user, rev, counts, valid_row, test_row


def cutoff_time(ds: Dataset, cfg: DataConfig) -> int:
    """T of split="time_cutoff": the `cfg.split_cutoff_quantile` quantile of all event timestamps
    (numpy method "lower": an actual event time)."""
    if ds.log.timestamp.size == 0:
        raise ValueError("time_cutoff split needs a non-empty log")
    return int(np.quantile(ds.log.timestamp, cfg.split_cutoff_quantile, method="lower"))


def _split_kind(cfg: DataConfig | None) -> str:
    kind = "leave_last_out" if cfg is None else cfg.split
    if kind not in SPLITS:
        raise ValueError(f"config field data.split must be one of {SPLITS}, got {kind!r}")
    return kind


def training_rows_mask(ds: Dataset, cfg: DataConfig | None = None) -> np.ndarray:
    """bool[E]: the rows anything fitted outside the model (tokenizer embeddings, popularity, hard
    negatives) may use. leave_last_out (also cfg=None): rows strictly before their user's valid
    target row (all rows of a user with < 2 positives); time_cutoff: rows with timestamp < T."""
    _check_sorted(ds)
    log = ds.log
    if _split_kind(cfg) == "time_cutoff":
        return log.timestamp < cutoff_time(ds, cfg)
    offsets = log.user_slices()
    _, _, _, _, valid_row, _ = _positives(ds)
    boundary = np.where(valid_row >= 0, valid_row, offsets[1:])
    return np.arange(log.user.size) < boundary[log.user]


def _history(ds: Dataset, target_rows: np.ndarray, max_history: int):
    log = ds.log
    t = log.timestamp
    span = int(t.max() - t.min()) + 1 if t.size else 1
    key = log.user * span + (t - (t.min() if t.size else 0))
    hist_end = np.searchsorted(key, key[target_rows], side="left").astype(np.int64)
    user_start = log.user_slices()[log.user[target_rows]]
    hist_start = np.maximum(user_start, hist_end - max_history).astype(np.int64)
    return hist_start, hist_end


def _funnel_slots(T: int) -> tuple[np.ndarray, int]:
    n_value = 2 if T >= 3 else 0
    return np.arange(T - n_value) % 6, n_value


def _head_targets(ds: Dataset, target_rows, limit_rows, window: int, T: int, rng) -> np.ndarray:
    log = ds.log
    S = target_rows.size
    idx = target_rows[:, None] + np.arange(window)[None, :]
    inside = idx < limit_rows[:, None]
    idx = np.minimum(idx, log.user.size - 1)
    act = log.action[idx]
    items = log.item[idx]
    is_ad = inside & np.isin(act, AD_ACTIONS)
    is_pos = inside & ((act == ACTION_CLICK) | (act == ACTION_CONVERSION))
    is_conv = inside & (act == ACTION_CONVERSION)

    def kth(mask: np.ndarray, k: int) -> np.ndarray:
        hit = mask & (np.cumsum(mask, axis=1) == k)
        col = hit.argmax(axis=1)
        return np.where(hit.any(axis=1), items[np.arange(S), col], -1)

    funnel = [kth(is_ad, 1), kth(is_ad, 2), kth(is_pos, 1), kth(is_pos, 2), kth(is_conv, 1), kth(is_conv, 2)]
    slots, n_value = _funnel_slots(T)
    out = np.full((S, T), -1, dtype=np.int64)
    for h, slot in enumerate(slots):
        out[:, h] = funnel[slot]
    if n_value:
        w = np.zeros(is_pos.shape, dtype=np.float64)
        s_idx, w_idx = np.nonzero(is_pos)
        ads = items[s_idx, w_idx]
        users = log.user[target_rows][s_idx]
        gt = ds.ground_truth
        if gt is not None:
            # each window event's eCPM in the context it happened in
            ctx = None if ds.context is None else ds.context[idx[s_idx, w_idx]]
            w[s_idx, w_idx] = gt.expected_ecpm(users, ads, ds.catalog, ctx)
        else:
            w[s_idx, w_idx] = ds.catalog.ad_bid[ads]
        w = np.where(np.isfinite(w) & (w > 0), w, 0.0)
        zero = w.sum(axis=1) <= 0
        w[zero] = is_pos[zero].astype(np.float64)  # uniform over the window's positives
        cum = np.cumsum(w, axis=1)
        total = cum[:, -1]
        last_pos = window - 1 - np.argmax(is_pos[:, ::-1], axis=1)
        has_pos = is_pos.any(axis=1)
        for j in range(n_value):
            r = rng.random(S) * total
            col = (cum <= r[:, None]).sum(axis=1)
            col = np.where(col >= window, last_pos, col)
            col = np.where(is_pos[np.arange(S), col], col, last_pos)
            out[:, T - n_value + j] = np.where(has_pos, items[np.arange(S), col], -1)
    return out


def _sample_candidates(targets: np.ndarray, num_ads: int, n: int, rng) -> np.ndarray:
    """[S, n]: column 0 = target, n-1 distinct other ads uniformly (Floyd), shuffled."""
    S = targets.size
    k = n - 1
    if k > num_ads - 1:
        raise ValueError(f"cannot sample {k} candidates besides the target from {num_ads} ads")
    N = num_ads - 1  # sample from [0, N) then skip the target
    sel = np.empty((S, k), dtype=np.int64)
    for i, j in enumerate(range(N - k, N)):
        t = rng.integers(0, j + 1, size=S)
        dup = (sel[:, :i] == t[:, None]).any(axis=1) if i else np.zeros(S, dtype=bool)
        sel[:, i] = np.where(dup, j, t)
    sel = rng.permuted(sel, axis=1)
    sel = sel + (sel >= targets[:, None])
    return np.concatenate([targets[:, None], sel], axis=1)


def _build(
    ds: Dataset,
    cfg: DataConfig,
    name: str,
    target_rows: np.ndarray,
    limit_rows: np.ndarray,
    num_task_tokens: int,
    n_cand: int,
    seed: int,
) -> Samples:
    log = ds.log
    rng = np.random.default_rng([seed, _SPLIT_STREAM[name]])
    hist_start, hist_end = _history(ds, target_rows, cfg.max_history)
    users = log.user[target_rows]
    targets = log.item[target_rows]
    if ds.context is not None:
        context = ds.context[target_rows].astype(np.int64)
    else:
        context = np.zeros((target_rows.size, cfg.num_context_features), dtype=np.int64)
    heads = _head_targets(ds, target_rows, limit_rows, cfg.mtp_future_window, num_task_tokens, rng)
    cands = _sample_candidates(targets, ds.catalog.num_ads, n_cand, rng)
    flat_u = np.repeat(users, n_cand)
    if ds.ground_truth is not None:
        flat_c = np.repeat(context, n_cand, axis=0)  # the request's context for every candidate
        ecpm = ds.ground_truth.expected_ecpm(flat_u, cands.ravel(), ds.catalog, flat_c).reshape(cands.shape)
        gmv = ds.ground_truth.expected_gmv(flat_u, cands.ravel(), ds.catalog, flat_c).reshape(cands.shape)
    else:
        ecpm = np.zeros(cands.shape)
        gmv = np.zeros(cands.shape)
    ecpm = ecpm.astype(np.float32)
    values = ecpm.copy()
    return Samples(
        user=users.astype(np.int64),
        hist_start=hist_start,
        hist_end=hist_end,
        request_time=log.timestamp[target_rows].astype(np.int64),
        context=context,
        target=targets.astype(np.int64),
        head_targets=heads,
        candidates=cands,
        candidate_values=values,
        candidate_ecpm=ecpm,
        candidate_gmv=gmv.astype(np.float32),
    )


def split_target_rows(ds: Dataset, cfg: DataConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per split: (target rows, future-window limit rows) of the samples `make_splits` builds, in
    sample order (targets whose history would be empty are already dropped)."""
    _check_sorted(ds)
    if _split_kind(cfg) == "time_cutoff":
        return _time_cutoff_rows(ds, cutoff_time(ds, cfg))
    pos_rows, pos_user, rev, counts, valid_row, test_row = _positives(ds)
    log = ds.log
    ok = counts[pos_user] >= 2
    has_hist = log.timestamp[pos_rows] > log.timestamp[log.user_slices()[pos_user]]
    tr = ok & has_hist & (rev >= 2)
    va = ok & has_hist & (rev == 1)
    te = ok & has_hist & (rev == 0)
    return {
        "train": (pos_rows[tr], valid_row[pos_user[tr]]),
        "valid": (pos_rows[va], test_row[pos_user[va]]),
        "test": (pos_rows[te], pos_rows[te] + 1),
    }


def _time_cutoff_rows(ds: Dataset, T: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split_target_rows of split="time_cutoff" (module doc)."""
    log = ds.log
    U = log.num_users
    offsets = log.user_slices()
    pos_rows = np.flatnonzero((log.action == ACTION_CLICK) | (log.action == ACTION_CONVERSION))
    pos_user = log.user[pos_rows]
    pos_t = log.timestamp[pos_rows]
    has_hist = pos_t > log.timestamp[offsets[pos_user]]
    # First row of each user at or after T (= the user's end when none): the train window limit.
    key = log.user * 2 + (log.timestamp >= T)
    first_after = np.searchsorted(key, np.arange(U) * 2 + 1, side="left")
    after = pos_t > T
    n_after = np.bincount(pos_user[after], minlength=U)
    a_rows, a_user = pos_rows[after], pos_user[after]
    rank = np.arange(a_rows.size) - np.searchsorted(a_user, a_user, side="left")  # 0 = first after T
    eligible = n_after[a_user] >= 2
    valid_row = np.full(U, -1, dtype=np.int64)
    test_row = np.full(U, -1, dtype=np.int64)
    valid_row[a_user[eligible & (rank == 0)]] = a_rows[eligible & (rank == 0)]
    test_row[a_user[eligible & (rank == 1)]] = a_rows[eligible & (rank == 1)]
    tr = (pos_t < T) & has_hist
    va = np.isin(pos_rows, valid_row[valid_row >= 0]) & has_hist
    te = np.isin(pos_rows, test_row[test_row >= 0]) & has_hist
    return {
        "train": (pos_rows[tr], first_after[pos_user[tr]]),
        "valid": (pos_rows[va], test_row[pos_user[va]]),
        "test": (pos_rows[te], pos_rows[te] + 1),
    }


def make_splits(ds: Dataset, cfg: DataConfig, num_task_tokens: int = 8, seed: int = 0) -> dict[str, Samples]:
    """Temporal train/valid/test `Samples`, cut as `cfg.split` says (see module docstring)."""
    if num_task_tokens < 1:
        raise ValueError("num_task_tokens must be >= 1")
    rows = split_target_rows(ds, cfg)
    n_cand = {"train": cfg.num_train_candidates, "valid": cfg.num_eval_candidates, "test": cfg.num_eval_candidates}
    return {
        name: _build(ds, cfg, name, tr, lim, num_task_tokens, n_cand[name], seed) for name, (tr, lim) in rows.items()
    }


def popularity_scores(ds: Dataset, train: Samples | None = None, cfg: DataConfig | None = None) -> np.ndarray:
    """[A] float64: click/conversion events per ad over the training rows (`training_rows_mask`
    of `cfg`'s split; leave-last-out when cfg is None), the leakage-free popularity baseline.
    `train` is accepted for call-site symmetry; the boundary comes from the log itself."""
    log = ds.log
    mask = training_rows_mask(ds, cfg) & ((log.action == ACTION_CLICK) | (log.action == ACTION_CONVERSION))
    return np.bincount(log.item[mask], minlength=ds.catalog.num_ads).astype(np.float64)
