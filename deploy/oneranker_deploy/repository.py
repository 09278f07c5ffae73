"""Triton model repositories as the deploy tools see them: the one ``oneranker build`` renders, and a live one.

Torch-free (``oneranker.config``, the tensor contract and ``oneranker_build.render`` are imported
lazily, inside the functions that need them).

* Rendered: ``config_preset(name)`` -> :func:`contract_dims` -> :func:`render_default` (the
  repository ``oneranker build --engine ENGINE`` would write, configs only) ->
  :func:`rendered_instance_counts` (its instance groups read back; the shared-memory sizing of
  :mod:`oneranker_deploy.shm` starts from them).
* Live: a folder of model folders (one ``config.pbtxt`` each) holding numbered version folders;
  :func:`latest_version` is the newest release there, :func:`repository_instance_counts` what its
  configs ask for. Hidden folders (a name starting with ``.``) and non-numeric version folders
  are invisible to Triton and to these functions alike: :mod:`oneranker_deploy.rollout` relies on
  that to write a release under a hidden name and rename it into place.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily: `latest`/`promote`/`retire`/`load` start in ~0.1 s
    from oneranker.config import ExperimentConfig
    from oneranker_client.contract import ContractDims

__all__ = [
    "config_instance_count",
    "config_preset",
    "contract_dims",
    "latest_version",
    "render_default",
    "rendered_instance_counts",
    "repository_instance_counts",
]


def _models() -> dict:
    from oneranker_client.contract import MODELS

    return MODELS


def config_preset(name: str) -> ExperimentConfig:
    from oneranker.config import preset

    return preset(name)


def contract_dims(cfg: ExperimentConfig) -> ContractDims:
    """The contract's symbolic dims for a config (``extra['step2_tokens']`` = H2 length)."""
    from oneranker_client.contract import ContractDims

    return ContractDims(
        F=cfg.data.num_profile_features + cfg.data.num_context_features,
        D=cfg.tokenizer.sid_depth,
        K=cfg.tokenizer.max_codes,
        H=cfg.model.num_task_tokens,
        R2=2 * cfg.model.r_layers,
        DM=cfg.model.d_model,
        Z=cfg.decoder_state_width,
        extra={"step2_tokens": cfg.model.num_step2_tokens},
    )


def _model_dirs(root: Path) -> list[Path]:
    return sorted(
        p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "config.pbtxt").is_file()
    )


def _versions(model_dir: Path) -> list[int]:
    # Triton's rule: a version folder is named by a positive integer without a leading zero.
    return sorted(
        int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and not p.name.startswith("0")
    )


def latest_version(repository: str | os.PathLike) -> int:
    """Highest version folder of any model in the repository (0 if none or no repository)."""
    root = Path(repository)
    if not root.is_dir():
        return 0
    return max((v for m in _model_dirs(root) for v in _versions(m)), default=0)


def config_instance_count(config_text: str) -> int:
    """Instances a config.pbtxt asks for: 1 for an ensemble (it is counted once, for the tensors
    it hands between steps), the sum of its instance_group counts, 1 without instance_group
    (Triton's default on one GPU or on CPU)."""
    if re.search(r'platform\s*:\s*"ensemble"', config_text):
        return 1
    groups = re.search(r"instance_group\s*\[(.*?)\]", config_text, re.S)
    if not groups:
        return 1
    counts = [int(c) for c in re.findall(r"count\s*:\s*(\d+)", groups.group(1))]
    return sum(counts) if counts else 1


def repository_instance_counts(repository: str | os.PathLike) -> dict[str, int]:
    """Instance count of every contract model in a rendered repository (0 = not in it)."""
    root = Path(repository)
    counts = {name: 0 for name in _models()}
    for m in _model_dirs(root):
        if m.name in counts:
            counts[m.name] = config_instance_count((m / "config.pbtxt").read_text())
    return counts


def render_default(engine: str, out_dir: str | os.PathLike, settings=None) -> Path:
    """Render the repository `oneranker build --engine ENGINE` would (same templates, default
    settings and default topology) from an empty export folder: configs and Python code, no
    artifacts. For inspecting what a deployment serves without a trained run."""
    from oneranker_build import render

    export = Path(out_dir) / ".empty-export"
    export.mkdir(parents=True, exist_ok=True)
    return render.render_repository(
        export,
        Path(out_dir) / engine,
        engine,
        contract_dims(config_preset("tiny")),
        "0" * 64,
        settings=settings,
        samples=False,
    )


def rendered_instance_counts(engine: str = "onnxruntime", settings=None) -> dict[str, int]:
    """Instance counts of the repository `oneranker build` renders for `engine` (templates
    rendered into a temporary folder, instance groups read back). docker-compose.yml declares
    the same in its labels."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="oneranker-render-") as tmp:
        return repository_instance_counts(render_default(engine, tmp, settings))
