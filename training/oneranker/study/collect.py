"""Run files of one study folder -> per-source data for the report (`SourceData`).

    OUT/runs/<source>/*.npz --read_unit/decode_row--> SourceData.per_user[row][seed][metric] = [U]
    `values(row, metric, seeds)` -> [S, U], the input of `stats.seed_user_interval`

Files whose test users / candidates differ from the source's first file (`test_key`) are an
error: every row of a source must score the same users. Files of another protocol hash are
kept and listed (`foreign`), so the report can say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import runfiles as rf
from .protocol import StudySpec, planned_units, protocol_hash
from .rows import UNITS


@dataclass
class SourceData:
    source: str
    info: dict = field(default_factory=dict)
    test_key: str = ""
    per_user: dict = field(default_factory=dict)  # row -> seed -> metric -> [U]
    pooled_auc: dict = field(default_factory=dict)  # row -> seed -> float
    dc: dict = field(default_factory=dict)  # row -> seed -> {"abs_diff": [U, n], "overlap": [U, n]}
    histories: dict = field(default_factory=dict)  # run -> seed -> list of {term: value} rows
    trained: dict = field(default_factory=dict)  # run -> seed -> {"train_seconds", "stopping"}
    unit_seconds: dict = field(default_factory=dict)  # unit -> seed -> (train s, eval s)
    headroom_pct: float | None = None
    machines: set = field(default_factory=set)
    foreign: list = field(default_factory=list)  # unit names written under another protocol hash

    def seeds(self, row: str) -> list:
        return sorted(self.per_user.get(row, {}), key=lambda s: -1 if s is None else s)

    def has(self, row: str, metric: str) -> bool:
        return any(metric in m for m in self.per_user.get(row, {}).values())

    def values(self, row: str, metric: str, seeds: list | None = None) -> np.ndarray:
        """[S, U] of `metric` for `row` over `seeds` (default: every seed the row has). A model-free
        row (seed None) is repeated for every requested seed: it has no training variance."""
        by_seed = self.per_user[row]
        if None in by_seed:
            return np.stack([by_seed[None][metric]] * max(1, len(seeds or [None])))
        seeds = self.seeds(row) if seeds is None else seeds
        return np.stack([by_seed[s][metric] for s in seeds])

    def common_seeds(self, a: str, b: str) -> list:
        sa, sb = self.seeds(a), self.seeds(b)
        if sa == [None]:
            return sb
        if sb == [None]:
            return sa
        return [s for s in sa if s in sb]


def _history_rows(terms: list[str], values: np.ndarray) -> list[dict]:
    return [dict(zip(terms, map(float, row))) for row in values]


def collect(out: Path, protocol: dict) -> tuple[dict[str, SourceData], list, list]:
    """-> ({source: SourceData}, units done, units missing) for the protocol's plan; units are
    "source/unit-seedN" names."""
    spec = StudySpec.from_dict(protocol["spec"])
    digest = protocol_hash(protocol)
    found = rf.existing_units(out)
    planned = planned_units(spec)
    data: dict[str, SourceData] = {s: SourceData(s) for s in spec.sources}
    done, absent = [], []
    for key in planned:
        source, unit, seed = key
        name = f"{source}/{rf.unit_name(unit, seed)}"
        if key not in found:
            absent.append(name)
            continue
        meta, arrays = rf.read_unit(found[key])
        d = data[source]
        if not d.test_key:
            d.test_key, d.info = meta["test_key"], meta["info"]
        elif meta["test_key"] != d.test_key:
            raise ValueError(f"{found[key]}: test users/candidates differ from the other files of {source}")
        if meta.get("protocol_hash") != digest:
            d.foreign.append(rf.unit_name(unit, seed))
        done.append(name)
        price = arrays.get("target_price")
        n = int(meta["info"]["num_candidates"])
        for row in UNITS[unit].rows:
            codes = rf.row_codes(arrays, row)
            d.per_user.setdefault(row, {})[seed] = rf.decode_row(codes, n, price)
            d.pooled_auc.setdefault(row, {})[seed] = meta["pooled_auc"][row]
            if "dc_perm" in codes:
                d.dc.setdefault(row, {})[seed] = rf.decode_dc(codes)
        for run, record in meta.get("trained", {}).items():
            d.trained.setdefault(run, {})[seed] = record
            terms = meta["history_terms"].get(run, [])
            d.histories.setdefault(run, {})[seed] = _history_rows(terms, arrays.get(f"history/{run}", np.zeros((0, 0))))
        d.unit_seconds.setdefault(unit, {})[seed] = (meta["train_seconds"], meta["eval_seconds"])
        if meta.get("headroom_pct") is not None:
            d.headroom_pct = meta["headroom_pct"]
        d.machines.add(meta.get("machine", ""))
    return data, done, absent
