"""PyTorch runners over exported programs (`torch.export`, `<graph>.pt2`), CPU or CUDA. Serving
never imports the training code: the programs carry the weights and tables.

    TorchGraphRunner  generation.pt2 then ranking.pt2 (beam search and top-k inside the graphs;
                      tensor names in contract.GENERATION / contract.RANKING)
    TorchRunner       generator.pt2 (decoder state + kv) then ranker.pt2 (scores): the numpy beam
                      search baseline and the cascade

The KV stays a torch tensor on the runner's device between the two calls. This module is the
only place in `oneranker_serving` that imports torch; it also holds the DLPack helpers the Triton
tensor codec uses for the torch engine's zero-copy KV transport. Importing it without torch
works (the Triton image for ONNX Runtime / TensorRT has none); building a runner then fails.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

# PyTorch's CPU wheels run intra-op parallelism on GNU OpenMP, whose threads spin-wait at every
# barrier by default. With more than one intra-op thread per stub (`--intra-op-threads 2`) on a
# host whose cores are shared (Triton, the other stubs, the clients, other jobs), the spinning
# threads starve the one that holds the work: a 1-thread call of ~5 ms took ~0.8 s at the median
# with 2 threads, 1.4 s at p99 (perf/results/topology_torch/README.md). PASSIVE makes them sleep.
# libgomp reads it once, when torch loads it, so it is set before the import (the Triton stub's
# first torch import is this module); an explicit OMP_WAIT_POLICY in the environment wins.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    import torch
    from torch.export.passes import move_to_device_pass
    from torch.utils import dlpack as torch_dlpack
except ImportError:  # the ONNX Runtime / TensorRT images carry no torch
    torch = None

PROGRAM_FILES = {"generator": "generator.pt2", "ranker": "ranker.pt2"}
GRAPH_PROGRAM_FILES = {"generation": "generation.pt2", "ranking": "ranking.pt2"}
HISTORY_INPUTS = ("user_features", "hist_sids", "hist_actions", "hist_dt", "hist_len")


def require_torch(what: str) -> None:
    if torch is None:
        raise RuntimeError(f"{what} needs PyTorch, which is not installed in this environment")


def is_torch_tensor(value) -> bool:
    return torch is not None and isinstance(value, torch.Tensor)


def from_dlpack(capsule_owner):
    """A DLPack-capable object (pb_utils.Tensor.to_dlpack() capsule) -> torch tensor, no copy."""
    require_torch("the dlpack KV transport")
    return torch_dlpack.from_dlpack(capsule_owner)


def to_dlpack(tensor):
    """torch tensor -> DLPack capsule (contiguous first), no copy when already contiguous."""
    return torch_dlpack.to_dlpack(tensor.contiguous())


def cat(parts: list, dim: int):
    return torch.cat(parts, dim=dim)


def load_program(path: Path, device: str):
    """One exported program, moved to `device`, as a callable module."""
    program = torch.export.load(str(path))
    if device != "cpu":
        program = move_to_device_pass(program, device)
    return program.module()


def load_programs(export_dir: Path, files: dict, device: str, threads: int) -> dict:
    require_torch("the torch engine")
    torch.set_num_threads(threads)
    export_dir = Path(export_dir)
    missing = [name for name in files.values() if not (export_dir / name).exists()]
    if missing:
        raise FileNotFoundError(f"{export_dir}: missing exported programs {missing}; re-run `oneranker build`")
    return {key: load_program(export_dir / name, device) for key, name in files.items()}


class _OnDevice:
    device = "cpu"

    def _tensor(self, value):
        value = value if is_torch_tensor(value) else torch.from_numpy(np.ascontiguousarray(value))
        return value.to(self.device)


class TorchGraphRunner(_OnDevice):
    """generation.pt2 -> ranking.pt2; the KV stays a torch tensor on the device between them."""

    def __init__(self, export_dir: Path, device: str = "cpu", threads: int = 2):
        programs = load_programs(export_dir, GRAPH_PROGRAM_FILES, device, threads)
        self.device, self.generation, self.ranking = device, programs["generation"], programs["ranking"]

    def generate(self, inputs: dict, knobs: dict) -> tuple[dict, object]:
        names = (*HISTORY_INPUTS, "beam_width", "num_candidates", "exclude_idx")
        feeds = {**inputs, **knobs}
        with torch.inference_mode():
            cand_idx, cand_logp, cand_stream, kv = self.generation(*(self._tensor(feeds[k]) for k in names))
        # candidates stay on the device too: the ranking graph takes them as they are
        return {"cand_idx": cand_idx, "cand_logp": cand_logp, "cand_stream": cand_stream}, kv

    def rank(self, kv, hist_len, cands: dict, top_k) -> dict:
        kv = getattr(kv, "value", kv)
        hist_len = hist_len if is_torch_tensor(hist_len) else np.asarray(hist_len, np.int64).reshape(-1)
        with torch.inference_mode():
            outs = self.ranking(
                self._tensor(kv),
                self._tensor(hist_len),
                self._tensor(cands["cand_idx"]),
                self._tensor(cands["cand_logp"]),
                self._tensor(cands["cand_stream"]),
                self._tensor(np.asarray(top_k, np.int64)),
            )
        names = ("rec_item_ids", "rec_scores", "rec_gen_logp", "rec_source_head", "rec_count")
        rec = {name: value.cpu().numpy() for name, value in zip(names, outs)}
        idx = cands["cand_idx"]  # torch on the device (in process) or host numpy (from another model)
        live = idx >= 0 if is_torch_tensor(idx) else np.asarray(idx) >= 0
        rec["num_generated"] = live.sum(-1).cpu().numpy() if is_torch_tensor(live) else live.sum(-1)
        return rec


class TorchRunner(_OnDevice):
    """generator.pt2 -> ranker.pt2 (decoder state; numpy beam search in between)."""

    def __init__(self, export_dir: Path, device: str = "cpu", threads: int = 2):
        programs = load_programs(export_dir, PROGRAM_FILES, device, threads)
        self.device, self.generator, self.ranker = device, programs["generator"], programs["ranker"]

    def generate(self, inputs):
        with torch.inference_mode():
            decoder_state, kv = self.generator(*(self._tensor(inputs[k]) for k in HISTORY_INPUTS))
        return decoder_state.float().cpu().numpy(), kv

    def rank(self, kv, hist_len, cand_sids, cand_attrs, cand_bid):
        kv = getattr(kv, "value", kv)
        hist_len = np.asarray(hist_len, np.int64).reshape(-1) if not is_torch_tensor(hist_len) else hist_len
        with torch.inference_mode():
            scores = self.ranker(
                self._tensor(kv),
                self._tensor(hist_len),
                self._tensor(cand_sids),
                self._tensor(cand_attrs),
                self._tensor(cand_bid),
            )
        return scores.float().cpu().numpy()
