"""The cascade baseline: a generator and a separately trained ranker (what OneRanker replaces).

The paper's online A/B (arXiv 2603.02999, §1.14 of paper-notes) compares OneRanker against a
"generation model + independent ranking model" cascade. Here both halves are OneRanker networks
with one side switched off, trained alone on the same data, splits, semantic IDs, steps and width:

* generator: `model.use_ranker=False` (MTP loss only; no ranker, no BPR, no L_DC). Its beam
  search over the semantic-ID trie produces the candidates. (Same config as the paper's
  "OneRanker S2" ablation row.)
* ranker: `model.use_generation=False` (BPR loss only). It never sees the generator: its own
  G-Decoder re-encodes the history, and its Step-3 K/V hold only its own H1 (the Step-2 segment
  is masked out, `kv_valid` is False there). (Same config as the paper's "S3 only" row.)

Both runs are ordinary run directories (`run_dir/generator`, `run_dir/ranker`: config,
safetensors, semantic IDs, item tables, manifest), so each exports and serves on its own; the
serving side can render the cascade as a second ensemble from the two. `run_dir/cascade.json`
ties them together (same semantic-ID version, required).

`CascadeRecommender` is the in-process reference of the cascade: a `oneranker_serving` Recommender whose
runner takes the decoder state from the generator (candidates = its beam search) and the K/V and
scores from the ranker (which encodes the user a second time). The served cascade
(`oneranker_cascade`, rendered by `oneranker build --cascade-run`) runs the same
`oneranker_serving.recommender.CascadeRunner` over ONNX Runtime or PyTorch runners of the two exports.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from oneranker_serving.recommender import CascadeRunner, Recommender

from .checkpoint import load_run
from .config import ExperimentConfig
from .reference import ModuleRunner, generation_tables, tables_from_run

GENERATOR, RANKER = "generator", "ranker"


def generator_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The cascade generator: MTP only (no ranker, no BPR, no L_DC)."""
    out = copy.deepcopy(cfg)
    out.model.use_ranker = False
    out.model.use_generation = True
    out.name = f"{cfg.name}-cascade-generator"
    return out.validate()


def ranker_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The cascade ranker: BPR only; H2 never enters its K/V (it re-encodes the history)."""
    out = copy.deepcopy(cfg)
    out.model.use_generation = False
    out.model.use_ranker = True
    out.name = f"{cfg.name}-cascade-ranker"
    return out.validate()


@dataclass
class CascadeRun:
    run_dir: Path
    generator: dict  # train() result: {"model", "prep", "summary"}
    ranker: dict

    @property
    def generator_dir(self) -> Path:
        return self.run_dir / GENERATOR

    @property
    def ranker_dir(self) -> Path:
        return self.run_dir / RANKER

    def recommender(self) -> CascadeRecommender:
        prep = self.generator["prep"]
        return CascadeRecommender(
            self.generator["model"], self.ranker["model"], prep.sids, prep.tables, self.generator["prep"].cfg
        )


def train_cascade(cfg: ExperimentConfig, run_dir: Path, prep=None, progress: bool = True) -> CascadeRun:
    """Train the generator and the ranker separately (same data, splits, semantic IDs, steps,
    width and seed) into `run_dir/generator` and `run_dir/ranker`."""
    from .pipeline import prepare
    from .train import train

    run_dir = Path(run_dir)
    prep = prep or prepare(cfg)
    gen = train(generator_config(cfg), run_dir / GENERATOR, prep=prep, progress=progress)
    rank = train(ranker_config(cfg), run_dir / RANKER, prep=prep, progress=progress)
    (run_dir / "cascade.json").write_text(
        json.dumps(
            {
                "generator": GENERATOR,
                "ranker": RANKER,
                "sid_version": prep.sids.version,
                "generator_checkpoint_sha256": gen["summary"]["manifest"]["checkpoint_sha256"],
                "ranker_checkpoint_sha256": rank["summary"]["manifest"]["checkpoint_sha256"],
            },
            indent=2,
        )
    )
    return CascadeRun(run_dir, gen, rank)


class CascadeRecommender(Recommender):
    """Recommender over the cascade: candidates = the generator's beam search (same
    trie, streams and merge as OneRanker), scores = the independent ranker."""

    def __init__(self, generator, ranker, sids, tables, cfg: ExperimentConfig, device: str = "cpu"):
        if ranker.cfg.use_generation and ranker.cfg.use_h2_in_kv:
            raise ValueError("the cascade ranker must not read a generator's H2 (train it with use_generation=False)")
        runner = CascadeRunner(ModuleRunner(generator, device), ModuleRunner(ranker, device))
        super().__init__(
            runner,
            tables,
            generation_tables(generator, sids),
            cfg.serve,
            feature_cardinality=generator.feature_cardinality,
            num_user_features=generator.num_prefix,
        )
        self.generator, self.ranker = generator, ranker


def load_cascade(run_dir: Path, device: str = "cpu") -> CascadeRecommender:
    """CascadeRecommender from `run_dir/generator` + `run_dir/ranker` (semantic IDs must match)."""
    run_dir = Path(run_dir)
    gcfg, gen, gsids, gman = load_run(run_dir / GENERATOR)
    _, rank, _, rman = load_run(run_dir / RANKER)
    if gman["sid_version"] != rman["sid_version"]:
        raise ValueError(
            f"cascade halves disagree on semantic IDs: generator {gman['sid_version']} != ranker {rman['sid_version']}"
        )
    return CascadeRecommender(gen, rank, gsids, tables_from_run(run_dir / GENERATOR, gsids), gcfg, device)
