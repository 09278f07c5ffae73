"""Leakage-free temporal leave-last-out splits: `EventLog` -> train / valid / test `Samples`.

Per user, the *positive* ad events are the rows with action ACTION_CLICK or ACTION_CONVERSION,
in log order (the log is sorted by (user, timestamp) stably; this is checked).

* test target  = the user's last positive row;
* valid target = the user's second-to-last positive row;
* train targets = every positive before the valid target (positives 3rd-, 4th-, ... from the
  end): the pool of training cut points; training draws a rotating subset of
  `train_cuts_per_epoch` of them per user and epoch (`pipeline.EpochSampler`).

A user with fewer than 2 positives yields no sample at all (and all of their rows count as
training rows, see `training_rows_mask`: there is no evaluation target of theirs to leak).

History of a sample = the user's rows with index < target row AND timestamp < target timestamp
(rows at the same second as the target are excluded: their order relative to the target is
unknown on real logs), the most recent `max_history` of them: rows [hist_start, hist_end).
A sample whose history would be empty is dropped (train, valid and test alike; on the synthetic
log this never happens for valid/test since every user has >= 3 positives at distinct seconds).
request_time = target timestamp; context = ds.context[target row] (zeros without context).

Head supervision (`head_targets`, [S, num_task_tokens], ad_idx or -1) comes from a future window
of at most `mtp_future_window` rows starting AT the target row and ending before a limit row:

* train sample: the user's valid target row (the window never reaches valid/test targets);
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
candidate_ecpm / candidate_gmv = ground-truth expected eCPM / GMV of (user, candidate) when the
dataset has ground truth, else 0 (no counterfactual values exist on real logs).
candidate_values = candidate_ecpm, the value-pair label of BPR (`losses.bpr_pair_weights`); the
engagement label is the column (column 0 = the logged positive).
"""

from __future__ import annotations

import numpy as np

from ..config import ACTION_CLICK, ACTION_CONVERSION, AD_ACTIONS, DataConfig
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


def training_rows_mask(ds: Dataset) -> np.ndarray:
    """bool[E]: rows strictly before their user's valid target row (all rows of a user with < 2
    positives). Everything fitted on the log outside the model (tokenizer embeddings, popularity)
    must use only these rows."""
    _check_sorted(ds)
    log = ds.log
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
            w[s_idx, w_idx] = gt.expected_ecpm(users, ads, ds.catalog)
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
        ecpm = ds.ground_truth.expected_ecpm(flat_u, cands.ravel(), ds.catalog).reshape(cands.shape)
        gmv = ds.ground_truth.expected_gmv(flat_u, cands.ravel(), ds.catalog).reshape(cands.shape)
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


def make_splits(ds: Dataset, cfg: DataConfig, num_task_tokens: int = 8, seed: int = 0) -> dict[str, Samples]:
    """Temporal leave-last-out train/valid/test `Samples` (see module docstring)."""
    if num_task_tokens < 1:
        raise ValueError("num_task_tokens must be >= 1")
    rows = split_target_rows(ds, cfg)
    n_cand = {"train": cfg.num_train_candidates, "valid": cfg.num_eval_candidates, "test": cfg.num_eval_candidates}
    return {
        name: _build(ds, cfg, name, tr, lim, num_task_tokens, n_cand[name], seed) for name, (tr, lim) in rows.items()
    }


def popularity_scores(ds: Dataset, train: Samples | None = None) -> np.ndarray:
    """[A] float64: click/conversion events per ad over the training rows (`training_rows_mask`:
    rows strictly before each user's valid target), the leakage-free popularity baseline.
    `train` is accepted for call-site symmetry; the boundary comes from the log itself."""
    log = ds.log
    mask = training_rows_mask(ds) & ((log.action == ACTION_CLICK) | (log.action == ACTION_CONVERSION))
    return np.bincount(log.item[mask], minlength=ds.catalog.num_ads).astype(np.float64)
