"""The evaluation study: does OneRanker beat the systems it replaces, and does each part matter?

One command trains every system and ablation on every source, evaluates them under one protocol
and writes `report.md`, PNG plots, `results.json` and `summary.json` (`study_summary`) into `--out`:

    python -m oneranker.study --preset tiny --seeds 0,1,2 --sources synthetic,movielens100k,tafeng \
        --out artifacts/study/tiny
    python -m oneranker.study --smoke --out artifacts/study/smoke      # CI: tiny, 1 seed, synthetic

Same data, splits, semantic IDs, steps, tokens and model width for every row of a source; the
rows differ only in `ModelConfig` switches:

  row                 switches                                             scored by
  full                (none)                                               Step-3 ranking
  wo_dc               use_dc_loss=False                                    Step-3 ranking
  wo_h2kv             use_h2_in_kv=False                                   Step-3 ranking
  s3_only             use_generation=False      (= the cascade's ranker)   Step-3 ranking
  s2                  use_ranker=False          (= the cascade's generator) Step-2 generation
  s2_wo_target        use_ranker=False, use_fake_items=False               Step-2 generation
  s2_wo_target_mda    ... + use_task_decoupling=False (= HSTU generator)   Step-2 generation
  s2_wo_capri         use_ranker=False, cross_attention_first=False        Step-2 generation
  s2_wo_hmask         use_ranker=False, use_hetero_mask=False              Step-2 generation
  cascade             generator (s2 run) + independent ranker (s3_only run), `oneranker.cascade`
  hstu                the s2_wo_target_mda run (closest to a plain HSTU MTP next-item generator)
  popularity          training-portion positive counts (the floor)

Identical configurations are trained once: `s2` IS the cascade generator run and `s3_only` IS the
cascade ranker run (same config and seed), `hstu` IS the `s2_wo_target_mda` run.

Metrics (per test user, so that bootstrap CIs are over users):
  * protocol [#21]: the target among n = data.num_eval_candidates (30) candidates; HR@{1,3,5,10},
    NDCG@{1,3,5,10} (binary), vNDCG@K graded by ground-truth expected eCPM (synthetic only);
    AUC of the target vs the n-1 others per user (GAUC = its mean) and pooled over all users.
  * value of the top-5 of the n candidates: expected eCPM / GMV from the ground truth (synthetic:
    eCPM@5, eGMV@5); realized GMV = real price of the target if it is in the top 5 (rGMV@5, where
    prices are real: Ta-Feng).
  * full catalogue: beam search (`selection.beam_search` + `merge_candidates`, serve.beam_width,
    max(serve.num_candidates, 50) kept) over every ad, nothing excluded; gen_R@K / gen_NDCG@K of the
    target in the generation order (K = 10, 50); the final slate = the top 10 of those candidates
    by the row's final scorer (its ranker, or generation for the S2 rows); slate_HR@10, and its
    expected eCPM / GMV from the ground truth (synthetic) or realized GMV (Ta-Feng).
  * distribution consistency (paper Fig. 3): ranks of the n candidates under Step-2 generation vs
    Step-3 ranking, |rank difference| (IQR, median) and top-K overlap, full vs w/o L_DC.

Statistics: seeds vary the model initialisation, batch order and semantic-ID fit
(train.seed = tokenizer.seed = seed); the data seed is fixed, so every seed evaluates the same
test users and candidates. A row's value = the mean over seeds; its 95% CI = percentile bootstrap
over test users (1000 resamples) of the per-user values averaged over seeds; an ordering (a > b)
is tested by the paired bootstrap of the per-user difference a - b.

Modules: `rows` (runs, rows, paper numbers, per-source configs), `stats` (per-user metrics,
bootstrap and seed-and-user intervals, verdicts), `catalogue` (full-catalogue generation and the
final slate), `runs` (training and scoring, `run_study`), `aggregate` (per-source summary: CIs,
orderings, lifts), `plots`, `report` (report.md), `summary` (summary.json, provenance), `cli`.
"""

from .aggregate import summarize
from .catalogue import GEN_KS, SLATE_K, catalogue_metrics, full_catalogue, popularity_catalogue
from .cli import main, parse_args
from .plots import plot_ablation, plot_curves, plot_dc, plot_lift
from .report import write_report
from .rows import (
    PAPER,
    ROW,
    ROWS,
    RUNS,
    SYSTEM_ROWS,
    TABLE2,
    TABLE3,
    Row,
    paper_orderings,
    source_config,
    variant_config,
)
from .runs import Progress, SourceResult, run_source, run_study
from .stats import (
    KS,
    N_BOOT,
    PROTOCOL_SLATE_K,
    auc_per_user,
    bootstrap_ci,
    candidate_ranks,
    iqr,
    iqr_diff_ci,
    paired_seed_user_interval,
    pooled_auc,
    protocol_metrics,
    rank_agreement,
    seed_user_interval,
    t_quantile,
    verdict,
)
from .summary import ANSWER_METRICS, study_summary, write_summary

__all__ = [
    "ANSWER_METRICS",
    "GEN_KS",
    "KS",
    "N_BOOT",
    "PAPER",
    "PROTOCOL_SLATE_K",
    "ROW",
    "ROWS",
    "RUNS",
    "SLATE_K",
    "SYSTEM_ROWS",
    "TABLE2",
    "TABLE3",
    "Progress",
    "Row",
    "SourceResult",
    "auc_per_user",
    "bootstrap_ci",
    "candidate_ranks",
    "catalogue_metrics",
    "full_catalogue",
    "iqr",
    "iqr_diff_ci",
    "main",
    "paired_seed_user_interval",
    "paper_orderings",
    "parse_args",
    "plot_ablation",
    "plot_curves",
    "plot_dc",
    "plot_lift",
    "pooled_auc",
    "popularity_catalogue",
    "protocol_metrics",
    "rank_agreement",
    "run_source",
    "run_study",
    "seed_user_interval",
    "source_config",
    "study_summary",
    "summarize",
    "t_quantile",
    "variant_config",
    "verdict",
    "write_report",
    "write_summary",
]
