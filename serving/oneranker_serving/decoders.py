"""The semantic-ID decoders in numpy (the reference beam search's; the PyTorch modules they
mirror are `oneranker.decoders`, whose `numpy_arrays()` fill them).

    level_logits(state [H, Z], level, prefix [H, w, level] int) -> [H, w, K] float64

state is one user's decoder state: the flattened prefix-free level logits [H, D*K] (factorized)
or the user vectors [H, U] (conditioned). Arrays travel in `generation_tables.safetensors` under
`decoder.<name>`; the kind is told by which arrays are there.
"""

from __future__ import annotations

import numpy as np

NEG_INF = -1e9


def silu(x: np.ndarray) -> np.ndarray:
    return x * 0.5 * (1.0 + np.tanh(0.5 * x))  # x * sigmoid(x), without exp overflow


class FactorizedTables:
    """logits_l = level_logits[:, l] + sum_{m<l} transitions[l, m, p_m] (one table for all users)."""

    kind = "factorized"

    def __init__(self, transitions: np.ndarray):
        self.transitions = np.asarray(transitions, dtype=np.float32)  # [D, D, K, K]
        self.depth, self.codes = self.transitions.shape[0], self.transitions.shape[-1]

    def level_logits(self, state: np.ndarray, level: int, prefix: np.ndarray) -> np.ndarray:
        heads = state.shape[0]
        logits = state.reshape(heads, self.depth, self.codes)[:, level][:, None, :].astype(np.float64)
        for m in range(level):
            logits = logits + self.transitions[level, m][prefix[..., m]]
        return logits

    def arrays(self) -> dict[str, np.ndarray]:
        return {"transitions": self.transitions}


class ConditionedTables:
    """logits_l = (u W_l + SiLU(u A_l + a_l + sum_{m<l} E_lm[p_m]) O_l) . item_l + bias_l."""

    kind = "conditioned"
    NAMES = (
        "level_query",
        "hidden_in",
        "hidden_bias",
        "prefix_emb",
        "hidden_out",
        "item_side",
        "code_bias",
        "code_valid",
    )

    def __init__(self, **arrays: np.ndarray):
        missing = [name for name in self.NAMES if name not in arrays]
        if missing:
            raise ValueError(f"conditioned decoder tables lack {missing}")
        for name in self.NAMES:
            value = np.asarray(arrays[name])
            setattr(self, name, value.astype(bool) if name == "code_valid" else value.astype(np.float64))
        self.depth, self.codes = self.code_bias.shape

    def level_logits(self, state: np.ndarray, level: int, prefix: np.ndarray) -> np.ndarray:
        u = state.astype(np.float64)  # [H, U]
        pre = (u @ self.hidden_in[level] + self.hidden_bias[level])[:, None, :]  # [H, 1, Hd]
        for m in range(level):
            pre = pre + self.prefix_emb[level, m][prefix[..., m]]  # [H, w, Hd]
        query = (u @ self.level_query[level])[:, None, :] + silu(pre) @ self.hidden_out[level]  # [H, w|1, U]
        logits = query @ self.item_side[level].T + self.code_bias[level]  # [H, w|1, K]
        return np.where(self.code_valid[level], logits, NEG_INF)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {name: getattr(self, name).astype(np.float32) for name in self.NAMES}
        out["code_valid"] = self.code_valid.astype(np.uint8)
        return out


DecoderTables = FactorizedTables | ConditionedTables


def decoder_tables(kind: str, arrays: dict[str, np.ndarray]) -> DecoderTables:
    if kind == "factorized":
        return FactorizedTables(arrays["transitions"])
    if kind == "conditioned":
        return ConditionedTables(**arrays)
    raise ValueError(f"unknown decoder {kind!r}")


def decoder_from_prefixed(arrays: dict[str, np.ndarray], prefix: str = "decoder.") -> DecoderTables:
    """The decoder stored under `prefix` in a table file (kind told by its arrays: `transitions`
    = factorized). Table files written before the decoders had a prefix hold a top-level
    `transitions` (factorized) and load as such."""
    own = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
    if not own and "transitions" in arrays:
        own = {"transitions": arrays["transitions"]}
    if not own:
        raise ValueError(f"no semantic-ID decoder tables ({prefix}*) in the generation tables: rebuild the export")
    return decoder_tables("factorized" if "transitions" in own else "conditioned", own)
