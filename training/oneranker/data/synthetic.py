"""Synthetic ad marketplace with a known response model (ground truth).

`make_synthetic(cfg)` builds a `Dataset` deterministically from `cfg.seed` (one
`np.random.default_rng` stream, drawn in a fixed order; user chunks have a fixed size, so the
result does not depend on the machine). `cfg.world` names the response model: "v1" is the world
described here (byte-identical output for a given config, whatever else changes); "v2"
(`data.synthetic_v2`) swaps the ad values, the click model and the logging policy's use of quality
and keeps everything else.

World model (all latent vectors are unit vectors in R^latent_dim):

* Categories: `num_categories` random centres with a skewed popularity weight (Gamma(2) draws).
* Users: `interests_per_user` interest vectors, each = a category centre (drawn by category
  popularity) + noise. Profile features (U tokens) are *derived from* the interests:
  feature p = argmax_v (W_p[v] . mean_interest * 3 + Gumbel noise), W_p random; so the profile
  carries real but noisy signal about what the user likes.
* Advertisers have a home category; an ad belongs to its advertiser's category with prob. 0.8.
  Ad latent = category centre + noise; ad quality q_a ~ N(0, 0.4) (what popularity can learn).
  price ~ lognormal(mu_category, 0.5) with mu_category ~ U(2, 5);
  bid = take_rate_advertiser (U(0.05, 0.2)) * price * lognormal(0, 0.3)  (oCPM conversion bid).
* Contents (organic items, X tokens): latent = category centre + noise.

Ground truth (vectorised over pairs of index arrays; `pctr` takes an optional request context,
which v1 ignores):

* pCTR(u, a) = sigmoid(5.5 * max_k <interest_uk, latent_a> + q_a - 6.0). A well-matched ad
  (cosine ~0.7-0.9) gets pCTR ~ 0.10-0.26, an unrelated one (cosine ~0.2) ~0.01: clicks are
  interest-driven. Over logged impressions (small preset): median pCTR ~0.16, p10 ~0.01.
* pCVR(u, a) = sigmoid(3 * <purchase_u, latent_a> - s_u * (log price_a - mean log price) - 3.2),
  purchase_u = the user's first interest + noise (purchase intent is narrower than browsing
  interest) and s_u ~ U(0.3, 1.2) a per-user price sensitivity.

Logged behaviour: each user has `sessions_per_user` sessions (uniform in the range). A session has
a focus interest (a Markov chain over the user's interests: stay with prob. 0.6), so recent
history is predictive of the next engagement. Per session:

1. `contents_per_session` organic content views, drawn from softmax(8 * <focus, content>).
2. `impressions_per_session` ad impressions from the exposure policy: with prob. 0.3 a draw from
   the global popularity distribution (exp(q_a) * category weight), otherwise from
   softmax(6 * <focus, latent_a> + q_a) (a relevance-driven delivery system).
3. Each impression logs its deepest funnel stage: ACTION_CONVERSION with prob. pCTR*pCVR,
   ACTION_CLICK with prob. pCTR*(1-pCVR), else ACTION_IMPRESSION (one row per impression).

Timestamps (int seconds) start within 30 days of 2023-11-14; gaps are 5-180 s inside a session
and log-uniform between 10 minutes and 3 days between sessions, so timestamps strictly increase
within a user. Context feature 0 = hour-of-day bucket (hour * context_cardinality // 24), feature
1 (if requested) = day of week mod context_cardinality, further features 0.

Minimum engagement: a user with fewer than 3 positive (click/conversion) ad events gets the
missing ones by *upgrading* their highest-pCTR plain impressions to a click (conversion with
prob. pCVR). This is a documented intervention on the log (not on the ground truth); the fraction
of users and events affected is in `make_synthetic.last_stats` (small preset: ~7% of users,
~1.5% of positive events).
"""

from __future__ import annotations

import numpy as np

from ..config import (
    ACTION_CLICK,
    ACTION_CONTENT_VIEW,
    ACTION_CONVERSION,
    ACTION_IMPRESSION,
    WORLDS,
    ConfigError,
    DataConfig,
)
from .schema import Catalog, Dataset, EventLog, GroundTruth

MIN_POSITIVES = 3
_T0 = 1_700_000_000  # 2023-11-14 22:13:20 UTC
_PAIR_CHUNK = 1 << 18  # pairs per block in the ground-truth functions
_CHUNK_ROWS = 1 << 22  # (users x interests x items) floats per block during generation

# World constants (see module docstring).
_PCTR_SCALE, _PCTR_BIAS = 5.5, -6.0
_PCVR_SCALE, _PCVR_BIAS = 3.0, -3.2
_QUALITY_STD = 0.4
_EXPLORE = 0.3  # share of impressions served by popularity instead of relevance
_REL_TEMP, _CONTENT_TEMP = 6.0, 8.0
_FOCUS_STAY = 0.6


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _context_rows(context, n: int) -> np.ndarray | None:
    """Request context -> [n] int64 hour bucket (feature 0), or None (context unknown).

    `context` is [n, F] (rows of `Dataset.context` / `Samples.context`), [n] (feature 0 only) or
    None."""
    if context is None:
        return None
    c = np.asarray(context, dtype=np.int64)
    if c.ndim == 2 and c.shape[1] == 0:
        return None  # a log without context features
    c = c[:, 0] if c.ndim == 2 else c.reshape(-1)
    if c.shape[0] != n:
        raise ValueError(f"context must have one row per pair, got {c.shape[0]} rows for {n} pairs")
    return c


class _World:
    """Latent arrays of the v1 marketplace; the ground-truth closures read them.

    pctr(users [N], ads [N], context=None) -> [N] float64 and pcvr(users, ads) -> [N]: v1 has no
    context term, so `context` is accepted and ignored."""

    def __init__(self, interests, ad_latent, ad_quality, purchase, price_sens, log_price_c):
        self.interests = interests  # [U, K, d] float32
        self.ad_latent = ad_latent  # [A, d] float32
        self.ad_quality = ad_quality  # [A] float32
        self.purchase = purchase  # [U, d] float32
        self.price_sens = price_sens  # [U] float32
        self.log_price_c = log_price_c  # [A] float32 centred log price

    # Exposure policy of the logging system: softmax(6 * <focus, latent_a> + boost_a) and the
    # popularity draw exp(boost_a) * category weight. v1: boost = quality.
    @property
    def exposure_boost(self) -> np.ndarray:
        return self.ad_quality

    def _pairs(self, fn, users, ads, context=None) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64).reshape(-1)
        ads = np.asarray(ads, dtype=np.int64).reshape(-1)
        if users.shape != ads.shape:
            raise ValueError(f"users and ads must have the same length, got {users.shape} vs {ads.shape}")
        ctx = _context_rows(context, users.shape[0])
        out = np.empty(users.shape[0], dtype=np.float64)
        for lo in range(0, users.shape[0], _PAIR_CHUNK):
            hi = lo + _PAIR_CHUNK
            out[lo:hi] = fn(users[lo:hi], ads[lo:hi], None if ctx is None else ctx[lo:hi])
        return out

    def _pctr(self, u, a, ctx):
        match = np.einsum("nkd,nd->nk", self.interests[u], self.ad_latent[a]).max(axis=1)
        return _sigmoid(_PCTR_SCALE * match + self.ad_quality[a] + _PCTR_BIAS)

    def _pcvr(self, u, a, ctx):
        match = np.einsum("nd,nd->n", self.purchase[u], self.ad_latent[a])
        return _sigmoid(_PCVR_SCALE * match - self.price_sens[u] * self.log_price_c[a] + _PCVR_BIAS)

    def pctr(self, users, ads, context=None):
        return self._pairs(self._pctr, users, ads, context)

    def pcvr(self, users, ads):
        return self._pairs(self._pcvr, users, ads)


def _sample_rows(rng: np.random.Generator, probs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One categorical draw per entry of `rows` from distribution probs[row] (rows of probs sum to 1)."""
    cdf = np.cumsum(probs, axis=1)
    cdf /= cdf[:, -1:]
    n = probs.shape[1]
    flat = (cdf + np.arange(probs.shape[0])[:, None]).ravel()
    u = rng.random(rows.shape[0])
    idx = np.searchsorted(flat, rows + u, side="right") - rows * n
    return np.clip(idx, 0, n - 1)


def _check_config(cfg: DataConfig) -> None:
    U, A, C = cfg.num_users, cfg.num_ads, cfg.num_contents
    d, K, G = cfg.latent_dim, cfg.interests_per_user, cfg.num_categories
    if min(U, A, C, d, K, G, cfg.num_advertisers) < 1:
        raise ConfigError("config field data.num_* / latent_dim / interests_per_user must be >= 1")
    if not 1 <= cfg.sessions_per_user[0] <= cfg.sessions_per_user[1]:
        raise ConfigError("config field data.sessions_per_user must satisfy 1 <= min <= max")
    if not 0 <= cfg.contents_per_session[0] <= cfg.contents_per_session[1]:
        raise ConfigError("config field data.contents_per_session must satisfy 0 <= min <= max")
    if cfg.sessions_per_user[0] * cfg.impressions_per_session < MIN_POSITIVES:
        raise ConfigError(
            f"config field data.impressions_per_session * sessions_per_user[0] must be >= {MIN_POSITIVES}"
        )
    if cfg.world not in WORLDS:
        raise ConfigError(f"config field data.world must be one of {WORLDS}")
    if cfg.world == "v2" and cfg.num_context_features < 1:
        raise ConfigError("config field data.num_context_features must be >= 1 for data.world='v2'")


def _context_features(timestamp: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """[E, F] int64: feature 0 = hour-of-day bucket, 1 = day of week mod cardinality, others 0."""
    F = cfg.num_context_features
    context = np.zeros((timestamp.shape[0], F), dtype=np.int64)
    if F >= 1:
        context[:, 0] = ((timestamp // 3600) % 24) * cfg.context_cardinality // 24
    if F >= 2:
        context[:, 1] = ((timestamp // 86400) % 7) % cfg.context_cardinality
    return context


def _timestamps(rng: np.random.Generator, pos_in_sess: np.ndarray, ev_user: np.ndarray, U: int) -> np.ndarray:
    """[E] int64 seconds: 5-180 s gaps inside a session, log-uniform 10 min - 3 days between
    sessions, a user's first event uniform in 30 days after _T0 (rows grouped by user in order)."""
    E = pos_in_sess.shape[0]
    gaps = rng.integers(5, 181, size=E).astype(np.int64)
    idle = np.exp(rng.uniform(np.log(600.0), np.log(3 * 86400.0), size=E)).astype(np.int64)
    gaps = np.where(pos_in_sess == 0, idle, gaps)
    user_first_ev = np.concatenate([[0], np.cumsum(np.bincount(ev_user, minlength=U))[:-1]])
    gaps[user_first_ev] = rng.integers(0, 30 * 86400, size=U)
    csum = np.cumsum(gaps)
    return _T0 + csum - (csum[user_first_ev] - gaps[user_first_ev])[ev_user]


def _outcomes(rng: np.random.Generator, p_ctr: np.ndarray, p_cvr: np.ndarray, ad_user: np.ndarray, U: int):
    """Deepest funnel stage per impression + the minimum-engagement upgrade (module doc).
    -> (act [N] int64, forced events, deficit per user [U])."""
    r = rng.random(ad_user.size)
    act = np.full(ad_user.size, ACTION_IMPRESSION, dtype=np.int64)
    act[r < p_ctr] = ACTION_CLICK
    act[r < p_ctr * p_cvr] = ACTION_CONVERSION
    # Minimum engagement: upgrade the highest-pCTR impressions of under-engaged users.
    n_pos = np.bincount(ad_user[act != ACTION_IMPRESSION], minlength=U)
    deficit = np.maximum(MIN_POSITIVES - n_pos, 0)
    conv_draw = rng.random(ad_user.size)
    cand = np.flatnonzero((act == ACTION_IMPRESSION) & (deficit[ad_user] > 0))
    forced = 0
    if cand.size:
        order = cand[np.lexsort((-p_ctr[cand], ad_user[cand]))]
        ou = ad_user[order]
        first = np.searchsorted(ou, ou, side="left")
        rank = np.arange(order.size) - first
        up = order[rank < deficit[ou]]
        act[up] = np.where(conv_draw[up] < p_cvr[up], ACTION_CONVERSION, ACTION_CLICK)
        forced = int(up.size)
    return act, forced, deficit


def _ads_v1(rng: np.random.Generator, ad_cat: np.ndarray, ad_adv: np.ndarray, take_rate: np.ndarray, G: int):
    """v1 ad quality, price and bid (module doc). -> (quality [A] f32, price [A], bid [A])."""
    A = ad_cat.shape[0]
    ad_quality = (_QUALITY_STD * rng.normal(size=A)).astype(np.float32)
    cat_mu = rng.uniform(2.0, 5.0, size=G)
    price = np.exp(cat_mu[ad_cat] + 0.5 * rng.normal(size=A))
    bid = take_rate[ad_adv] * price * np.exp(0.3 * rng.normal(size=A))
    return ad_quality, price, bid


def make_synthetic(cfg: DataConfig) -> Dataset:
    """Synthetic ad marketplace with ground truth; deterministic in `cfg.seed` (see module doc).
    `cfg.world` picks the response model: "v1" (this module's doc) or "v2" (`synthetic_v2`)."""
    _check_config(cfg)
    U, A, C = cfg.num_users, cfg.num_ads, cfg.num_contents
    d, K, G = cfg.latent_dim, cfg.interests_per_user, cfg.num_categories
    s_lo, s_hi = cfg.sessions_per_user
    c_lo, c_hi = cfg.contents_per_session
    n_imp = cfg.impressions_per_session
    v2 = cfg.world == "v2"
    rng = np.random.default_rng(cfg.seed)
    noise = 0.5 / np.sqrt(d)  # per-dimension std: the noise vector has norm ~0.5

    # --- world -------------------------------------------------------------------------------
    centers = _normalize(rng.normal(size=(G, d)))
    cat_w = rng.gamma(2.0, size=G)
    cat_w /= cat_w.sum()
    user_cats = rng.choice(G, size=(U, K), p=cat_w)
    interests = _normalize(centers[user_cats] + noise * rng.normal(size=(U, K, d))).astype(np.float32)
    purchase = _normalize(interests[:, 0] + noise * rng.normal(size=(U, d))).astype(np.float32)
    price_sens = rng.uniform(0.3, 1.2, size=U).astype(np.float32)

    P, V = cfg.num_profile_features, cfg.profile_cardinality
    W = rng.normal(size=(P, V, d))
    mean_int = _normalize(interests.mean(axis=1))
    logits = 3.0 * np.einsum("pvd,ud->upv", W, mean_int) + rng.gumbel(size=(U, P, V))
    profile = logits.argmax(axis=2).astype(np.int64)

    adv_cat = rng.choice(G, size=cfg.num_advertisers, p=cat_w)
    take_rate = rng.uniform(0.05, 0.2, size=cfg.num_advertisers)
    ad_adv = rng.integers(cfg.num_advertisers, size=A)
    ad_cat = np.where(rng.random(A) < 0.8, adv_cat[ad_adv], rng.choice(G, size=A, p=cat_w))
    ad_latent = _normalize(centers[ad_cat] + 1.2 * noise * rng.normal(size=(A, d))).astype(np.float32)
    if v2:
        from .synthetic_v2 import ads_v2

        ad_quality, price, bid, make_world, world_stats = ads_v2(
            rng, cfg, interests, ad_latent, ad_cat, ad_adv, take_rate
        )
    else:
        ad_quality, price, bid = _ads_v1(rng, ad_cat, ad_adv, take_rate, G)
        world_stats = {}
    log_price = np.log(price)
    log_price_c = (log_price - log_price.mean()).astype(np.float32)

    content_cat = rng.choice(G, size=C, p=cat_w)
    content_latent = _normalize(centers[content_cat] + noise * rng.normal(size=(C, d))).astype(np.float32)

    if v2:
        world = make_world(interests, ad_latent, ad_quality, purchase, price_sens, log_price_c)
    else:
        world = _World(interests, ad_latent, ad_quality, purchase, price_sens, log_price_c)
    boost = world.exposure_boost
    pop = np.exp(boost.astype(np.float64)) * cat_w[ad_cat]
    pop_cdf = np.cumsum(pop / pop.sum())

    # --- sessions ------------------------------------------------------------------------------
    n_sess = rng.integers(s_lo, s_hi + 1, size=U)
    S = int(n_sess.sum())
    sess_user = np.repeat(np.arange(U), n_sess)
    sess_first = np.zeros(S, dtype=bool)
    sess_first[np.concatenate([[0], np.cumsum(n_sess)[:-1]])] = True
    switch = sess_first | (rng.random(S) >= _FOCUS_STAY)
    new_focus = rng.integers(K, size=S)
    last_switch = np.maximum.accumulate(np.where(switch, np.arange(S), 0))
    sess_focus = new_focus[last_switch]
    sess_views = rng.integers(c_lo, c_hi + 1, size=S)

    # --- events: views then impressions inside each session ------------------------------------
    n_ev = sess_views + n_imp
    E = int(n_ev.sum())
    ev_sess = np.repeat(np.arange(S), n_ev)
    sess_off = np.concatenate([[0], np.cumsum(n_ev)[:-1]])
    pos_in_sess = np.arange(E) - sess_off[ev_sess]
    ev_user = sess_user[ev_sess]
    is_view = pos_in_sess < sess_views[ev_sess]
    row_focus = ev_user * K + sess_focus[ev_sess]  # row of the (user, interest) table

    item = np.empty(E, dtype=np.int64)
    explore = rng.random(E) < _EXPLORE
    u_pop = rng.random(E)
    pop_draw = np.minimum(np.searchsorted(pop_cdf, u_pop * pop_cdf[-1], side="right"), A - 1)
    # Chunks of users: per (user, interest) softmax tables over contents and ads.
    users_per_chunk = max(1, _CHUNK_ROWS // (K * max(A, C)))
    ev_bounds = np.searchsorted(ev_user, np.arange(0, U + users_per_chunk, users_per_chunk))
    for ci, lo_u in enumerate(range(0, U, users_per_chunk)):
        hi_u = min(U, lo_u + users_per_chunk)
        e_lo, e_hi = ev_bounds[ci], ev_bounds[ci + 1]
        rows = row_focus[e_lo:e_hi] - lo_u * K
        q = interests[lo_u:hi_u].reshape(-1, d)
        views = np.flatnonzero(is_view[e_lo:e_hi])
        imps = np.flatnonzero(~is_view[e_lo:e_hi] & ~explore[e_lo:e_hi])
        if views.size:
            z = _CONTENT_TEMP * (q @ content_latent.T)
            pz = np.exp(z - z.max(axis=1, keepdims=True))
            item[e_lo + views] = _sample_rows(rng, pz / pz.sum(1, keepdims=True), rows[views])
        if imps.size:
            z = _REL_TEMP * (q @ ad_latent.T) + boost[None, :]
            pz = np.exp(z - z.max(axis=1, keepdims=True))
            item[e_lo + imps] = _sample_rows(rng, pz / pz.sum(1, keepdims=True), rows[imps])
    exp_rows = ~is_view & explore
    item[exp_rows] = pop_draw[exp_rows]

    # --- outcomes and timestamps ---------------------------------------------------------------
    # v1 draws outcomes first (its pCTR has no context); v2 draws the timestamps first so that the
    # click of an impression is drawn at the hour its event log row carries.
    action = np.full(E, ACTION_CONTENT_VIEW, dtype=np.int64)
    ad_rows = np.flatnonzero(~is_view)
    ad_user = ev_user[ad_rows]
    if v2:
        timestamp = _timestamps(rng, pos_in_sess, ev_user, U)
        context = _context_features(timestamp, cfg)
        p_ctr = world.pctr(ad_user, item[ad_rows], context[ad_rows])
    else:
        p_ctr = world.pctr(ad_user, item[ad_rows])
    p_cvr = world.pcvr(ad_user, item[ad_rows])
    act, forced, deficit = _outcomes(rng, p_ctr, p_cvr, ad_user, U)
    action[ad_rows] = act
    if not v2:
        timestamp = _timestamps(rng, pos_in_sess, ev_user, U)
        context = _context_features(timestamp, cfg)
    # Rows are already grouped by user and increasing in time; the stable sort is a no-op
    # safeguard for the (user, timestamp) contract.
    order = np.lexsort((timestamp, ev_user))
    ev_user, item, action, timestamp = ev_user[order], item[order], action[order], timestamp[order]
    context = context[order]

    catalog = Catalog(
        ad_ids=np.arange(A, dtype=np.int64) + 100_000,
        ad_advertiser=ad_adv.astype(np.int64),
        ad_category=ad_cat.astype(np.int64),
        ad_bid=bid.astype(np.float32),
        ad_price=price.astype(np.float32),
        content_ids=np.arange(C, dtype=np.int64) + 900_000,
        num_advertisers=cfg.num_advertisers,
        num_categories=G,
    )
    log = EventLog(
        user=ev_user.astype(np.int64),
        item=item,
        action=action,
        timestamp=timestamp.astype(np.int64),
        profile=profile,
        num_users=U,
    )
    make_synthetic.last_stats = {
        "world": cfg.world,
        "events": E,
        "ad_events": int(ad_rows.size),
        "positives": int((act != ACTION_IMPRESSION).sum()),
        "conversions": int((act == ACTION_CONVERSION).sum()),
        "forced_positive_events": forced,
        "users_with_forced_positives": int((deficit > 0).sum()),
        "mean_impression_pctr": float(p_ctr.mean()),
        **world_stats,
    }
    return Dataset(
        name="synthetic",
        catalog=catalog,
        log=log,
        ground_truth=GroundTruth(pctr=world.pctr, pcvr=world.pcvr),
        context=context,
        label_sources={"click": "simulated", "conversion": "simulated", "bid": "simulated", "price": "simulated"},
    )


make_synthetic.last_stats = {}
