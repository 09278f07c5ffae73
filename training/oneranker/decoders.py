"""Semantic-ID decoders: log P(code at level l | user, prefix chosen so far), per task head.

Both decoders read the per-head user vector e_user [B, Hp, U] (U = d_task + k: the task-semantic
channel, then the target-aware channel; `OneRanker.user_vectors`) and score level l's codebook
through the same item side [D, K, U] (code embedding ; centroid-derived code features, the
paper's dual-channel dot product). They differ in how the prefix enters:

    factorized   logits_l = q_l(u) . item_l + bias_l + sum_{m<l} T[l, m, p_m, :]
                 q_l(u) = u W_l; T [D, D, K, K] = code_emb . V_lm . code_emb, the SAME for every
                 user. state = the prefix-free level logits, flattened [B, H, D*K].
    conditioned  logits_l = (q_l(u) + MLP_l(u, p_<l)) . item_l + bias_l
                 MLP_l(u, p) = SiLU(u A_l + a_l + sum_{m<l} E_lm[p_m]) O_l    (hidden width Hd)
                 state = the user vectors themselves [B, H, U].

Why an MLP over per-slot prefix embeddings and not attention over the prefix codes: the prefix
is at most D - 1 codes (3 here) and code m always sits in slot m, so the slot embeddings E_lm
already carry position; one hidden layer on (user + prefix) is what makes user x prefix
interactions learnable (a user who follows A with x and B with y beside one who follows A with y
and B with x is an XOR of user and prefix, which no additive term can fit). In the graph it is two
batched matmuls and D - 1 gathers per level over all W beams x H heads, every op in the
onnx-tensorrt list; attention over <= 3 keys would add a softmax and reshapes for nothing the
slots do not already say.

Interface used by training (teacher forcing), evaluation (every item), the in-graph beam search
(`beam_search.StreamDecoder`) and, through `numpy_arrays()`, the numpy reference
(`oneranker_serving.decoders`):

    state(e_user [B, Hp, U], heads H)                 -> [B, H, Z]
    constants()                                      -> per-weights tables (reuse across calls)
    level_logits(state [B, H, Z], level, prefix [B|1, H|1, P, level], constants) -> [B, H, P, K]
    path_log_probs(state, paths [B, P, D] | [B, H, P, D], constants) -> [B, H, P]  (-1 rows: 0)

The generation graph computes level_logits in a second, equal form (`beam_search`): a beam is a
trie node, so the prefix's whole contribution is a per-node row fixed by the weights, tabulated
once at export; what depends on the user alone is computed once per call, before the levels.

    graph_constants()                                -> {name: tensor} (buffers of the graph)
    prefix_rows(level, prefixes [N, level])          -> [N, R]   (level >= 1; the node tables)
    user_terms(state [B, H, Z], graph_constants)     -> per level, the user's part
    node_logits(user_terms[level], level, rows [B, H, w, R] | None, graph_constants)
                                                     -> [B, H, w|1, K]  (= level_logits on
                                                        every code the level has)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import DECODERS

NEG_INF = -1e9


class SemanticIdDecoder(nn.Module):
    """Shared item side and per-level user query (see module docstring)."""

    kind = ""

    def __init__(self, depth: int, codes: int, d_task: int, user_width: int, code_features, level_sizes):
        super().__init__()
        self.depth, self.codes, self.user_width = depth, codes, user_width
        self.level_query = nn.Parameter(torch.randn(depth, user_width, user_width) / user_width**0.5)
        self.code_emb = nn.Parameter(torch.randn(depth, codes, d_task) * 0.1)
        self.code_bias = nn.Parameter(torch.zeros(depth, codes))
        if code_features is not None:
            self.register_buffer("level_code_features", code_features.float().clone())
        else:
            self.level_code_features = None
        valid = torch.zeros(depth, codes, dtype=torch.bool)
        for level, size in enumerate(level_sizes):
            valid[level, :size] = True
        self.register_buffer("code_valid", valid)

    def item_side(self) -> torch.Tensor:
        """[D, K, U]: code embedding, then the centroid-derived code features (when present)."""
        if self.level_code_features is None:
            return self.code_emb
        return torch.cat([self.code_emb, self.level_code_features], dim=-1)

    @property
    def state_width(self) -> int:
        raise NotImplementedError

    def state(self, e_user: torch.Tensor, heads: int) -> torch.Tensor:
        raise NotImplementedError

    def constants(self):
        raise NotImplementedError

    def level_logits(self, state, level: int, prefix, constants=None) -> torch.Tensor:
        raise NotImplementedError

    def numpy_arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def graph_constants(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def prefix_rows(self, level: int, prefixes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def user_terms(self, state: torch.Tensor, consts: dict) -> list:
        raise NotImplementedError

    def node_logits(self, terms, level: int, rows, consts: dict) -> torch.Tensor:
        raise NotImplementedError

    def path_log_probs(self, state: torch.Tensor, paths: torch.Tensor, constants=None) -> torch.Tensor:
        """Teacher-forced log P(path) per head: state [B, H, Z]; paths [B, P, D] (every head
        scores every path) or [B, H, P, D] (head h scores its own paths) -> [B, H, P]. Rows
        whose first code is -1 give 0."""
        constants = self.constants() if constants is None else constants
        per_head = paths if paths.dim() == 4 else paths.unsqueeze(1)  # [B, H|1, P, D]
        safe = per_head.clamp(min=0)
        total = 0.0
        for level in range(self.depth):
            logits = self.level_logits(state, level, safe[..., :level], constants)  # [B, H, P|1, K]
            code = safe[..., level]  # [B, H|1, P]
            logp = torch.log_softmax(logits, dim=-1).expand(-1, -1, code.shape[2], -1)
            total = total + logp.gather(-1, code.expand(-1, logp.shape[1], -1).unsqueeze(-1)).squeeze(-1)
        return total * (per_head[..., 0] >= 0)


class FactorizedDecoder(SemanticIdDecoder):
    """Prefix-free level logits per user + transition tables shared by every user."""

    kind = "factorized"

    def __init__(self, depth, codes, d_task, user_width, code_features, level_sizes):
        super().__init__(depth, codes, d_task, user_width, code_features, level_sizes)
        self.transition = nn.Parameter(torch.zeros(depth, depth, d_task, d_task))

    @property
    def state_width(self) -> int:
        return self.depth * self.codes

    def state(self, e_user, heads):
        query = torch.einsum("bhu,luv->bhlv", e_user, self.level_query)  # [B, Hp, D, U]
        logits = torch.einsum("bhlv,lkv->bhlk", query, self.item_side()) + self.code_bias
        logits = logits.masked_fill(~self.code_valid, NEG_INF)
        return logits.expand(-1, heads, -1, -1).reshape(e_user.shape[0], heads, -1)

    def constants(self) -> torch.Tensor:
        """[D, D, K, K]: transitions[l, m, p, c] added to level l's logit of code c when the
        level-m code is p (m < l; zero elsewhere)."""
        t = torch.einsum("mpe,lmef,lcf->lmpc", self.code_emb, self.transition, self.code_emb)
        lower = torch.tril(torch.ones(self.depth, self.depth, device=t.device), diagonal=-1)
        return t * lower.view(self.depth, self.depth, 1, 1)

    def level_logits(self, state, level, prefix, constants=None):
        trans = self.constants() if constants is None else constants
        b, h, _ = state.shape
        logits = state.view(b, h, self.depth, self.codes)[:, :, level].unsqueeze(2)  # [B, H, 1, K]
        for m in range(level):
            logits = logits + trans[level, m][prefix[..., m]]  # [B|1, H|1, P, K]
        return logits

    def numpy_arrays(self):
        with torch.no_grad():
            return {"transitions": self.constants().float().cpu().numpy()}

    def graph_constants(self):
        return {}

    def prefix_rows(self, level, prefixes):
        """[N, K]: sum_{m<level} T[level, m, p_m], the prefix's addition to the level logits."""
        trans = self.constants()
        rows = trans[level, 0][prefixes[:, 0]]
        for m in range(1, level):
            rows = rows + trans[level, m][prefixes[:, m]]
        return rows

    def user_terms(self, state, consts):
        """Level l's prefix-free logits [B, H, 1, K], per level (one Split)."""
        return list(torch.split(state.unsqueeze(2), self.codes, dim=-1))

    def node_logits(self, terms, level, rows, consts):
        return terms if rows is None else terms + rows


class ConditionedDecoder(SemanticIdDecoder):
    """Each level's query from the user vector and the prefix chosen so far (module docstring)."""

    kind = "conditioned"

    def __init__(self, depth, codes, d_task, user_width, code_features, level_sizes, hidden: int):
        super().__init__(depth, codes, d_task, user_width, code_features, level_sizes)
        self.hidden_in = nn.Parameter(torch.randn(depth, user_width, hidden) / user_width**0.5)
        self.hidden_bias = nn.Parameter(torch.zeros(depth, hidden))
        # prefix_emb[l, m, p]: code p at level m, as seen by level l (m < l; rows m >= l unused)
        self.prefix_emb = nn.Parameter(torch.randn(depth, depth, codes, hidden) * 0.5)
        self.hidden_out = nn.Parameter(torch.randn(depth, hidden, user_width) / hidden**0.5)

    @property
    def state_width(self) -> int:
        return self.user_width

    def state(self, e_user, heads):
        return e_user.expand(-1, heads, -1)

    def constants(self) -> torch.Tensor:
        return self.item_side()

    def level_logits(self, state, level, prefix, constants=None):
        item_side = self.item_side() if constants is None else constants  # [D, K, U]
        base = (state @ self.level_query[level]).unsqueeze(2)  # [B, H, 1, U]
        pre = (state @ self.hidden_in[level] + self.hidden_bias[level]).unsqueeze(2)  # [B, H, 1, Hd]
        for m in range(level):
            pre = pre + self.prefix_emb[level, m][prefix[..., m]]  # [B|1, H|1, P, Hd]
        query = base + F.silu(pre) @ self.hidden_out[level]  # [B, H, P, U]
        logits = query @ item_side[level].transpose(0, 1) + self.code_bias[level]  # [B, H, P, K]
        return logits.masked_fill(~self.code_valid[level], NEG_INF)

    def graph_constants(self):
        """The item side folded into the two query terms (u W_l . item_l and O_l . item_l), every
        level's user projections side by side (one MatMul each per call), the code mask in the bias
        (a masked code's logit stays ~NEG_INF, so it weighs exactly 0 in the softmax)."""
        item = self.item_side()  # [D, K, U]
        d, k, hidden = self.depth, self.codes, self.hidden_in.shape[-1]
        return {
            "query_logits": torch.einsum("luv,lkv->ulk", self.level_query, item).reshape(-1, d * k),
            "hidden_in": self.hidden_in.permute(1, 0, 2).reshape(-1, d * hidden),
            "hidden_bias": self.hidden_bias.reshape(d * hidden),
            "out_logits": torch.einsum("lhv,lkv->lhk", self.hidden_out, item),  # [D, Hd, K]
            "code_bias": self.code_bias.masked_fill(~self.code_valid, NEG_INF),
        }

    def prefix_rows(self, level, prefixes):
        """[N, Hd]: sum_{m<level} E[level, m, p_m], the prefix's addition to the hidden layer."""
        rows = self.prefix_emb[level, 0][prefixes[:, 0]]
        for m in range(1, level):
            rows = rows + self.prefix_emb[level, m][prefixes[:, m]]
        return rows

    def user_terms(self, state, consts):
        """Per level (query logits [B, H, 1, K], hidden pre-activation [B, H, 1, Hd])."""
        hidden = self.hidden_in.shape[-1]
        base = torch.split((state @ consts["query_logits"]).unsqueeze(2), self.codes, dim=-1)
        pre = torch.split((state @ consts["hidden_in"] + consts["hidden_bias"]).unsqueeze(2), hidden, dim=-1)
        return list(zip(base, pre))

    def node_logits(self, terms, level, rows, consts):
        base, pre = terms
        if rows is not None:
            pre = pre + rows
        return F.silu(pre) @ consts["out_logits"][level] + base + consts["code_bias"][level]

    def numpy_arrays(self):
        names = ("level_query", "hidden_in", "hidden_bias", "prefix_emb", "hidden_out", "code_bias")
        with torch.no_grad():
            out = {name: getattr(self, name).float().cpu().numpy() for name in names}
            out["item_side"] = self.item_side().float().cpu().numpy()
            out["code_valid"] = self.code_valid.cpu().numpy().astype(np.uint8)
        return out


def build_decoder(cfg, depth: int, codes: int, code_features, level_sizes) -> SemanticIdDecoder:
    """cfg: ModelConfig (decoder, decoder_hidden, d_task, user_width)."""
    args = (depth, codes, cfg.d_task, cfg.user_width, code_features, level_sizes)
    if cfg.decoder == "factorized":
        return FactorizedDecoder(*args)
    if cfg.decoder == "conditioned":
        return ConditionedDecoder(*args, hidden=cfg.decoder_hidden)
    raise ValueError(f"unknown decoder {cfg.decoder!r}: choose one of {DECODERS}")
