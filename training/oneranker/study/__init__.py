"""The evaluation study: does OneRanker beat the systems it replaces, and does each part matter?

Resumable, one unit of work at a time: a unit is one (source, row-run, seed); it trains its run(s)
under the declared stopping rule and writes the per-user metrics of its rows to one compressed
file; the report is rebuilt from whatever files exist and lists the missing ones.

    python -m oneranker.study protocol --write          # fix the protocol (before any run)
    python -m oneranker.study budget --write            # measured step times -> plan, cut
    python -m oneranker.study run --source synthetic --run full --seed 3
    python -m oneranker.study run --missing --max-minutes 140
    python -m oneranker.study report                    # report.md, plots, summary.json
    python -m oneranker.study --smoke                   # CI: all of it at tiny size, temp folder

Units (`rows.UNITS`) and the rows they fill:

  unit               trains                                              rows (scored by)
  full               OneRanker                                           full (Step-3 ranking)
  wo_dc              use_dc_loss=False                                   wo_dc
  wo_h2kv            use_h2_in_kv=False                                  wo_h2kv
  cascade            generator use_ranker=False + ranker                 s2 (Step-2 generation), s3_only
                     use_generation=False (`oneranker.cascade`)          (Step-3), cascade (beams re-scored)
  s2_wo_target       use_ranker=False, use_fake_items=False (= GPR MTP)  s2_wo_target (generation)
  s2_wo_target_mda   ... + use_task_decoupling=False                     s2_wo_target_mda
  s2_wo_capri        use_ranker=False, cross_attention_first=False       s2_wo_capri
  s2_wo_hmask        use_ranker=False, use_hetero_mask=False             s2_wo_hmask
  hstu               `baselines.hstu_study` (HSTU next-item, item ids)   hstu (next-item logits)
  popularity         nothing (no seed)                                   popularity (the floor)

Metrics (per test user, so that intervals can resample users): the paper protocol (the target
among data.num_eval_candidates = 30): HR/NDCG@{1,3,5,10}, vNDCG@K graded by ground-truth eCPM,
GAUC, pooled AUC, eCPM/eGMV@5 (ground truth), rGMV@5 (real prices); the full catalogue (beam
search over every ad, or HSTU's top logits): generation recall/NDCG@{10,50}, the final slate@10
(HR, eCPM/eGMV from the ground truth, realised GMV); distribution consistency (Fig. 3).

Statistics: seeds vary the model initialisation, batch order and semantic-ID fit; the data seed
is fixed, so every seed evaluates the same test users and candidates. Every interval carries
training variance: `stats.seed_user_interval` (t over seed means in quadrature with the user
bootstrap); differences are paired per seed and user. On synthetic the power of full - cascade
slate eGMV@10 is reported against the declared target.

Modules: `rows` (units, rows, paper numbers, per-source configs), `protocol` (the fixed protocol,
its hash and check), `budget` (measured plan), `units` (train and score one unit), `runfiles`
(the run-file format), `runs` (one unit / every missing unit, the one-shot form), `collect` (run
files -> per-source data), `stats`, `catalogue`, `aggregate` (intervals, orderings, lifts, power),
`plots`, `report` (report.md, `build_report`), `summary` (summary.json), `cli`.
"""

from .aggregate import summarize
from .build import build_report
from .catalogue import GEN_KS, SLATE_K, catalogue_metrics, full_catalogue, popularity_catalogue
from .cli import main, parse_args
from .collect import SourceData, collect
from .plots import plot_ablation, plot_curves, plot_dc, plot_lift
from .protocol import StudySpec, build_protocol, check_protocol, protocol_hash, write_protocol
from .report import write_report
from .rows import (
    PAPER,
    ROW,
    ROWS,
    RUNS,
    SYSTEM_ROWS,
    TABLE2,
    TABLE3,
    UNITS,
    Row,
    Unit,
    paper_orderings,
    source_config,
    variant_config,
)
from .runs import Progress, run_missing, run_study, run_unit
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
from .summary import ANSWER_METRICS, runs_summary, study_summary, write_summary

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
    "SourceData",
    "StudySpec",
    "UNITS",
    "Unit",
    "auc_per_user",
    "bootstrap_ci",
    "build_protocol",
    "build_report",
    "check_protocol",
    "collect",
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
    "protocol_hash",
    "protocol_metrics",
    "rank_agreement",
    "run_missing",
    "run_study",
    "run_unit",
    "runs_summary",
    "seed_user_interval",
    "source_config",
    "study_summary",
    "summarize",
    "t_quantile",
    "variant_config",
    "verdict",
    "write_protocol",
    "write_report",
    "write_summary",
]
