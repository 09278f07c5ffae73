"""Rows of the study: the units of work a source gets (one run file each per seed), the rows each
table reports and the unit that fills them, the paper's numbers and orderings, and the
configuration of every (source, seed, run).

    UNITS[unit]                               -> what one (source, unit, seed) trains and which rows it fills
    source_config(preset, source, seed, ...) -> Config of one (source, seed)
    variant_config(cfg, RUNS[run])            -> that Config with the run's ModelConfig switches
"""

from __future__ import annotations

import copy
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    tables: tuple  # paper tables the row belongs to
    unit: str  # the unit of work (UNITS) whose run file holds the row's per-user metrics
    run: str | None  # trained configuration whose scores the 30-candidate protocol uses
    scorer: str  # "ranking" | "generation" | "next_item" | "popularity"
    gen_run: str | None  # full-catalogue candidates from this run (None: n/a)
    rank_run: str | None  # final slate scored by this run's ranker (None: the generation order)
    note: str = ""


# trained OneRanker configuration -> ModelConfig switches (every run of a source shares the rest);
# "s2" and "s3_only" are the cascade's generator and ranker (`cascade.generator_config` /
# `ranker_config` set the same switches)
RUNS: dict[str, dict] = {
    "full": {},
    "wo_dc": {"use_dc_loss": False},
    "wo_h2kv": {"use_h2_in_kv": False},
    "s3_only": {"use_generation": False},
    "s2": {"use_ranker": False},
    "s2_wo_target": {"use_ranker": False, "use_fake_items": False},
    "s2_wo_target_mda": {"use_ranker": False, "use_fake_items": False, "use_task_decoupling": False},
    "s2_wo_capri": {"use_ranker": False, "cross_attention_first": False},
    "s2_wo_hmask": {"use_ranker": False, "use_hetero_mask": False},
}


@dataclass(frozen=True)
class Unit:
    """One unit of work per (source, seed): trains `trains` and writes one run file holding the
    per-user metrics of `rows` (`runfiles`). `seeded` False: model-free, one file per source."""

    key: str
    kind: str  # "oneranker" | "cascade" | "hstu" | "popularity"
    trains: tuple
    rows: tuple
    headline: bool  # a headline comparison's unit (never cut on synthetic; 5 seeds everywhere)
    seeded: bool = True


UNITS: dict[str, Unit] = {
    u.key: u
    for u in (
        Unit("full", "oneranker", ("full",), ("full",), True),
        Unit("cascade", "cascade", ("s2", "s3_only"), ("s2", "s3_only", "cascade"), True),
        Unit("hstu", "hstu", ("hstu",), ("hstu",), True),
        Unit("popularity", "popularity", (), ("popularity",), True, seeded=False),
        Unit("wo_dc", "oneranker", ("wo_dc",), ("wo_dc",), False),
        Unit("wo_h2kv", "oneranker", ("wo_h2kv",), ("wo_h2kv",), False),
        Unit("s2_wo_target", "oneranker", ("s2_wo_target",), ("s2_wo_target",), False),
        Unit("s2_wo_target_mda", "oneranker", ("s2_wo_target_mda",), ("s2_wo_target_mda",), False),
        Unit("s2_wo_capri", "oneranker", ("s2_wo_capri",), ("s2_wo_capri",), False),
        Unit("s2_wo_hmask", "oneranker", ("s2_wo_hmask",), ("s2_wo_hmask",), False),
    )
}
DC_ROWS = ("full", "wo_dc")  # rows whose files also hold the Step-2 / Step-3 candidate ranks (Fig. 3)

ROWS: tuple[Row, ...] = (
    Row("full", "OneRanker (full)", ("T1", "T2"), "full", "full", "ranking", "full", "full"),
    Row("wo_dc", "w/o L_DC", ("T2",), "wo_dc", "wo_dc", "ranking", "wo_dc", "wo_dc"),
    Row("wo_h2kv", "w/o H2 in S3 KV", ("T2",), "wo_h2kv", "wo_h2kv", "ranking", "wo_h2kv", "wo_h2kv"),
    Row(
        "s3_only",
        "S3 only",
        ("T2",),
        "cascade",
        "s3_only",
        "ranking",
        None,
        None,
        "no generator: full-catalogue metrics n/a; the cascade's ranker",
    ),
    Row(
        "s2",
        "OneRanker S2",
        ("T2", "T3"),
        "cascade",
        "s2",
        "generation",
        "s2",
        None,
        "the cascade's generator",
    ),
    Row(
        "s2_wo_target",
        "S2 w/o Target (= GPR (MTP))",
        ("T2",),
        "s2_wo_target",
        "s2_wo_target",
        "generation",
        "s2_wo_target",
        None,
    ),
    Row(
        "s2_wo_target_mda",
        "S2 w/o Target & MDA",
        ("T2",),
        "s2_wo_target_mda",
        "s2_wo_target_mda",
        "generation",
        "s2_wo_target_mda",
        None,
    ),
    Row("s2_wo_capri", "S2 w/o CA-Pri", ("T3",), "s2_wo_capri", "s2_wo_capri", "generation", "s2_wo_capri", None),
    Row("s2_wo_hmask", "S2 w/o H-Mask", ("T3",), "s2_wo_hmask", "s2_wo_hmask", "generation", "s2_wo_hmask", None),
    Row(
        "cascade",
        "Cascade (generator + independent ranker)",
        ("T1",),
        "cascade",
        "s3_only",
        "ranking",
        "s2",
        "s3_only",
        "30-candidate protocol = its ranker's scores (identical to S3 only); full catalogue = generator "
        "beams re-scored by the ranker",
    ),
    Row(
        "hstu",
        "HSTU (next-item over item ids)",
        ("T1",),
        "hstu",
        "hstu",
        "next_item",
        "hstu",
        None,
        "`baselines.hstu` G-Decoder + next-item head (`baselines.hstu_study`): candidates by their "
        "next-item logit; full catalogue = its top ads by logit",
    ),
    Row("popularity", "Popularity (floor)", ("T1",), "popularity", None, "popularity", None, None),
)
ROW = {r.key: r for r in ROWS}
SYSTEM_ROWS = ("full", "cascade", "s2", "hstu", "popularity")
TABLE2 = ("full", "wo_dc", "wo_h2kv", "s3_only", "s2", "s2_wo_target", "s2_wo_target_mda")
TABLE3 = ("s2", "s2_wo_hmask", "s2_wo_capri")  # paper order by HR@5

# paper-notes §1.13 (HR@5, NDCG@5); Table 3 reports HR@5 only
PAPER = {
    "full": {"HR@5": 0.6213, "NDCG@5": 0.7904},
    "wo_dc": {"HR@5": 0.6173, "NDCG@5": 0.7865},
    "wo_h2kv": {"HR@5": 0.6161, "NDCG@5": 0.7858},
    "s3_only": {"HR@5": 0.6157, "NDCG@5": 0.7849},
    "s2": {"HR@5": 0.5448, "NDCG@5": 0.7440},
    "s2_wo_target": {"HR@5": 0.5203, "NDCG@5": 0.7285},
    "s2_wo_target_mda": {"HR@5": 0.5066, "NDCG@5": 0.7275},
    "s2_wo_capri": {"HR@5": 0.5277},
    "s2_wo_hmask": {"HR@5": 0.5335},
}


def paper_orderings() -> list[tuple[str, str, str]]:
    """Every pair (a, b, table) with a above b in paper Table 2 (total order of 7 rows: 21 pairs)
    or Table 3 (3 pairs)."""
    pairs = [(a, b, "T2") for i, a in enumerate(TABLE2) for b in TABLE2[i + 1 :]]
    pairs += [(a, b, "T3") for i, a in enumerate(TABLE3) for b in TABLE3[i + 1 :]]
    return pairs


# DataConfig fields the study sets per source. A field DataConfig does not have stays out of the
# resolved config and the protocol lists it under "pending" with the value it would take.
#   synthetic: world v2 (docs/study.md: an ad-quality effect the semantic IDs cannot recover,
#     context x category, bids independent of interest; headroom >= 5%), at >= 5,000 users and
#     >= 10,000 ads outside the `tiny` smoke preset (STUDY_SYNTHETIC_SIZE)
#   tafeng_time: Ta-Feng under the global time cutoff (train before the 0.8 quantile of event
#     times, validation and test after), reported beside Ta-Feng's leave-last-out, where
#     popularity and training can see other users' later events
STUDY_DATA_FIELDS: dict[str, dict[str, object]] = {
    "synthetic": {"world": "v2"},
    "tafeng_time": {"split": "time_cutoff"},
}
STUDY_SYNTHETIC_SIZE = {"num_users": 5000, "num_ads": 10000}
# study source -> the DataConfig.source it reads
DATA_SOURCE = {"tafeng_time": "tafeng"}


def pending_data_fields(source: str) -> dict[str, object]:
    """{field: intended value} of STUDY_DATA_FIELDS that DataConfig does not have yet."""
    from ..config import DataConfig

    return {k: v for k, v in STUDY_DATA_FIELDS.get(source, {}).items() if not hasattr(DataConfig(), k)}


def source_config(
    preset_name: str,
    source: str,
    seed: int,
    steps: int | None,
    threads: int,
    max_users: int | None,
    data_seed: int = 0,
) -> object:
    """The study's config of one (source, seed): the preset, the source, seeded model/tokenizer
    (the data seed fixed, default 0), the declared stopping rule and the documented per-source
    adjustments."""
    from ..config import preset

    cfg = preset(preset_name)
    data_source = DATA_SOURCE.get(source, source)
    cfg.data.source = data_source
    cfg.data.seed = data_seed
    cfg.train.seed = cfg.tokenizer.seed = seed
    cfg.train.num_threads = threads
    # every study run stops by the declared validation rule (TrainConfig's defaults: HR@5 of the
    # final scorer every eval_every steps, patience, best weights restored); `steps` is the cap.
    # The presets turn it off only for the README's main job and the test suite.
    declared = type(cfg.train)()
    cfg.train.early_stopping, cfg.train.eval_every = declared.early_stopping, declared.eval_every
    if steps:
        cfg.train.steps = steps
        if cfg.train.warmup_steps * 4 > steps:  # very short (smoke) runs: warm-up = 20% of the steps
            cfg.train.warmup_steps = max(1, steps // 5)
    if data_source == "tafeng":
        # 23.8k products do not fit 16 (or 8) codes x 3 levels x 16 collisions (docs/real-data.md)
        cfg.tokenizer.codebook_size = max(cfg.tokenizer.codebook_size, 32)
        cfg.data.max_users = max_users if max_users is not None else {"tiny": 2000, "small": 5000}.get(preset_name, 0)
    elif max_users is not None and source != "synthetic":
        cfg.data.max_users = max_users
    if source == "synthetic" and preset_name != "tiny":
        for key, value in STUDY_SYNTHETIC_SIZE.items():
            setattr(cfg.data, key, max(getattr(cfg.data, key), value))
    for key, value in STUDY_DATA_FIELDS.get(source, {}).items():
        if hasattr(cfg.data, key):
            setattr(cfg.data, key, value)
    cfg.name = f"{preset_name}-{source}-seed{seed}"
    return cfg.validate()


def variant_config(cfg, switches: dict):
    out = copy.deepcopy(cfg)
    for key, value in switches.items():
        setattr(out.model, key, value)
    return out.validate()
