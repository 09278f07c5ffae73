"""Reference inference in pure PyTorch: the oracle the served system must match.

`load_reference(run_dir)` -> a `oneranker_serving.Recommender` whose runner calls the PyTorch
module directly (`ModuleRunner`, eager, no export): recommend(request) -> top-k items with value
scores. The served engines run the exported graphs of the same module through the same
Recommender, so any difference is the export's or the engine's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from oneranker_serving.decoders import decoder_tables
from oneranker_serving.recommender import Recommender
from oneranker_serving.tables import ITEM_TABLE_FIELDS, GenerationTables, ItemTables

from .checkpoint import load_run
from .pipeline import item_tables


class ModuleRunner:
    """EngineRunner over the PyTorch module; the KV stays a torch tensor between the stages."""

    def __init__(self, model, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.device = device

    @torch.no_grad()
    def generate(self, inputs):
        t = {k: torch.from_numpy(np.asarray(v)).to(self.device) for k, v in inputs.items()}
        enc = self.model.encode_user(t["user_features"], t["hist_sids"], t["hist_actions"], t["hist_dt"], t["hist_len"])
        return enc.decoder_state.float().cpu().numpy(), enc.kv

    @torch.no_grad()
    def rank(self, kv, hist_len, cand_sids, cand_attrs, cand_bid):
        dev = self.device
        kv = torch.from_numpy(kv) if isinstance(kv, np.ndarray) else kv
        kv = kv.to(dev)
        hist_len = torch.from_numpy(np.asarray(hist_len)).to(dev)
        kv_valid = self.model.kv_valid_from_lengths(hist_len, kv.shape[2])
        scores = self.model.rank(
            kv,
            kv_valid,
            torch.from_numpy(cand_sids).to(dev),
            torch.from_numpy(cand_attrs).to(dev),
            torch.from_numpy(cand_bid).to(dev),
        )
        return scores.float().cpu().numpy()


def generation_tables(model, sids) -> GenerationTables:
    return GenerationTables(
        decoder=decoder_tables(model.decoder.kind, model.decoder.numpy_arrays()),
        trie_children=[np.asarray(t) for t in sids.trie_children],
        num_interest_heads=model.cfg.num_interest_tokens,
        num_value_heads=model.cfg.num_value_tokens,
    )


ITEM_TABLES_FILE = "item_tables.safetensors"


def tables_from_run(run_dir: Path, sids=None) -> ItemTables:
    """Item tables stored with the run (catalogue attributes travel with the checkpoint)."""
    return ItemTables(**load_file(str(Path(run_dir) / ITEM_TABLES_FILE)))


def save_item_tables(run_dir: Path, prep) -> None:
    t = item_tables(prep.dataset, prep.sids)
    save_file(
        {k: np.ascontiguousarray(getattr(t, k)) for k in ITEM_TABLE_FIELDS}, str(Path(run_dir) / ITEM_TABLES_FILE)
    )


def build_recommender(model, sids, tables, cfg, runner=None) -> Recommender:
    return Recommender(
        runner or ModuleRunner(model),
        tables,
        generation_tables(model, sids),
        cfg.serve,
        feature_cardinality=model.feature_cardinality,
        num_user_features=model.num_prefix,
    )


def load_reference(run_dir: Path) -> Recommender:
    cfg, model, sids, _ = load_run(run_dir)
    return build_recommender(model, sids, tables_from_run(run_dir), cfg)
