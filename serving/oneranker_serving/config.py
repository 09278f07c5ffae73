"""Serving knobs shared by the in-process reference, the Triton models and the renderer.

`ServeConfig` travels with every export (`export_info.json` -> "serve") so the served model uses
the limits it was built with; `ExperimentConfig.serve` (training) holds the same dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeConfig:
    """Per-request defaults and limits of the serving contract (validated per request)."""

    top_k: int = 10
    num_candidates: int = 64
    beam_width: int = 16
    max_top_k: int = 256
    max_num_candidates: int = 1024
    max_beam_width: int = 256
    # Longest `exclude_item_ids` list a request may carry (INVALID_ARG beyond it): bounds the
    # per-request work of the exclusion filter.
    max_exclude_items: int = 1024
    length_buckets: tuple[int, ...] = (16, 32, 64, 128)  # history padded up to one of these
    max_batch_size: int = 8

    @property
    def max_history(self) -> int:
        return int(self.length_buckets[-1])

    @classmethod
    def from_dict(cls, raw: dict) -> ServeConfig:
        """From `export_info.json`'s "serve" block; fields added later keep their defaults."""
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        if "length_buckets" in known:
            known["length_buckets"] = tuple(known["length_buckets"])
        return cls(**known)
