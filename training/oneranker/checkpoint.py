"""Checkpoints: safetensors + JSON only (no pickle), versioned with their item tables.

Layout of a run directory:
    config.json            ExperimentConfig
    model.safetensors      model state (parameters and buffers)
    sids/                  SemanticIds (codebooks, codes, trie, centroids) + its version
    train_state.*          optimizer moments and step, for --resume
    manifest.json          {"checkpoint_sha256", "sid_version", "step", ...}: what export and
                           serving check so that graphs and item tables load together or not at all
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import ExperimentConfig
from .files import file_sha256
from .pipeline import build_model
from .tokenizer import SemanticIds


def save_checkpoint(
    run_dir: Path, model, cfg: ExperimentConfig, sids, step: int, optimizer=None, extra: dict | None = None
) -> dict:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(cfg.to_json())
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(run_dir / "model.safetensors"))
    sids.save(run_dir / "sids")
    if optimizer is not None:
        tensors, meta = {}, {"step": step, "param_groups": [], "state_keys": {}}
        opt_state = optimizer.state_dict()
        for pid, st in opt_state["state"].items():
            for key, value in st.items():
                if torch.is_tensor(value):
                    tensors[f"{pid}.{key}"] = value.contiguous()
                else:
                    meta["state_keys"][f"{pid}.{key}"] = value
        meta["param_groups"] = opt_state["param_groups"]
        save_file(tensors, str(run_dir / "train_state.safetensors"))
        (run_dir / "train_state.json").write_text(json.dumps(meta))
    manifest = {
        "checkpoint_sha256": file_sha256(run_dir / "model.safetensors"),
        "sid_version": sids.version,
        "step": step,
        "config_name": cfg.name,
        **(extra or {}),
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


# Decoder weights of runs trained before the decoder became a submodule (`model.decoder`): they
# were top-level parameters of the factorized decoder (a config without `model.decoder` loads as
# "factorized", so the names are all that differ).
_DECODER_KEYS = ("level_query", "code_emb", "code_bias", "transition", "level_code_features", "code_valid")


def upgrade_state_dict(state: dict) -> dict:
    """A checkpoint's tensors under today's names (see _DECODER_KEYS); others unchanged."""
    return {(f"decoder.{k}" if k in _DECODER_KEYS else k): v for k, v in state.items()}


def load_run(run_dir: Path):
    """-> (cfg, model in eval mode, sids, manifest). Refuses mismatched item tables."""

    run_dir = Path(run_dir)
    if not (run_dir / "manifest.json").exists():
        raise FileNotFoundError(f"{run_dir} is not a training run (no manifest.json); run `oneranker train` first")
    cfg = ExperimentConfig.load(run_dir / "config.json")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    sids = SemanticIds.load(run_dir / "sids")
    if sids.version != manifest["sid_version"]:
        raise ValueError(f"{run_dir}/sids version {sids.version} != manifest {manifest['sid_version']}")
    state = upgrade_state_dict(load_file(str(run_dir / "model.safetensors")))
    model = build_model(cfg, sids, manifest["num_advertisers"], manifest["num_categories"])
    model.load_state_dict(state)
    model.eval()
    return cfg, model, sids, manifest


def load_optimizer_state(run_dir: Path, optimizer) -> int:
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "train_state.json").read_text())
    tensors = load_file(str(run_dir / "train_state.safetensors"))
    state: dict = {}
    for key, value in list(tensors.items()) + list(meta["state_keys"].items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["step"])
