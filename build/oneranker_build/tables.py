"""Load the orchestrator's tables (torch-free: the Triton image's Python models import this).

`generation_tables.safetensors` (written by `export.write_generation_tables`) holds the
transition tables [D, D, K, K], the trie levels and the item tables of one checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.numpy import load_file

from oneranker.features import ItemTables
from oneranker.selection import GenerationTables


def load_generation_tables(path: Path, num_interest: int, num_value: int) -> tuple[GenerationTables, ItemTables]:
    arrays = load_file(str(path))
    depth = sum(1 for k in arrays if k.startswith("trie_"))
    gen = GenerationTables(arrays["transitions"], [arrays[f"trie_{i}"] for i in range(depth)], num_interest, num_value)
    items = ItemTables(**{k[5:]: v for k, v in arrays.items() if k.startswith("item_")})
    return gen, items
