"""The tables a served model version carries beside its graphs (numpy only).

    ItemTables        item id <-> dense index <-> semantic-ID path, candidate attributes
    GenerationTables  the semantic-ID decoder's tables (`decoders.py`) and the trie of legal ad
                      paths

Both are written by `oneranker build` into `generation_tables.safetensors` (`decoder.<name>`,
`trie_<level>` and `item_<field>` arrays) and belong to exactly one checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from oneranker_client.contract import ACTION_CONTENT_VIEW

from .decoders import DecoderTables, decoder_from_prefixed

ITEM_TABLE_FIELDS = ("ad_ids", "ad_codes", "ad_advertiser", "ad_category", "ad_bid", "content_ids", "content_codes")


@dataclass
class ItemTables:
    """Id <-> index <-> semantic-ID lookups, versioned with the checkpoint that uses them."""

    ad_ids: np.ndarray  # [A] int64
    ad_codes: np.ndarray  # [A, D] int64
    ad_advertiser: np.ndarray  # [A] int64
    ad_category: np.ndarray  # [A] int64
    ad_bid: np.ndarray  # [A] float32
    content_ids: np.ndarray  # [C] int64
    content_codes: np.ndarray  # [C, D] int64

    def __post_init__(self):
        self._ad_order = np.argsort(self.ad_ids, kind="stable")
        self._content_order = np.argsort(self.content_ids, kind="stable")

    @staticmethod
    def _lookup(ids: np.ndarray, table: np.ndarray, order: np.ndarray) -> np.ndarray:
        """Indices of `ids` in `table` (-1 where unknown), vectorized by binary search."""
        if len(table) == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        sorted_table = table[order]
        pos = np.clip(np.searchsorted(sorted_table, ids), 0, len(table) - 1)
        found = sorted_table[pos] == ids
        return np.where(found, order[pos], -1).astype(np.int64)

    def ad_index(self, ids: np.ndarray) -> np.ndarray:
        return self._lookup(np.asarray(ids, dtype=np.int64), self.ad_ids, self._ad_order)

    def content_index(self, ids: np.ndarray) -> np.ndarray:
        return self._lookup(np.asarray(ids, dtype=np.int64), self.content_ids, self._content_order)

    @property
    def sid_depth(self) -> int:
        return int(self.ad_codes.shape[1])

    def event_codes(self, item_idx: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """[L, D] semantic-ID paths of events given dense indices (content vs ad by action)."""
        is_content = actions == ACTION_CONTENT_VIEW
        codes = np.empty((len(item_idx), self.sid_depth), dtype=np.int64)
        if is_content.any():
            codes[is_content] = self.content_codes[item_idx[is_content]]
        if (~is_content).any():
            codes[~is_content] = self.ad_codes[item_idx[~is_content]]
        return codes

    def candidate_features(self, ad_idx: np.ndarray):
        """ad_idx [..., n] -> (cand_sids [..., n, D], cand_attrs [..., n, 2], cand_bid [..., n])."""
        attrs = np.stack([self.ad_advertiser[ad_idx], self.ad_category[ad_idx]], axis=-1)
        return self.ad_codes[ad_idx], attrs.astype(np.int64), self.ad_bid[ad_idx].astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        return {key: np.ascontiguousarray(getattr(self, key)) for key in ITEM_TABLE_FIELDS}


@dataclass
class GenerationTables:
    decoder: DecoderTables  # level_logits(state [H, Z], level, prefix [H, w, level]) -> [H, w, K]
    trie_children: list  # level l: [nodes_l, K] int, child node (last level: ad_idx) or -1
    num_interest_heads: int
    num_value_heads: int

    @property
    def num_streams(self) -> int:
        return self.num_interest_heads + (1 if self.num_value_heads else 0)


def generation_table_arrays(gen: GenerationTables, items: ItemTables) -> dict[str, np.ndarray]:
    """The arrays of `generation_tables.safetensors` (inverse of `load_generation_tables`)."""
    arrays = {f"decoder.{k}": np.ascontiguousarray(v) for k, v in gen.decoder.arrays().items()}
    for level, child in enumerate(gen.trie_children):
        arrays[f"trie_{level}"] = np.ascontiguousarray(child)
    arrays.update({f"item_{key}": value for key, value in items.arrays().items()})
    return arrays


def load_generation_tables(path: Path, num_interest: int, num_value: int) -> tuple[GenerationTables, ItemTables]:
    arrays = load_file(str(path))
    depth = sum(1 for k in arrays if k.startswith("trie_"))
    trie = [arrays[f"trie_{i}"] for i in range(depth)]
    gen = GenerationTables(decoder_from_prefixed(arrays), trie, num_interest, num_value)
    items = ItemTables(**{k[5:]: v for k, v in arrays.items() if k.startswith("item_")})
    return gen, items
