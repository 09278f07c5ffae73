"""Rows of the study: which training runs a source gets, which row each table reports, the
paper's numbers and orderings, and the configuration of every (source, seed, run).

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
    run: str | None  # training run whose Step-2/3 scores the 30-candidate protocol uses
    scorer: str  # "ranking" | "generation" | "popularity"
    gen_run: str | None  # full-catalogue candidates from this run's beam search (None: n/a)
    rank_run: str | None  # final slate scored by this run's ranker (None: by generation)
    note: str = ""


# run key -> ModelConfig switches (every run of a source shares everything else)
RUNS: dict[str, dict] = {
    "full": {},
    "wo_dc": {"use_dc_loss": False},
    "wo_h2kv": {"use_h2_in_kv": False},
    "cascade/ranker": {"use_generation": False},
    "cascade/generator": {"use_ranker": False},
    "s2_wo_target": {"use_ranker": False, "use_fake_items": False},
    "s2_wo_target_mda": {"use_ranker": False, "use_fake_items": False, "use_task_decoupling": False},
    "s2_wo_capri": {"use_ranker": False, "cross_attention_first": False},
    "s2_wo_hmask": {"use_ranker": False, "use_hetero_mask": False},
}

ROWS: tuple[Row, ...] = (
    Row("full", "OneRanker (full)", ("T1", "T2"), "full", "ranking", "full", "full"),
    Row("wo_dc", "w/o L_DC", ("T2",), "wo_dc", "ranking", "wo_dc", "wo_dc"),
    Row("wo_h2kv", "w/o H2 in S3 KV", ("T2",), "wo_h2kv", "ranking", "wo_h2kv", "wo_h2kv"),
    Row(
        "s3_only",
        "S3 only",
        ("T2",),
        "cascade/ranker",
        "ranking",
        None,
        None,
        "no generator: full-catalogue metrics n/a; same run as the cascade ranker",
    ),
    Row(
        "s2",
        "OneRanker S2",
        ("T2", "T3"),
        "cascade/generator",
        "generation",
        "cascade/generator",
        None,
        "same run as the cascade generator",
    ),
    Row("s2_wo_target", "S2 w/o Target", ("T2",), "s2_wo_target", "generation", "s2_wo_target", None),
    Row(
        "s2_wo_target_mda",
        "S2 w/o Target & MDA",
        ("T2",),
        "s2_wo_target_mda",
        "generation",
        "s2_wo_target_mda",
        None,
        "same run as the HSTU generator",
    ),
    Row("s2_wo_capri", "S2 w/o CA-Pri", ("T3",), "s2_wo_capri", "generation", "s2_wo_capri", None),
    Row("s2_wo_hmask", "S2 w/o H-Mask", ("T3",), "s2_wo_hmask", "generation", "s2_wo_hmask", None),
    Row(
        "cascade",
        "Cascade (generator + independent ranker)",
        ("T1",),
        "cascade/ranker",
        "ranking",
        "cascade/generator",
        "cascade/ranker",
        "30-candidate protocol = its ranker's scores (identical to S3 only); full catalogue = generator "
        "beams re-scored by the ranker",
    ),
    Row(
        "hstu",
        "HSTU next-item generator",
        ("T1",),
        "s2_wo_target_mda",
        "generation",
        "s2_wo_target_mda",
        None,
        "= S2 w/o Target & MDA (plain HSTU G-Decoder + one shared MTP task token)",
    ),
    Row("popularity", "Popularity (floor)", ("T1",), None, "popularity", None, None),
)
ROW = {r.key: r for r in ROWS}
SYSTEM_ROWS = ("full", "cascade", "hstu", "popularity")
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


def source_config(
    preset_name: str, source: str, seed: int, steps: int | None, threads: int, max_users: int | None
) -> object:
    """The study's config of one (source, seed): the preset, the source, seeded model/tokenizer
    (data seed fixed at 0), and the documented per-source adjustments."""
    from ..config import preset

    cfg = preset(preset_name)
    cfg.data.source = source
    cfg.data.seed = 0
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
    if source == "tafeng":
        # 23.8k products do not fit 16 (or 8) codes x 3 levels x 16 collisions (docs/real-data.md)
        cfg.tokenizer.codebook_size = max(cfg.tokenizer.codebook_size, 32)
        cfg.data.max_users = max_users if max_users is not None else {"tiny": 2000, "small": 5000}.get(preset_name, 0)
    elif max_users is not None and source != "synthetic":
        cfg.data.max_users = max_users
    cfg.name = f"{preset_name}-{source}-seed{seed}"
    return cfg.validate()


def variant_config(cfg, switches: dict):
    out = copy.deepcopy(cfg)
    for key, value in switches.items():
        setattr(out.model, key, value)
    return out.validate()
