"""Where a `tensorrt` repository keeps its TensorRT plans: the one definition shared by the build
that writes them (`oneranker_build.tensorrt_build.build_plans`) and the runner that reads them
(`runners.tensorrt.TrtRunner`), so the two cannot drift apart.

    <repository>/<model>/<version>/model.plan   model in PLAN_MODELS (generation, ranking)

This is Triton's own layout for a `tensorrt_plan` model (its default file name), so the same
files are served natively by Triton and loaded in process. A rendered repository holds version 1;
promotion (`oneranker_deploy promote`) renumbers whole version folders, plans included.
"""

from __future__ import annotations

from pathlib import Path

from oneranker_client import contract

# The graphs compiled to plans: the in-graph beam search pair, the `graphs` topology's models.
PLAN_MODELS = (contract.GENERATION_MODEL, contract.RANKING_MODEL)
PLAN_FILE = "model.plan"  # Triton's default_model_filename for platform tensorrt_plan
RENDERED_VERSION = 1  # the version folder render_repository writes


def plan_path(repository: Path, model: str, version: int | str = RENDERED_VERSION) -> Path:
    """<repository>/<model>/<version>/model.plan."""
    if model not in PLAN_MODELS:
        raise ValueError(f"{model!r} is not compiled to a TensorRT plan: one of {PLAN_MODELS}")
    return Path(repository) / model / str(version) / PLAN_FILE


def plans_beside(artifact_dir: Path) -> dict[str, Path]:
    """The plans of the repository version an artifact folder was rendered into:
    <repository>/<any model>/<version>/artifacts -> {model: <repository>/<model>/<version>/model.plan}.
    How an in-process runner, given a model's artifacts (as every runner is), finds the plans
    the build compiled next to them."""
    artifact_dir = Path(artifact_dir).resolve()
    version_dir = artifact_dir.parent
    if artifact_dir.name != "artifacts" or not version_dir.name.isdigit():
        raise ValueError(
            f"{artifact_dir} is not a rendered model's artifact folder (<repository>/<model>/<version>/artifacts): "
            "the TensorRT runner finds its plans in the repository it was rendered into"
        )
    repository = version_dir.parent.parent
    return {model: plan_path(repository, model, version_dir.name) for model in PLAN_MODELS}
