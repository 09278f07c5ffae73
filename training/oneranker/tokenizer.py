"""Semantic IDs: item embeddings -> RQ-KMeans codes + collision suffix -> ad trie; fake items.

Item embeddings ([#1], GPR's joint O/I item space): rows are ads (0..A-1) then contents
(A..A+C-1). They are learned from the log itself, from TRAINING rows only
(`data.splits.training_rows_mask` of the run's split: rows before each user's valid target, or
before the global cutoff, so validation/test engagements never shape the codes): co-occurrence
counts of two items within a sliding window of `_WINDOW` = 8 consecutive events of one user's
sequence (symmetric, self-pairs dropped; logs with more than 4M training events use a seeded
random subset of whole users, which bounds memory at the paper preset's scale), then symmetric
PPMI with smoothed marginals (count ** 0.75 on both sides, so the matrix stays symmetric), then
a truncated SVD (randomised range finder with power iterations, numpy only, bincount sparse
products) to `embedding_dim`, rows scaled by sqrt(singular values) and L2-normalised. Why this
embedding: it carries collaborative signal (items consumed by the same users close together in
time end up close: exactly the structure the generator has to decode), it needs no training loop
or extra dependency, it is cheap (sparse, O(events x window)) and it is deterministic given the
seed.
Items never seen in the training rows get a seeded random *unit* vector: cold items still need a
valid, unique path (serving may receive them, the trie must be able to emit cold ads). A "small"
vector would put every cold item near the origin, on one shared prefix, and exhaust
`max_collisions`; unit-norm random directions spread them over the codebooks instead.

RQ-KMeans: `num_levels` levels of k-means (`codebook_size` codes, greedy k-means++ init,
`kmeans_iters` Lloyd iterations, empty clusters re-seeded with the points farthest from their
centroid) on the residuals. The LAST residual level is capacity-constrained: when more than `max_collisions`
items would share a full `num_levels`-prefix, the ones farthest from that codeword move to their
nearest last-level code that still has room under the same parent prefix (`cap_last_level`;
pure RQ-KMeans whenever no prefix overflows; the count is reported as
`last_level_reassigned_items`). Without it, dense clumps of near-identical collaborative
embeddings (common for small catalogues) overflow the suffix level for some seeds of the default
presets. A final collision-suffix level numbers the items that share a `num_levels`-prefix
0, 1, 2, ... in item-index order (so ads, which come first, get contiguous suffixes from 0 and
every item, ad or content, has a unique full path of depth `sid_depth`). The build raises
ValueError naming `tokenizer.max_collisions` when a prefix cannot be kept within
`max_collisions` items (a parent prefix holding more than codebook_size * max_collisions items).

Fake item tokens [#7]: k = `num_fake_items` k-means centroids of the AD embeddings (the candidate
space the fake tokens stand for; contents are never candidates). Item-side cosine features:
`ad_centroid_cos` [A, k] and `level_code_features` [sid_depth, max_codes, k] (mean of
ad_centroid_cos over the ads having code c at level l, 0 where no ad has it).

Trie over ADS ONLY (constrained decoding never emits content or unknown items): `trie_children[l]`
is [num_nodes_l, max_codes] int32, entry = child node id at level l+1 or -1; at the last level
the entry is the ad_idx. Level 0 has one node (the root, 0).

Persistence: safetensors (arrays) + meta.json (config, report, version); no pickle. `version` =
first 16 hex chars of sha256 over (name, dtype, shape, bytes) of every array in name order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from .config import ACTION_CONTENT_VIEW, TokenizerConfig
from .data.schema import Dataset
from .data.splits import training_rows_mask

_WINDOW = 8
_MAX_COOC_EVENTS = 4_000_000  # co-occurrence budget (events); bounds memory on paper-size logs
_CDS_ALPHA = 0.75
_SVD_OVERSAMPLE = 10
_SVD_POWER_ITERS = 6
_DENSE_MAX_ITEMS = 4096
_ARRAYS_FILE = "semantic_ids.safetensors"
_META_FILE = "meta.json"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------


def _cooccurrence(item: np.ndarray, user: np.ndarray, n_items: int, window: int):
    """Symmetric COO (rows, cols, counts) of item pairs at distance 1..window in one user's sequence."""
    uk = np.zeros(0, np.int64)
    counts = np.zeros(0)
    for dist in range(1, window + 1):
        if item.size <= dist:
            break
        a, b = item[:-dist], item[dist:]
        same = (user[:-dist] == user[dist:]) & (a != b)
        k = np.concatenate([a[same] * n_items + b[same], b[same] * n_items + a[same]])
        u, c = np.unique(k, return_counts=True)
        merged, inv = np.unique(np.concatenate([uk, u]), return_inverse=True)
        counts = np.bincount(inv.reshape(-1), weights=np.concatenate([counts, c]), minlength=merged.size)
        uk = merged
    return uk // n_items, uk % n_items, counts


def _spmm(rows, cols, vals, x: np.ndarray, n: int) -> np.ndarray:
    """Sparse times dense, out[r] += v * x[c]: one bincount per column of x (the fastest numpy-only
    form measured: ~6 s per 20M non-zeros x 34 columns on one core)."""
    xt = np.ascontiguousarray(x.T)
    out = np.empty((n, x.shape[1]))
    for j in range(x.shape[1]):
        out[:, j] = np.bincount(rows, weights=vals * xt[j][cols], minlength=n)
    return out


def _randomized_svd(rows, cols, vals, n: int, rank: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Top-`rank` singular vectors / values of the SYMMETRIC sparse n x n matrix M = (rows, cols,
    vals) (randomised range finder with power iterations, Halko et al. 2011)."""
    if n <= _DENSE_MAX_ITEMS:  # small catalogues: a dense matrix and BLAS products are faster
        dense = np.zeros((n, n))
        dense[rows, cols] = vals
        matmul = dense.__matmul__
    else:

        def matmul(x):
            return _spmm(rows, cols, vals, x, n)

    q = rng.normal(size=(n, min(n, rank + _SVD_OVERSAMPLE)))
    q, _ = np.linalg.qr(matmul(q))
    for _ in range(_SVD_POWER_ITERS):
        q, _ = np.linalg.qr(matmul(q))  # M = M^T: one product per pass
    b = matmul(q).T  # Q^T M = (M Q)^T for symmetric M
    ub, s, _ = np.linalg.svd(b, full_matrices=False)
    return (q @ ub)[:, :rank], s[:rank]


def item_embeddings(
    ds: Dataset, cfg: TokenizerConfig, rng=None, train_rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """-> (embeddings [A + C, dim] float32 L2-normalised, warm [A + C] bool). See module doc.
    train_rows: bool [E] rows the embeddings may use (None = `training_rows_mask(ds)`, the
    leave-last-out split's rows)."""
    rng = np.random.default_rng(cfg.seed) if rng is None else rng
    A, C = ds.catalog.num_ads, ds.catalog.num_contents
    n = A + C
    log = ds.log
    keep = training_rows_mask(ds) if train_rows is None else np.asarray(train_rows, dtype=bool).copy()
    if keep.sum() > _MAX_COOC_EVENTS:  # large logs: a seeded random subset of whole users
        per_user = np.bincount(log.user[keep], minlength=log.num_users)
        order = rng.permutation(log.num_users)
        chosen = order[np.cumsum(per_user[order]) <= _MAX_COOC_EVENTS]
        keep &= np.isin(log.user, chosen)
    joint = np.where(log.action == ACTION_CONTENT_VIEW, log.item + A, log.item)[keep]
    users = log.user[keep]
    r, c, cnt = _cooccurrence(joint.astype(np.int64), users, n, _WINDOW)
    dim = cfg.embedding_dim
    emb = np.zeros((n, dim))
    warm = np.zeros(n, dtype=bool)
    if cnt.size:
        row_sum = np.bincount(r, weights=cnt, minlength=n)
        # symmetric smoothed PMI: log P(i,j) / (P_a(i) P_a(j)), P_a(i) ~ count_i ** 0.75
        ctx = row_sum**_CDS_ALPHA
        total, ctx_total = cnt.sum(), ctx.sum()
        pmi = np.log(cnt * (ctx_total * ctx_total / total) / (ctx[r] * ctx[c]))
        pos = pmi > 0
        r, c, v = r[pos], c[pos], pmi[pos]
        warm[np.unique(r)] = True
        if v.size and warm.sum() > dim:
            u, s = _randomized_svd(r, c, v, n, dim, rng)
            emb = u * np.sqrt(s)[None, :]
    norms = np.linalg.norm(emb, axis=1)
    warm &= norms > 1e-9
    cold = np.flatnonzero(~warm)
    emb[cold] = rng.normal(size=(cold.size, dim))
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb.astype(np.float32), warm


# ---------------------------------------------------------------------------------------------
# k-means
# ---------------------------------------------------------------------------------------------


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    d = (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0)


def kmeans(x: np.ndarray, k: int, iters: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-means++ init + Lloyd; empty clusters re-seeded with the farthest points.
    -> (centroids [k, dim], assignment [N])."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least k={k} points, got {n}")
    # Greedy k-means++ (as in scikit-learn): 2 + log(k) D^2-sampled candidates per step, keep the
    # one that lowers the potential most.
    trials = 2 + int(np.log(k))
    centers = np.empty((k, x.shape[1]))
    centers[0] = x[rng.integers(n)]
    closest = _sq_dist(x, centers[:1])[:, 0]
    for i in range(1, k):
        tot = closest.sum()
        if tot > 0:
            cand = np.searchsorted(np.cumsum(closest), rng.random(trials) * tot, side="right")
            cand = np.minimum(cand, n - 1)
        else:
            cand = rng.integers(n, size=trials)
        new = np.minimum(closest[None, :], _sq_dist(x[cand], x).reshape(trials, n))
        best = int(new.sum(1).argmin())
        centers[i] = x[cand[best]]
        closest = new[best]
    assign = np.zeros(n, dtype=np.int64)
    for _ in range(max(iters, 1)):
        dist = _sq_dist(x, centers)
        assign = dist.argmin(1)
        counts = np.bincount(assign, minlength=k)
        sums = np.zeros_like(centers)
        np.add.at(sums, assign, x)
        nonempty = counts > 0
        centers[nonempty] = sums[nonempty] / counts[nonempty, None]
        empty = np.flatnonzero(~nonempty)
        if empty.size:
            far = np.argsort(-dist[np.arange(n), assign], kind="stable")[: empty.size]
            centers[empty] = x[far]
    assign = _sq_dist(x, centers).argmin(1)
    return centers, assign


def cap_last_level(parent: np.ndarray, dist: np.ndarray, codes: np.ndarray, cap: int) -> tuple[np.ndarray, int]:
    """Capacity-constrained last residual level: at most `cap` items per (parent prefix, code).

    parent [N] int id of the item's first num_levels-1 codes, dist [N, K] squared distance of its
    last residual to each last-level codeword, codes [N] the unconstrained k-means codes. Items of
    an overfull group beyond the `cap` closest move to their nearest code with room under the same
    parent (proposal rounds, closest proposals accepted first). Returns (codes, number of items
    moved). Raises ValueError naming tokenizer.max_collisions when a parent holds more than
    K * cap items."""
    n, k = dist.shape
    codes = codes.astype(np.int64).copy()
    if n == 0:
        return codes, 0
    _, parent = np.unique(parent, return_inverse=True)
    parent = parent.reshape(-1)
    sizes = np.bincount(parent)
    if sizes.max() > k * cap:
        raise ValueError(
            f"tokenizer.max_collisions={cap} is too small: {int(sizes.max())} items share one "
            f"(num_levels-1)-prefix, more than codebook_size * max_collisions = {k * cap}; raise "
            f"tokenizer.max_collisions or tokenizer.codebook_size"
        )
    original = codes.copy()
    load = np.zeros((sizes.size, k), dtype=np.int64)
    np.add.at(load, (parent, codes), 1)
    over = np.flatnonzero(load[parent, codes] > cap)
    if over.size == 0:
        return codes, 0
    # 1) each overfull group keeps its `cap` closest members; the others are unassigned.
    grp = parent[over] * k + codes[over]
    order = over[np.lexsort((dist[over, codes[over]], grp))]
    g = parent[order] * k + codes[order]
    rank = np.arange(order.size) - np.searchsorted(g, g, side="left")
    pool = order[rank >= cap]
    np.subtract.at(load, (parent[pool], codes[pool]), 1)
    # 2) proposal rounds: every unassigned item proposes to its nearest code with room under its
    #    parent; a code accepts the closest proposals up to its remaining room.
    while pool.size:
        room = cap - load[parent[pool]]  # [m, K]
        choice = np.where(room > 0, dist[pool], np.inf).argmin(1)
        dc = dist[pool, choice]
        g = parent[pool] * k + choice
        order = np.lexsort((dc, g))
        gs = g[order]
        rank = np.arange(order.size) - np.searchsorted(gs, gs, side="left")
        ok = rank < room[order, choice[order]]
        acc = pool[order[ok]]
        codes[acc] = choice[order[ok]]
        np.add.at(load, (parent[acc], codes[acc]), 1)
        pool = np.sort(pool[order[~ok]])
    return codes, int((codes != original).sum())


def assign_suffixes(prefix: np.ndarray, max_collisions: int) -> np.ndarray:
    """[N, L] prefix codes -> [N] suffix: 0, 1, 2, ... among items sharing a prefix, in item order.
    Raises ValueError naming tokenizer.max_collisions when a prefix holds more items than that."""
    n = prefix.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort(tuple(prefix[:, j] for j in range(prefix.shape[1] - 1, -1, -1)))  # stable
    p = prefix[order]
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = (p[1:] != p[:-1]).any(axis=1)
    start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    rank = np.arange(n) - start
    largest = int(rank.max()) + 1
    if largest > max_collisions:
        raise ValueError(
            f"tokenizer.max_collisions={max_collisions} is too small: {largest} items share one "
            f"semantic-ID prefix; raise tokenizer.max_collisions or tokenizer.codebook_size"
        )
    suffix = np.empty(n, dtype=np.int64)
    suffix[order] = rank
    return suffix


# ---------------------------------------------------------------------------------------------
# Trie
# ---------------------------------------------------------------------------------------------


def build_trie(ad_codes: np.ndarray, max_codes: int) -> list[np.ndarray]:
    """Trie over ad paths: level l -> [num_nodes_l, max_codes] int32 (child id, ad_idx at last level, -1)."""
    A, D = ad_codes.shape
    if A and (ad_codes.min() < 0 or ad_codes.max() >= max_codes):
        raise ValueError(f"ad codes must lie in [0, {max_codes})")
    children = []
    node = np.zeros(A, dtype=np.int64)  # node id of each ad's prefix at the current level
    n_nodes = 1
    for level in range(D):
        table = np.full((n_nodes, max_codes), -1, dtype=np.int32)
        if level == D - 1:
            nxt = np.arange(A, dtype=np.int64)
            n_next = A
        else:
            _, nxt = np.unique(ad_codes[:, : level + 1], axis=0, return_inverse=True)
            nxt = nxt.reshape(-1).astype(np.int64)
            n_next = int(nxt.max()) + 1 if A else 0
        if A:
            table[node, ad_codes[:, level]] = nxt
        children.append(table)
        node, n_nodes = nxt, n_next
    return children


def trie_decode(trie_children: list[np.ndarray], codes: np.ndarray) -> np.ndarray:
    """codes [..., D] -> ad_idx [...] (int64), -1 where the path is not an ad path."""
    codes = np.asarray(codes, dtype=np.int64)
    D = len(trie_children)
    if codes.shape[-1] != D:
        raise ValueError(f"codes must have last dimension {D}, got {codes.shape[-1]}")
    max_codes = trie_children[0].shape[1]
    node = np.zeros(codes.shape[:-1], dtype=np.int64)
    for level, table in enumerate(trie_children):
        c = codes[..., level]
        ok = (node >= 0) & (c >= 0) & (c < max_codes)
        nxt = table[np.where(ok, node, 0), np.where(ok, c, 0)]
        node = np.where(ok, nxt, -1).astype(np.int64)
    return node


# ---------------------------------------------------------------------------------------------
# SemanticIds
# ---------------------------------------------------------------------------------------------


@dataclass
class SemanticIds:
    config: TokenizerConfig
    embeddings: np.ndarray  # [A + C, dim] float32: ads then contents
    codebooks: np.ndarray  # [num_levels, codebook_size, dim] float32
    centroids: np.ndarray  # [k, dim] float32 fake-item centroids (ads)
    ad_codes: np.ndarray  # [A, sid_depth] int64
    content_codes: np.ndarray  # [C, sid_depth] int64
    ad_centroid_cos: np.ndarray  # [A, k] float32
    level_code_features: np.ndarray  # [sid_depth, max_codes, k] float32
    trie_children: list  # sid_depth arrays [num_nodes_l, max_codes] int32
    report_: dict = field(default_factory=dict)
    version: str = ""

    @property
    def num_ads(self) -> int:
        return int(self.ad_codes.shape[0])

    @property
    def num_contents(self) -> int:
        return int(self.content_codes.shape[0])

    @property
    def sid_depth(self) -> int:
        return int(self.ad_codes.shape[1])

    @property
    def max_codes(self) -> int:
        return int(self.trie_children[0].shape[1])

    def report(self) -> dict:
        return dict(self.report_)

    def decode_path(self, codes: np.ndarray) -> np.ndarray:
        """codes [..., sid_depth] -> ad_idx [...] via the trie; -1 for content/invalid paths."""
        return trie_decode(self.trie_children, codes)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {
            "embeddings": self.embeddings,
            "codebooks": self.codebooks,
            "centroids": self.centroids,
            "ad_codes": self.ad_codes,
            "content_codes": self.content_codes,
            "ad_centroid_cos": self.ad_centroid_cos,
            "level_code_features": self.level_code_features,
        }
        for level, table in enumerate(self.trie_children):
            out[f"trie_children_{level}"] = table
        return {k: np.ascontiguousarray(v) for k, v in out.items()}

    def compute_version(self) -> str:
        h = hashlib.sha256()
        for name, arr in sorted(self.arrays().items()):
            h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
            h.update(arr.tobytes())
        return h.hexdigest()[:16]

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.arrays(), str(directory / _ARRAYS_FILE))
        meta = {
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "config": dataclasses.asdict(self.config),
            "report": self.report_,
            "sid_depth": self.sid_depth,
            "max_codes": self.max_codes,
            "num_ads": self.num_ads,
            "num_contents": self.num_contents,
        }
        (directory / _META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> SemanticIds:
        directory = Path(directory)
        meta = json.loads((directory / _META_FILE).read_text())
        arrays = load_file(str(directory / _ARRAYS_FILE))
        depth = int(meta["sid_depth"])
        sids = cls(
            config=TokenizerConfig(**meta["config"]),
            embeddings=arrays["embeddings"],
            codebooks=arrays["codebooks"],
            centroids=arrays["centroids"],
            ad_codes=arrays["ad_codes"],
            content_codes=arrays["content_codes"],
            ad_centroid_cos=arrays["ad_centroid_cos"],
            level_code_features=arrays["level_code_features"],
            trie_children=[arrays[f"trie_children_{level}"] for level in range(depth)],
            report_=meta["report"],
            version=meta["version"],
        )
        actual = sids.compute_version()
        if actual != sids.version:
            raise ValueError(f"{directory}: semantic-ID arrays hash to {actual}, meta.json says {sids.version}")
        return sids


def _report(
    codes: np.ndarray,
    cfg: TokenizerConfig,
    num_ads: int,
    warm: np.ndarray,
    ad_category: np.ndarray | None,
    trie: list[np.ndarray],
) -> dict:
    L = cfg.num_levels
    prefix = codes[:, :L]
    _, inv, counts = np.unique(prefix, axis=0, return_inverse=True, return_counts=True)
    shared = counts[inv.reshape(-1)] > 1
    rep = {
        "num_items": int(codes.shape[0]),
        "num_ads": int(num_ads),
        "num_contents": int(codes.shape[0] - num_ads),
        "num_cold_items": int((~warm).sum()),
        "collision_rate": float(shared.mean()) if codes.shape[0] else 0.0,
        "collision_rate_ads": float(shared[:num_ads].mean()) if num_ads else 0.0,
        "codebook_utilisation": [float(np.unique(codes[:, l]).size / cfg.codebook_size) for l in range(L)],
        "distinct_prefixes": int(counts.size),
        "max_suffix": int(codes[:, L].max()) if codes.shape[0] else 0,
        "trie_nodes": [int(t.shape[0]) for t in trie],
    }
    if ad_category is not None and num_ads:
        # Purity of the first-level codes w.r.t. ad categories: how much semantic structure the
        # collaborative embedding recovered (majority category share per code, ad-weighted).
        c0 = codes[:num_ads, 0]
        table = np.zeros((cfg.codebook_size, int(ad_category.max()) + 1))
        np.add.at(table, (c0, ad_category), 1)
        rep["level0_category_purity_ads"] = float(table.max(1).sum() / num_ads)
    return rep


def _prefix_ids(prefix: np.ndarray) -> np.ndarray:
    if prefix.shape[1] == 0:
        return np.zeros(prefix.shape[0], dtype=np.int64)
    _, inv = np.unique(prefix, axis=0, return_inverse=True)
    return inv.reshape(-1).astype(np.int64)


def fit_semantic_ids(ds: Dataset, cfg: TokenizerConfig, train_rows: np.ndarray | None = None) -> SemanticIds:
    """Embeddings -> RQ-KMeans -> suffix -> trie, fake-item centroids, cosine features (module doc).
    train_rows: bool [E] rows of the split's training portion (`data.splits.training_rows_mask`
    of the run's DataConfig); None = the leave-last-out split's."""
    if cfg.num_levels < 1 or cfg.codebook_size < 2 or cfg.max_collisions < 1:
        raise ValueError("tokenizer.num_levels >= 1, tokenizer.codebook_size >= 2, tokenizer.max_collisions >= 1")
    seeds = np.random.SeedSequence(cfg.seed).spawn(cfg.num_levels + 2)
    A = ds.catalog.num_ads
    emb, warm = item_embeddings(ds, cfg, np.random.default_rng(seeds[0]), train_rows)
    x = emb.astype(np.float64)

    residual = x.copy()
    codebooks = np.zeros((cfg.num_levels, cfg.codebook_size, x.shape[1]))
    codes = np.zeros((x.shape[0], cfg.sid_depth), dtype=np.int64)
    moved = 0
    for level in range(cfg.num_levels):
        centers, assign = kmeans(residual, cfg.codebook_size, cfg.kmeans_iters, np.random.default_rng(seeds[1 + level]))
        if level == cfg.num_levels - 1:
            parent = _prefix_ids(codes[:, :level])
            assign, moved = cap_last_level(parent, _sq_dist(residual, centers), assign, cfg.max_collisions)
        codebooks[level] = centers
        codes[:, level] = assign
        residual = residual - centers[assign]
    codes[:, cfg.num_levels] = assign_suffixes(codes[:, : cfg.num_levels], cfg.max_collisions)
    ad_codes, content_codes = codes[:A], codes[A:]

    max_codes = cfg.max_codes
    trie = build_trie(ad_codes, max_codes)

    k = cfg.num_fake_items
    centroids, _ = kmeans(x[:A], k, cfg.kmeans_iters, np.random.default_rng(seeds[-1]))
    cn = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    an = x[:A] / np.maximum(np.linalg.norm(x[:A], axis=1, keepdims=True), 1e-12)
    ad_cos = an @ cn.T
    level_feats = np.zeros((cfg.sid_depth, max_codes, k))
    for level in range(cfg.sid_depth):
        cnt = np.bincount(ad_codes[:, level], minlength=max_codes).astype(np.float64)
        sums = np.zeros((max_codes, k))
        np.add.at(sums, ad_codes[:, level], ad_cos)
        level_feats[level] = np.where(cnt[:, None] > 0, sums / np.maximum(cnt, 1)[:, None], 0.0)

    sids = SemanticIds(
        config=dataclasses.replace(cfg),
        embeddings=emb.astype(np.float32),
        codebooks=codebooks.astype(np.float32),
        centroids=centroids.astype(np.float32),
        ad_codes=ad_codes.astype(np.int64),
        content_codes=content_codes.astype(np.int64),
        ad_centroid_cos=ad_cos.astype(np.float32),
        level_code_features=level_feats.astype(np.float32),
        trie_children=trie,
        report_=_report(codes, cfg, A, warm, ds.catalog.ad_category, trie),
    )
    sids.report_["last_level_reassigned_items"] = moved
    sids.version = sids.compute_version()
    return sids
