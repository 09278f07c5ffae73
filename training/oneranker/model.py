"""The OneRanker network: one module for training, the reference path and export.

Shapes: B batch, F user-feature (U/C prefix) tokens, L padded history, N = F + L, D semantic-ID
depth, K codes per level (padded to the largest level), H = number of task tokens (6 interest +
2 value), k fake items, T2 Step-2 tokens, S = N + T2 key/value positions of Step 3, n candidates.

    encode_user(user_features [B,F], hist_sids [B,L,D], hist_actions [B,L], hist_dt [B,L], hist_len [B])
      Step 1  G-Decoder (HSTU)                    -> H1 [B, N, d]
      Step 2  heterogeneous decoder over [T ; F]  -> H2 [B, T2, d]
              dual-channel user vectors, decoder   -> decoder_state [B, H, Z]
      KV      concat(H1, H2) + segment -> per R-layer K and V projections
                                                   -> kv [B, 2 * r_layers, S, d]
    rank(kv, hist_len, cand_sids [B,n,D], cand_attrs [B,n,2], cand_bid [B,n])
      Step 3  R-Decoder, [T_r ; candidates] cross-attend kv, candidates mutually invisible
                                                   -> scores [B, n]

History tokens: hist_sids[b, j] is an item's semantic-ID path, or the OOV path [K] * D for an item
the model does not know (`OneRanker.oov_code` = K = tokenizer.max_codes: one reserved row per
level in `sid_emb`, trained by replacing `train.oov_history_share` of history items). Generation
and candidates never use it (the decoder scores K codes).

Ablations change the graph, not only the losses: use_fake_items=False builds no fake tokens and no
centroid-derived item features (no `fake_proj`, `target_*`, `fake_centroids`,
`decoder.level_code_features`: the decoder scores e_task . code_emb only); use_task_decoupling=False
builds one task token and one head projection (`task_head` etc. with a head axis of 1) whose
user vector serves all H heads.

Semantic-ID generation: Step 2 gives one user vector per head, e_user [B, Hp, U]; the decoder
(`decoders.py`, `model.decoder`, chosen by `ModelConfig.decoder`) turns it into its state
[B, H, Z] and scores level l's codes given the prefix chosen so far: the factorized decoder adds
user-independent transition tables to prefix-free level logits, the conditioned one computes each
level's query from the user vector and the prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import NUM_ACTIONS, DataConfig, ModelConfig, TokenizerConfig
from .decoders import build_decoder

NEG_INF = -1e9


# ----------------------------------------------------------------------------- masks


def step1_allowed(num_prefix: int, hist_len: torch.Tensor, length: int) -> torch.Tensor:
    """[B, N, N] bool: query i may attend key j in the G-Decoder.

    Prefix (U/C) tokens see each other bidirectionally and nothing else; history tokens see the
    whole prefix, earlier history and themselves; padded keys are never visible.
    """
    n = num_prefix + length
    pos = torch.arange(n, device=hist_len.device)
    qi, kj = pos.view(n, 1), pos.view(1, n)
    q_prefix, k_prefix = qi < num_prefix, kj < num_prefix
    allowed = (q_prefix & k_prefix) | (~q_prefix & (k_prefix | (kj <= qi)))
    key_valid = pos.view(1, 1, n) < (num_prefix + hist_len).view(-1, 1, 1)
    return allowed.unsqueeze(0) & key_valid


def step2_allowed(num_task: int, num_fake: int, hetero: bool) -> torch.Tensor:
    """[T2, T2] bool self-attention mask over [task tokens ; fake item tokens].

    Task token a sees task tokens b <= a (funnel order impression -> click -> conversion ->
    value) and every fake token; fake token l sees every task token and itself only.
    """
    n = num_task + num_fake
    if not hetero:
        return torch.ones(n, n, dtype=torch.bool)
    pos = torch.arange(n)
    qi, kj = pos.view(n, 1), pos.view(1, n)
    q_task, k_task = qi < num_task, kj < num_task
    task_rows = q_task & ((k_task & (kj <= qi)) | ~k_task)
    fake_rows = ~q_task & (k_task | (kj == qi))
    return task_rows | fake_rows


def step3_allowed(num_candidates: int) -> torch.Tensor:
    """[1+n, 1+n] bool self-attention mask over [T_r ; candidates]: T_r sees itself; candidate
    i sees T_r and itself. (The R-Decoder computes this pattern in O(n); tests compare both.)"""
    n = 1 + num_candidates
    eye = torch.eye(n, dtype=torch.bool)
    eye[1:, 0] = True
    return eye


# ----------------------------------------------------------------------------- blocks


def time_bucket(dt: torch.Tensor, scale: float, buckets: int) -> torch.Tensor:
    """Log-spaced time bucket without `bucketize` (export-safe): floor(log1p(|dt|)*scale)."""
    return torch.clamp(torch.floor(torch.log1p(dt.abs()) * scale), 0, buckets - 1).long()


class HSTULayer(nn.Module):
    """Pointwise SiLU attention with U gating and relative position/time bias (HSTU).

    Attention weights are SiLU(q.k + bias) / n_true, n_true = number of valid tokens of the
    sequence, so padding never changes a valid token's output.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, self.h = cfg.d_model, cfg.num_heads
        self.dh = d // self.h
        self.norm_in = nn.LayerNorm(d)
        self.uvqk = nn.Linear(d, 4 * d)
        self.norm_attn = nn.LayerNorm(d)
        self.out = nn.Linear(d, d)
        self.pos_bias = nn.Embedding(cfg.position_buckets, self.h)
        self.time_bias = nn.Embedding(cfg.time_buckets, self.h)
        self.cfg = cfg
        nn.init.zeros_(self.pos_bias.weight)
        nn.init.zeros_(self.time_bias.weight)

    def forward(self, x, allowed, n_true, rel_pos, rel_time):
        b, n, d = x.shape
        u, v, q, k = F.silu(self.uvqk(self.norm_in(x))).chunk(4, dim=-1)
        q = q.view(b, n, self.h, self.dh).transpose(1, 2)
        k = k.view(b, n, self.h, self.dh).transpose(1, 2)
        v = v.view(b, n, self.h, self.dh).transpose(1, 2)
        bias = self.pos_bias(rel_pos).permute(2, 0, 1).unsqueeze(0) + self.time_bias(rel_time).permute(0, 3, 1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / (self.dh**0.5) + bias
        weights = F.silu(scores) * allowed.unsqueeze(1).to(x.dtype) / n_true.view(b, 1, 1, 1).to(x.dtype)
        attn = torch.matmul(weights, v).transpose(1, 2).reshape(b, n, d)
        return x + self.out(self.norm_attn(attn) * u)


class MultiHeadAttention(nn.Module):
    """Softmax attention with a boolean `allowed` mask ([.., Q, K], True = visible)."""

    def __init__(self, d: int, heads: int, project_kv: bool = True):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d) if project_kv else None
        self.out = nn.Linear(d, d)

    def split(self, x):
        b, n, _ = x.shape
        return x.view(b, n, self.h, self.dh).transpose(1, 2)

    def forward(self, x, memory=None, allowed=None, k=None, v=None):
        q = self.split(self.q(x))
        if k is None:
            k, v = self.kv(memory).chunk(2, dim=-1)
        k, v = self.split(k), self.split(v)
        scores = torch.matmul(q, k.transpose(-1, -2)) / (self.dh**0.5)
        if allowed is not None:
            while allowed.dim() < scores.dim():
                allowed = allowed.unsqueeze(-3)
            scores = scores.masked_fill(~allowed, NEG_INF)
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        b, _, nq, _ = out.shape
        return self.out(out.transpose(1, 2).reshape(b, nq, -1))


class FeedForward(nn.Module):
    def __init__(self, d: int, mult: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, mult * d), nn.SiLU(), nn.Linear(mult * d, d))

    def forward(self, x):
        return x + self.net(x)


class HeteroDecoderLayer(nn.Module):
    """Step 2: cross-attention to H1 (first, unless ablated), masked self-attention, FFN."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.norm_cross, self.norm_self = nn.LayerNorm(d), nn.LayerNorm(d)
        self.cross = MultiHeadAttention(d, cfg.num_heads)
        self.self_attn = MultiHeadAttention(d, cfg.num_heads)
        self.ffn = FeedForward(d, cfg.ffn_mult)
        self.cross_first = cfg.cross_attention_first

    def forward(self, q, h1, key_valid, self_allowed):
        def cross(x):
            return x + self.cross(self.norm_cross(x), memory=h1, allowed=key_valid.unsqueeze(1))

        def self_(x):
            normed = self.norm_self(x)
            return x + self.self_attn(normed, memory=normed, allowed=self_allowed)

        q = self_(cross(q)) if self.cross_first else cross(self_(q))
        return self.ffn(q)


class RankerLayer(nn.Module):
    """Step 3: [T_r ; candidates] cross-attend precomputed K/V, then O(n) masked self-attention
    (T_r -> itself; candidate -> {T_r, itself}), then FFN."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.h, self.dh = cfg.num_heads, d // cfg.num_heads
        self.norm_cross, self.norm_self = nn.LayerNorm(d), nn.LayerNorm(d)
        self.cross = MultiHeadAttention(d, cfg.num_heads, project_kv=False)
        self.qkv = nn.Linear(d, 3 * d)
        self.self_out = nn.Linear(d, d)
        self.ffn = FeedForward(d, cfg.ffn_mult)

    def forward(self, x, k, v, key_valid):
        x = x + self.cross(self.norm_cross(x), k=k, v=v, allowed=key_valid.unsqueeze(1))
        return self.ffn(self.isolated_self_attention(x))

    def isolated_self_attention(self, x):
        """Residual self-attention over [T_r ; candidates] with the step3_allowed pattern in
        O(n): candidate i mixes only T_r's and its own value; T_r keeps its own value."""
        b, n1, d = x.shape
        q, kk, vv = self.qkv(self.norm_self(x)).view(b, n1, 3, self.h, self.dh).unbind(2)
        k_r, v_r = kk[:, :1], vv[:, :1]  # [B, 1, h, dh] ranking token
        s_own = (q * kk).sum(-1) / self.dh**0.5  # [B, 1+n, h] each token with itself
        s_tr = (q * k_r).sum(-1) / self.dh**0.5  # [B, 1+n, h] each token with T_r
        w = torch.softmax(torch.stack([s_tr, s_own], dim=-1), dim=-1)  # [B, 1+n, h, 2]
        mixed = w[..., :1] * v_r + w[..., 1:] * vv
        mixed = torch.cat([v_r, mixed[:, 1:]], dim=1)  # T_r sees only itself
        return x + self.self_out(mixed.reshape(b, n1, d))


# ----------------------------------------------------------------------------- model


@dataclass
class UserEncoding:
    decoder_state: torch.Tensor  # [B, H, Z] (`decoders.py`)
    kv: torch.Tensor  # [B, 2 * r_layers, S, d]
    kv_valid: torch.Tensor  # [B, S] bool
    h1: torch.Tensor  # [B, N, d]
    h2: torch.Tensor  # [B, T2, d]


class OneRanker(nn.Module):
    """Steps 1-3 of OneRanker (see module docstring). Item tables arrive as buffers."""

    def __init__(
        self,
        cfg: ModelConfig,
        tok: TokenizerConfig,
        data: DataConfig,
        fake_item_centroids: torch.Tensor,  # [k, emb_dim]
        level_code_features: torch.Tensor,  # [D, K, k]
        level_sizes: list[int],  # valid codes per level
        num_advertisers: int,
        num_categories: int,
    ):
        super().__init__()
        self.cfg, self.tok = cfg, tok
        d, D, K = cfg.d_model, tok.sid_depth, tok.max_codes
        self.depth, self.codes = D, K
        self.num_prefix = data.num_profile_features + data.num_context_features
        self.feature_cardinality = max(data.profile_cardinality, data.context_cardinality)
        H = cfg.num_task_tokens
        self.num_heads_gen = H
        # per-head parameters exist once per head only with task decoupling ("w/o MDA": one)
        Hp = H if cfg.use_task_decoupling else 1
        self.oov_code = K  # reserved history code at every level (row K of each level's block)

        # token embeddings (Step 1 and candidate items share the semantic-ID tables); K + 1 rows
        # per level: the K codes and the OOV code
        self.feature_emb = nn.Embedding(self.num_prefix * self.feature_cardinality, d)
        self.sid_emb = nn.Embedding(D * (K + 1), d)
        self.action_emb = nn.Embedding(NUM_ACTIONS, d)
        self.time_emb = nn.Embedding(cfg.time_buckets, d)
        self.g_layers = nn.ModuleList(HSTULayer(cfg) for _ in range(cfg.g_layers))
        self.g_norm = nn.LayerNorm(d)

        # Step 2
        self.task_tokens = nn.Parameter(torch.randn(cfg.num_task_tokens if cfg.use_task_decoupling else 1, d) * 0.02)
        k = cfg.num_fake_items if cfg.use_fake_items else 0  # target channel width
        if cfg.use_fake_items:
            self.register_buffer("fake_centroids", fake_item_centroids.float().clone())
            self.fake_proj = nn.Linear(fake_item_centroids.shape[1], d)
        self.h_layers = nn.ModuleList(HeteroDecoderLayer(cfg) for _ in range(cfg.h_layers))
        self.h_norm = nn.LayerNorm(d)
        self.task_head = nn.Parameter(torch.randn(Hp, d, cfg.d_task) / d**0.5)  # per-head e_task
        if cfg.use_fake_items:
            self.target_a = nn.Parameter(torch.randn(Hp, d, d) / d**0.5)  # MLP([h_T; h_F]) layer 1
            self.target_b = nn.Parameter(torch.randn(Hp, d, d) / d**0.5)
            out_dim = k if cfg.target_channel == "sum_vectors" else 1
            self.target_out = nn.Parameter(torch.randn(Hp, d, out_dim) / d**0.5 / k)
        self.decoder = build_decoder(cfg, D, K, level_code_features if cfg.use_fake_items else None, level_sizes)

        # KV pass-through and Step 3
        self.segment_emb = nn.Embedding(2, d)
        self.kv_norm = nn.LayerNorm(d)
        self.kv_proj = nn.ModuleList(nn.Linear(d, 2 * d) for _ in range(cfg.r_layers))
        self.rank_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.advertiser_emb = nn.Embedding(num_advertisers, d)
        self.category_emb = nn.Embedding(num_categories, d)
        self.bid_proj = nn.Linear(1, d)
        self.r_layers = nn.ModuleList(RankerLayer(cfg) for _ in range(cfg.r_layers))
        self.score_mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.SiLU(), nn.Linear(d, 1))

    # -- embeddings -------------------------------------------------------------------------

    def embed_sids(self, sids: torch.Tensor) -> torch.Tensor:
        """[..., D] codes (0..K-1, or K = OOV) -> [..., d] sum of level embeddings."""
        offsets = torch.arange(self.depth, device=sids.device) * (self.codes + 1)
        return self.sid_emb(sids + offsets).sum(-2)

    # -- Step 1 + Step 2 + KV ---------------------------------------------------------------

    def encode_user(self, user_features, hist_sids, hist_actions, hist_dt, hist_len) -> UserEncoding:
        cfg = self.cfg
        b, length = hist_actions.shape
        p = self.num_prefix
        offsets = torch.arange(p, device=user_features.device) * self.feature_cardinality
        prefix = self.feature_emb(user_features + offsets)  # [B, F, d]
        tb = time_bucket(hist_dt, cfg.time_bucket_scale, cfg.time_buckets)
        hist = self.embed_sids(hist_sids) + self.action_emb(hist_actions) + self.time_emb(tb)
        x = torch.cat([prefix, hist], dim=1)  # [B, N, d]
        n = p + length

        allowed = step1_allowed(p, hist_len, length)
        n_true = p + hist_len
        pos = torch.arange(n, device=x.device)
        rel_pos = torch.clamp(pos.view(n, 1) - pos.view(1, n), 0, cfg.position_buckets - 1)  # [N, N]
        t = torch.cat([torch.zeros(b, p, device=x.device, dtype=hist_dt.dtype), hist_dt], dim=1)
        rel_time = time_bucket(t.unsqueeze(2) - t.unsqueeze(1), cfg.time_bucket_scale, cfg.time_buckets)
        for layer in self.g_layers:
            x = layer(x, allowed, n_true, rel_pos, rel_time)
        h1 = self.g_norm(x)
        key_valid = pos.view(1, n) < n_true.view(b, 1)  # [B, N]

        # Step 2: query [T ; F]
        tasks = self.task_tokens.unsqueeze(0).expand(b, -1, -1)
        num_task = tasks.shape[1]
        if cfg.use_fake_items:
            fake = self.fake_proj(self.fake_centroids).unsqueeze(0).expand(b, -1, -1)
            q = torch.cat([tasks, fake], dim=1)
        else:
            q = tasks
        self_allowed = step2_allowed(num_task, q.shape[1] - num_task, cfg.use_hetero_mask).to(x.device)
        for layer in self.h_layers:
            q = layer(q, h1, key_valid, self_allowed)
        h2 = self.h_norm(q)
        decoder_state = self.decoder.state(self.user_vectors(h2, num_task), self.num_heads_gen)

        kv, kv_valid = self.kv_from(h1, h2, key_valid)
        return UserEncoding(decoder_state=decoder_state, kv=kv, kv_valid=kv_valid, h1=h1, h2=h2)

    def kv_from(self, h1: torch.Tensor, h2: torch.Tensor, key_valid: torch.Tensor):
        """KV pass-through: concat(H1 [B,N,d], H2 [B,T2,d]) + segment embedding, projected once
        per R-layer -> kv [B, 2R, S, d], kv_valid [B, S] (H2 masked out under use_h2_in_kv=False
        or use_generation=False). key_valid [B, N] marks H1's real tokens."""
        cfg, b = self.cfg, h1.shape[0]
        memory = torch.cat([h1 + self.segment_emb.weight[0], h2 + self.segment_emb.weight[1]], dim=1)
        memory = self.kv_norm(memory)
        kv = torch.cat([proj(memory).view(b, -1, 2, cfg.d_model).permute(0, 2, 1, 3) for proj in self.kv_proj], dim=1)
        h2_valid = torch.full((b, h2.shape[1]), cfg.use_h2_in_kv and cfg.use_generation, device=h1.device)
        return kv, torch.cat([key_valid, h2_valid], dim=1)

    def user_vectors(self, h2: torch.Tensor, num_task: int) -> torch.Tensor:
        """Dual-channel user vector per head: H2 [B, T2, d] -> e_user [B, Hp, U], U = d_task + k
        (the task-semantic channel, then the target-aware channel; e_task alone without fake
        items). Hp = H, or 1 without task decoupling (the decoder repeats it for every head)."""
        cfg = self.cfg
        task_out = h2[:, :num_task]  # [B, Hp, d]
        e_task = torch.einsum("bhd,hde->bhe", task_out, self.task_head)  # [B, Hp, d_task]
        if not cfg.use_fake_items:
            return e_task
        fake_out = h2[:, num_task:]  # [B, k, d]
        a = torch.einsum("bhd,hde->bhe", task_out, self.target_a).unsqueeze(2)  # [B,Hp,1,d]
        f = torch.einsum("bld,hde->bhle", fake_out, self.target_b)  # [B,Hp,k,d]
        per_fake = torch.einsum("bhle,heo->bhlo", F.silu(a + f), self.target_out)  # [B,Hp,k,o]
        s_target = per_fake.sum(2) if cfg.target_channel == "sum_vectors" else per_fake.squeeze(-1)  # [B, Hp, k]
        return torch.cat([e_task, s_target], dim=-1)

    def decoder_constants(self):
        """The decoder's per-weights tables (factorized: transitions [D, D, K, K]); pass them to
        repeated `path_log_probs` calls under the same weights."""
        return self.decoder.constants()

    def path_log_probs(self, decoder_state: torch.Tensor, paths: torch.Tensor, heads=None, constants=None):
        """log P(path) under each head. decoder_state [B, H, Z]; paths [B, P, D] (every head
        scores every path) or [B, H, P, D] (each head its own); -1 rows give 0 -> [B, H', P]
        with H' = len(heads) or H."""
        if heads is not None:
            decoder_state = decoder_state[:, heads]
        return self.decoder.path_log_probs(decoder_state, paths, constants)

    def value_head_ids(self) -> list[int]:
        return list(range(self.cfg.num_interest_tokens, self.cfg.num_task_tokens))

    def generation_scores(self, decoder_state, paths, constants=None) -> torch.Tensor:
        """Value-head (bagged: mean of the two heads) log-probability of each path [B, P]."""
        return self.path_log_probs(decoder_state, paths, heads=self.value_head_ids(), constants=constants).mean(1)

    # -- Step 3 -----------------------------------------------------------------------------

    def rank(self, kv, kv_valid, cand_sids, cand_attrs, cand_bid) -> torch.Tensor:
        """kv [B, 2R, S, d], kv_valid [B, S], candidates [B, n, ...] -> scores [B, n]."""
        b = kv.shape[0]
        cands = (
            self.embed_sids(cand_sids)
            + self.advertiser_emb(cand_attrs[..., 0])
            + self.category_emb(cand_attrs[..., 1])
            + self.bid_proj(torch.log1p(cand_bid).unsqueeze(-1))
        )
        x = torch.cat([self.rank_token.expand(b, -1, -1), cands], dim=1)
        for i, layer in enumerate(self.r_layers):
            x = layer(x, kv[:, 2 * i], kv[:, 2 * i + 1], kv_valid)
        return self.score_mlp(x[:, 1:]).squeeze(-1)

    def kv_valid_from_lengths(self, hist_len: torch.Tensor, total: int) -> torch.Tensor:
        """Rebuild kv_valid [B, S] from true lengths (what the exported ranker receives)."""
        t2 = self.cfg.num_step2_tokens
        length = total - self.num_prefix - t2
        pos = torch.arange(total, device=hist_len.device).view(1, total)
        h1_valid = pos < (self.num_prefix + hist_len).view(-1, 1)
        in_h2 = pos >= self.num_prefix + length
        if self.cfg.use_h2_in_kv and self.cfg.use_generation:
            return in_h2 | h1_valid
        return ~in_h2 & h1_valid

    def forward(self, batch: dict) -> dict:
        enc = self.encode_user(
            batch["user_features"], batch["hist_sids"], batch["hist_actions"], batch["hist_dt"], batch["hist_len"]
        )
        scores = self.rank(enc.kv, enc.kv_valid, batch["cand_sids"], batch["cand_attrs"], batch["cand_bid"])
        return {"encoding": enc, "scores": scores}
