"""Render a complete Triton model repository from `model_repository/` templates.

    model_repository/<model>/config.pbtxt.tmpl + 1/model.py   (templates and Python glue, in git)
      + contract (tensor blocks) + RenderSettings (batching, instances, threads)
      + export dir (ONNX graphs, generation tables, export_info.json)
      -> OUT/<engine>/<model>/config.pbtxt, 1/model.py, 1/artifacts/...   (git-ignored)
Rendering fails on a template variable that is missing or left over.
"""

from __future__ import annotations

import re
import shutil
import string
from dataclasses import dataclass
from pathlib import Path

from oneranker_client import contract

TEMPLATES = Path(__file__).resolve().parents[2] / "model_repository"
LEFTOVER = re.compile(r"\$\{[^}]*\}")


class RenderError(ValueError):
    pass


@dataclass
class RenderSettings:
    """Serving knobs for a 2-core CPU host by default (see README: "Batching and threads")."""

    max_batch_size: int = 8
    max_queue_delay_us: int = 500  # wait up to 0.5 ms to gather a batch: cheap next to a ~ms request
    max_queue_size: int = 64  # beyond this Triton answers UNAVAILABLE at once (overload shedding)
    queue_timeout_us: int = 2_000_000  # a request queued longer than 2 s is rejected, not served late
    preprocess_instances: int = 1  # tokenization is light: one instance
    recommender_instances: int = 1  # one instance owning both cores through intra-op threads
    intra_op_threads: int = 2  # ONNX Runtime / torch threads inside the recommender
    instance_kind: str = "KIND_CPU"


def tensor_block(section: str, specs, dims: contract.ContractDims, ragged: bool) -> str:
    """`input [...]` / `output [...]` block generated from the contract."""
    entries = []
    for spec in specs:
        t = spec.resolve(dims)
        lines = [f'    name: "{t.name}"', f"    data_type: {t.dtype}",
                 "    dims: [ " + ", ".join(str(d) for d in t.dims) + " ]"]
        if t.reshape is not None:
            lines.append("    reshape: { shape: [ " + ", ".join(str(d) for d in t.reshape) + " ] }")
        if section == "input" and t.optional:
            lines.append("    optional: true")
        if section == "input" and ragged and -1 in t.dims:
            lines.append("    allow_ragged_batch: true")
        entries.append("  {\n" + "\n".join(lines) + "\n  }")
    return f"{section} [\n" + ",\n".join(entries) + "\n]"


def ensemble_steps(steps: list[tuple[str, contract.ModelSpec, dict, dict]]) -> str:
    """steps: (model name, spec, input_map {model input: ensemble tensor}, output_map)."""
    blocks = []
    for model_name, _spec, in_map, out_map in steps:
        lines = [f'    model_name: "{model_name}"', "    model_version: -1"]
        lines += [f'    input_map {{ key: "{k}" value: "{v}" }}' for k, v in in_map.items()]
        lines += [f'    output_map {{ key: "{k}" value: "{v}" }}' for k, v in out_map.items()]
        blocks.append("  step [\n   {\n" + "\n".join(lines) + "\n   }\n  ]")
    return "\n".join(blocks)


def fill(template_path: Path, values: dict) -> str:
    text = template_path.read_text()
    used = set(re.findall(r"\$\{([^}]*)\}", text))
    unused = set(values) - used
    if unused:
        raise RenderError(f"{template_path}: values given but not used by the template: {sorted(unused)}")
    try:
        out = string.Template(text).substitute(values)
    except KeyError as err:
        raise RenderError(f"{template_path}: no value for template variable {err}") from err
    left = LEFTOVER.findall(out)
    if left:
        raise RenderError(f"{template_path}: leftover template variables {left}")
    return out


def _public_steps() -> list:
    internal = {t.name: f"_{t.name}" for t in contract.PREPROCESS.outputs}
    return [
        (contract.PREPROCESS_MODEL, contract.PREPROCESS, {t.name: t.name for t in contract.PUBLIC.inputs}, internal),
        (contract.FUSED_MODEL, contract.FUSED, internal, {t.name: t.name for t in contract.PUBLIC.outputs}),
    ]


def render_repository(export_dir: Path, out_dir: Path, engine: str, dims: contract.ContractDims,
                      checkpoint_sha256: str, settings: RenderSettings | None = None,
                      run_dir: Path | None = None) -> Path:
    """Write OUT/<model>/... for one engine; returns OUT."""
    s = settings or RenderSettings()
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    common = {"max_batch_size": s.max_batch_size}
    queue = {"max_queue_delay_us": s.max_queue_delay_us, "max_queue_size": s.max_queue_size,
             "queue_timeout_us": s.queue_timeout_us}

    def write(model: str, values: dict, artifacts: bool) -> None:
        folder = out_dir / model
        (folder / "1").mkdir(parents=True, exist_ok=True)
        (folder / "config.pbtxt").write_text(fill(TEMPLATES / model / "config.pbtxt.tmpl", values))
        code = TEMPLATES / model / "1" / "model.py"
        if code.exists():
            shutil.copy2(code, folder / "1" / "model.py")
        if artifacts:
            target = folder / "1" / "artifacts"
            shutil.copytree(export_dir, target)
            if engine == "torch" and run_dir is not None:
                shutil.copytree(run_dir, target / "run", ignore=shutil.ignore_patterns("train_state.*", "*.json.tmp"))

    write(contract.PUBLIC_MODEL, {
        "name": contract.PUBLIC_MODEL, **common,
        "inputs": tensor_block("input", contract.PUBLIC.inputs, dims, ragged=False),
        "outputs": tensor_block("output", contract.PUBLIC.outputs, dims, ragged=False),
        "steps": ensemble_steps(_public_steps()),
    }, artifacts=False)
    write(contract.PREPROCESS_MODEL, {
        "name": contract.PREPROCESS_MODEL, **common, **queue, "instance_count": s.preprocess_instances,
        "inputs": tensor_block("input", contract.PREPROCESS.inputs, dims, ragged=True),
        "outputs": tensor_block("output", contract.PREPROCESS.outputs, dims, ragged=False),
        "checkpoint_sha256": checkpoint_sha256,
    }, artifacts=True)
    write(contract.FUSED_MODEL, {
        "name": contract.FUSED_MODEL, **common, **queue, "instance_count": s.recommender_instances,
        "instance_kind": s.instance_kind, "engine": engine, "intra_op_threads": s.intra_op_threads,
        "inputs": tensor_block("input", contract.FUSED.inputs, dims, ragged=True),
        "outputs": tensor_block("output", contract.FUSED.outputs, dims, ragged=False),
        "checkpoint_sha256": checkpoint_sha256,
    }, artifacts=True)
    return out_dir
