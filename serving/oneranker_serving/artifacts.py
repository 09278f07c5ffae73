"""A rendered model version's artifacts -> the objects that serve it (no Triton, no torch).

    <version>/artifacts/export_info.json               checkpoint hash, dims, serve limits
    <version>/artifacts/generation_tables.safetensors  item tables, decoder tables, trie
    <version>/artifacts/{generator,ranker}.{onnx,pt2}  the graphs of the chosen engine

`load_validator` is what a model that only validates/tokenizes needs (preprocess);
`load_selector` adds the generation tables (beam search); `load_recommender` adds an engine
runner; `load_system` picks OneRanker ("unified") or the cascade baseline it replaces.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import ServeConfig
from .recommender import CascadeRunner, GraphRecommender, Recommender, RequestValidator
from .runners import make_runner
from .tables import GenerationTables, load_generation_tables

SYSTEMS = ("unified", "cascade")
CASCADE_HALVES = ("generator", "ranker")


class ArtifactMismatch(RuntimeError):
    """The artifacts belong to another checkpoint or semantic-ID version than the config says."""


def read_export_info(artifact_dir: Path, expected_checkpoint: str | None = None) -> dict:
    info = json.loads((Path(artifact_dir) / "export_info.json").read_text())
    if expected_checkpoint and info["checkpoint_sha256"] != expected_checkpoint:
        raise ArtifactMismatch(
            f"{artifact_dir}: artifacts belong to checkpoint {info['checkpoint_sha256'][:12]}, the model "
            f"config expects {expected_checkpoint[:12]}; re-run `oneranker build`"
        )
    return info


def load_selector(
    artifact_dir: Path, expected_checkpoint: str | None = None
) -> tuple[RequestValidator, GenerationTables]:
    """Validator (item tables, limits) and generation tables of one export."""
    artifact_dir = Path(artifact_dir)
    info = read_export_info(artifact_dir, expected_checkpoint)
    gen, items = load_generation_tables(
        artifact_dir / "generation_tables.safetensors", info["num_interest_heads"], info["num_value_heads"]
    )
    serve = ServeConfig.from_dict(info["serve"])
    validator = RequestValidator(items, serve, info["feature_cardinality"], info["dims"]["F"], info.get("oov_code"))
    return validator, gen


def load_validator(artifact_dir: Path, expected_checkpoint: str | None = None) -> RequestValidator:
    return load_selector(artifact_dir, expected_checkpoint)[0]


def load_recommender(
    artifact_dir: Path,
    engine: str,
    threads: int = 2,
    expected_checkpoint: str | None = None,
    runner=None,
    bind_kv: bool = True,
    device: str = "cpu",
    search: str = "numpy",
) -> Recommender:
    """search "graph": GraphRecommender over generation/ranking graphs (beam search inside);
    "numpy": Recommender over generator/ranker graphs with the numpy beam search between them."""
    validator, gen = load_selector(artifact_dir, expected_checkpoint)
    runner = runner or make_runner(engine, artifact_dir, threads=threads, bind_kv=bind_kv, device=device, search=search)
    if search == "graph":
        return GraphRecommender(runner, validator)
    return Recommender.from_validator(runner, validator, gen)


def load_cascade_recommender(
    artifact_dir: Path, engine: str, threads: int = 2, expected_checkpoints: str | None = None, device: str = "cpu"
) -> Recommender:
    """The served cascade baseline: artifact_dir/generator and artifact_dir/ranker are the exports
    of the two cascade runs. Candidates come from the generator export's decoder state and tables,
    K/V and scores from the ranker export (which encodes the history again). `expected_checkpoints`
    is "GENERATOR_SHA,RANKER_SHA" (the rendered config's checkpoint_sha256)."""
    artifact_dir = Path(artifact_dir)
    expected = expected_checkpoints.split(",") if expected_checkpoints else [None, None]
    if len(expected) != 2:
        raise ArtifactMismatch(f"the cascade expects two checkpoints (generator,ranker), got {expected_checkpoints!r}")
    gen_dir, rank_dir = (artifact_dir / half for half in CASCADE_HALVES)
    gen_info = read_export_info(gen_dir, expected[0])
    rank_info = read_export_info(rank_dir, expected[1])
    if gen_info["sid_version"] != rank_info["sid_version"]:
        raise ArtifactMismatch(
            f"cascade halves disagree on semantic IDs: {gen_info['sid_version']} != {rank_info['sid_version']}"
        )
    runner = CascadeRunner(
        make_runner(engine, gen_dir, threads=threads, bind_kv=False, device=device),
        make_runner(engine, rank_dir, threads=threads, bind_kv=True, device=device),
    )
    return load_recommender(gen_dir, engine, runner=runner)


def load_system(params: dict, artifacts: Path, device: str = "cpu") -> Recommender:
    """The Recommender a fused-style model serves: `system` unified (OneRanker) or cascade;
    `beam_search` graph (in the generation graph) or numpy (the baseline between two graphs)."""
    system = params.get("system", "unified")
    threads = int(params["intra_op_threads"])
    if system == "cascade":
        return load_cascade_recommender(artifacts, params["engine"], threads, params["checkpoint_sha256"], device)
    if system != "unified":
        raise ValueError(f"unknown system {system!r}: one of {SYSTEMS}")
    return load_recommender(
        artifacts,
        engine=params["engine"],
        threads=threads,
        expected_checkpoint=params["checkpoint_sha256"],
        device=device,
        search=params.get("beam_search", "numpy"),
    )
