"""Synthetic world v2 (`DataConfig.world = "v2"`): the v1 marketplace with value placed where a
relevance-only candidate set misses it, and with click terms that only some inputs reveal.

Everything not listed here is v1 (`data.synthetic`): categories, users and their interests,
profile features, advertisers, ad latents, contents, sessions and their focus chain, the
minimum-engagement upgrade, timestamps, pCVR. `make_synthetic` calls `ads_v2` right after the ad
latents are drawn and builds the ground truth with the `WorldV2` it returns.

Click model, per (user u, ad a, request hour bucket h):

    logit = I(u, a) + q_a + c[h, category_a] + _BIAS
    I(u, a) = _SCALE * _TEMP * log( mean_k exp(<interest_uk, latent_a> / _TEMP) )

* I: a soft maximum (log-mean-exp at temperature _TEMP on the cosine scale) over the user's
  interests instead of v1's hard max, so the world does not reproduce one architecture's
  max-over-interest-vectors exactly: an ad matching two interests scores above one matching a
  single interest equally well, and the gap between interests matters.
* q_a, creative quality: N(0, (_QUALITY_RATIO * sigma_I)^2), drawn independently of the ad's
  latent vector, category, advertiser and bid; sigma_I = std of I over uniformly random
  (user, ad) pairs, measured on the generated world (`_CALIBRATION_PAIRS` pairs). q enters pCTR
  only: the logging policy below ignores it, and the semantic IDs' co-occurrence embedding counts
  every logged event (impressions included), so q never reaches the semantic IDs; it shapes the
  log only through which impressions become clicks. Nothing but an ad's own click-through record
  reveals it.
* c[h, g], context x category: a daily curve per category (random phase and amplitude,
  A_g cos(2 pi hour / 24 - phi_g), evaluated at each bucket's mean hour), double-centred (zero mean
  over hours for every category, zero mean over categories for every hour, weights = share of
  hours per bucket and share of ads per category) and scaled to std _CONTEXT_RATIO * sigma_I over
  (hour, ad) pairs. Zero mean per category: no category main effect, so only a model that reads
  the request's hour (context feature 0) can use it. The hour is that of the event's own
  timestamp, and `Dataset.context[:, 0]` is that same bucket.
* pCVR: v1's (purchase intent, price sensitivity), unchanged.

Why these sizes: _QUALITY_RATIO = 0.5 makes quality a secondary but decisive term: over the whole
catalogue interest dominates (it separates a user's categories from the rest), but among the few
hundred ads that match a user well, where I varies far less than over all pairs, a 0.5 sigma_I
quality spread reorders them. _CONTEXT_RATIO = 0.3 is the smallest of the three terms but still
one a model can measurably gain from: with sigma_I ~ 1.5 its std is ~0.45 logits, a category's
daily peak-to-trough range is 0.6-1.8 logits (CTR x1.8 to x6 at low pCTR; a random (user, ad)
pair's best hour has on average ~3.5x the pCTR of its worst). A strong daypart effect on purpose:
the study must be able to tell a context-reading model from one that ignores the context.

Catalogue values:

* price ~ lognormal(_LOG_PRICE_MEAN, _LOG_PRICE_STD) per ad, independent of category (v1 has a
  category price level; v2 drops it so that nothing about an ad's position in latent space
  predicts its price or bid);
* bid = take_rate_advertiser (U(0.05, 0.2), v1's) x price x lognormal(0, _BID_NOISE): an oCPM
  conversion bid, independent of interest and quality.

Logging policy: v1's (30% popularity draws, else softmax(6 <focus, latent_a>)), with no quality
term anywhere: popularity = category weight only. The logged delivery system is thus blind to
quality, context and bids, like a relevance-only retrieval stage.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from ..config import DataConfig
from .synthetic import _sigmoid, _World

_TEMP = 0.25  # log-mean-exp temperature over the user's interests (cosine scale)
_SCALE = 5.5  # interest logit scale, v1's _PCTR_SCALE
_BIAS = -4.95  # mean impression pCTR 0.165 at 5,000 users x 10,000 ads (v1: 0.164)
_QUALITY_RATIO = 0.5  # std(q) / sigma_I
_CONTEXT_RATIO = 0.3  # std(c) / sigma_I over (hour, ad) pairs
_LOG_PRICE_MEAN, _LOG_PRICE_STD = 3.5, 0.9  # v1's overall log-price mean and spread, no category level
_BID_NOISE = 0.3  # v1's per-ad bid noise
_CALIBRATION_PAIRS = 200_000


def interest_term(interests: np.ndarray, ad_latent: np.ndarray) -> np.ndarray:
    """I(u, a) for aligned pairs: interests [n, K, d], ad_latent [n, d] -> [n] float64."""
    s = np.einsum("nkd,nd->nk", interests, ad_latent).astype(np.float64) / _TEMP
    m = s.max(axis=1)
    return _SCALE * _TEMP * (m + np.log(np.exp(s - m[:, None]).mean(axis=1)))


def hour_bucket_weights(cardinality: int) -> np.ndarray:
    """[cardinality] share of the 24 hours of the day that fall into each hour bucket
    (bucket = hour * cardinality // 24, as in `synthetic._context_features`)."""
    return np.bincount(np.arange(24) * cardinality // 24, minlength=cardinality) / 24.0


class WorldV2(_World):
    """v2 ground truth (module doc). pctr(users [N], ads [N], context=None) -> [N] float64;
    context = [N, F] context rows or [N] hour buckets. Without context the pCTR is the
    expectation over the hour of the request (hours uniform over the day, as in the log)."""

    def __init__(self, interests, ad_latent, ad_quality, purchase, price_sens, log_price_c, *, ad_cat, table):
        super().__init__(interests, ad_latent, ad_quality, purchase, price_sens, log_price_c)
        self.ad_cat = np.asarray(ad_cat, dtype=np.int64)  # [A]
        self.table = np.asarray(table, dtype=np.float64)  # [context_cardinality, G] logit shift
        self.bucket_weight = hour_bucket_weights(self.table.shape[0])  # [context_cardinality]

    @property
    def exposure_boost(self) -> np.ndarray:
        return np.zeros(self.ad_latent.shape[0], dtype=np.float32)  # the logging policy ignores quality

    def _pctr(self, u, a, ctx):
        base = interest_term(self.interests[u], self.ad_latent[a]) + self.ad_quality[a] + _BIAS
        cat = self.ad_cat[a]
        if ctx is not None:
            return _sigmoid(base + self.table[ctx, cat])
        out = np.zeros(base.shape[0])
        for b in np.flatnonzero(self.bucket_weight > 0):
            out += self.bucket_weight[b] * _sigmoid(base + self.table[b, cat])
        return out


def _context_table(rng: np.random.Generator, cardinality: int, cat_share: np.ndarray, std: float) -> np.ndarray:
    """[cardinality, G] context x category logit shifts (module doc), weighted std = `std`."""
    G = cat_share.shape[0]
    w = hour_bucket_weights(cardinality)
    hours = np.arange(24)
    buckets = hours * cardinality // 24
    mean_hour = np.bincount(buckets, weights=hours, minlength=cardinality) / np.maximum(w * 24, 1)
    mean_hour = np.where(w > 0, mean_hour, np.arange(cardinality) * 24.0 / cardinality)
    phase = rng.uniform(0.0, 2 * np.pi, size=G)
    amp = rng.uniform(0.5, 1.5, size=G)
    t = amp[None, :] * np.cos(2 * np.pi * mean_hour[:, None] / 24.0 - phase[None, :])
    t -= (w[:, None] * t).sum(axis=0, keepdims=True)  # no category main effect
    t -= (t * cat_share[None, :]).sum(axis=1, keepdims=True)  # no pure hour effect
    sd = np.sqrt((w[:, None] * cat_share[None, :] * t**2).sum())
    return t * (std / max(sd, 1e-12))


def ads_v2(
    rng: np.random.Generator,
    cfg: DataConfig,
    interests: np.ndarray,
    ad_latent: np.ndarray,
    ad_cat: np.ndarray,
    ad_adv: np.ndarray,
    take_rate: np.ndarray,
):
    """v2 quality, price, bid and context table, drawn from `rng` in that order.

    -> (ad_quality [A] float32, price [A], bid [A], make_world, stats): make_world(interests,
    ad_latent, ad_quality, purchase, price_sens, log_price_c) -> WorldV2; stats = the effect sizes
    (logit scale) for `make_synthetic.last_stats`."""
    U, A, G = interests.shape[0], ad_latent.shape[0], cfg.num_categories
    n = min(_CALIBRATION_PAIRS, U * A)
    cu, ca = rng.integers(U, size=n), rng.integers(A, size=n)
    sigma_i = float(interest_term(interests[cu], ad_latent[ca]).std())
    ad_quality = (_QUALITY_RATIO * sigma_i * rng.normal(size=A)).astype(np.float32)
    price = np.exp(_LOG_PRICE_MEAN + _LOG_PRICE_STD * rng.normal(size=A))
    bid = take_rate[ad_adv] * price * np.exp(_BID_NOISE * rng.normal(size=A))
    cat_share = np.bincount(ad_cat, minlength=G) / A
    table = _context_table(rng, cfg.context_cardinality, cat_share, _CONTEXT_RATIO * sigma_i)
    w = hour_bucket_weights(cfg.context_cardinality)
    stats = {
        "interest_std": sigma_i,
        "quality_std": float(ad_quality.std()),
        "context_std": float(np.sqrt((w[:, None] * cat_share[None, :] * table**2).sum())),
        "quality_ratio": _QUALITY_RATIO,
        "context_ratio": _CONTEXT_RATIO,
    }
    return ad_quality, price, bid, partial(WorldV2, ad_cat=ad_cat, table=table), stats
