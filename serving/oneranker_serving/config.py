"""Serving knobs shared by the in-process reference, the Triton models and the renderer.

`ServeConfig` travels with every export (`export_info.json` -> "serve") so the served model uses
the limits it was built with; `ExperimentConfig.serve` (training) holds the same dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass

# What a history item id the model version does not know becomes (`ServeConfig.oov_policy`):
OOV_TOKEN = "token"  # the model's OOV semantic-ID path [oov_code] * D (trained for it), counted
OOV_REJECT = "reject"  # the request is refused (INVALID_ARG naming the ids)
OOV_POLICIES = (OOV_TOKEN, OOV_REJECT)


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
    # A history item id this model version does not know: "token" serves it as the model's OOV
    # token (trained for it, counted in the response's history_unknown), "reject" refuses the
    # request (INVALID_ARG). Unseen items are normal traffic (new ads, new content), so token.
    oov_policy: str = OOV_TOKEN
    # |request_time - server clock| allowed, seconds; None = unchecked (the default: benches and
    # offline evaluation replay old logs).
    timestamp_skew_s: int | None = None

    def __post_init__(self):
        if self.oov_policy not in OOV_POLICIES:
            raise ValueError(f"serve.oov_policy must be one of {OOV_POLICIES}, got {self.oov_policy!r}")

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
