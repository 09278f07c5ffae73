"""PyTorch runner over the exported programs `generator.pt2` and `ranker.pt2` (`torch.export`),
CPU or CUDA. Serving never imports the training code: the programs carry the weights.

    generator.pt2: user_features [B,F], hist_sids [B,L,D], hist_actions [B,L], hist_dt [B,L],
                   hist_len [B] -> level_logits [B,H,D,K], kv [B,R2,S,DM]
    ranker.pt2:    kv, hist_len [B], cand_sids [B,n,D], cand_attrs [B,n,2], cand_bid [B,n] -> scores [B,n]

The KV stays a torch tensor on the runner's device between the two calls. This module is the
only place in `oneranker_serving` that imports torch; it also holds the DLPack helpers the Triton
tensor codec uses for the torch engine's zero-copy KV transport. Importing it without torch
works (the Triton image for ONNX Runtime / TensorRT has none); building a runner then fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

try:
    import torch
    from torch.export.passes import move_to_device_pass
    from torch.utils import dlpack as torch_dlpack
except ImportError:  # the ONNX Runtime / TensorRT images carry no torch
    torch = None

PROGRAM_FILES = {"generator": "generator.pt2", "ranker": "ranker.pt2"}


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


class TorchRunner:
    """EngineRunner over the exported programs; `threads` sets torch's intra-op threads."""

    def __init__(self, export_dir: Path, device: str = "cpu", threads: int = 2):
        require_torch("the torch engine")
        torch.set_num_threads(threads)
        export_dir = Path(export_dir)
        missing = [name for name in PROGRAM_FILES.values() if not (export_dir / name).exists()]
        if missing:
            raise FileNotFoundError(f"{export_dir}: missing exported programs {missing}; re-run `oneranker build`")
        self.device = device
        self.generator = load_program(export_dir / PROGRAM_FILES["generator"], device)
        self.ranker = load_program(export_dir / PROGRAM_FILES["ranker"], device)

    def _tensor(self, value):
        value = value if is_torch_tensor(value) else torch.from_numpy(np.ascontiguousarray(value))
        return value.to(self.device)

    def generate(self, inputs):
        names = ("user_features", "hist_sids", "hist_actions", "hist_dt", "hist_len")
        with torch.inference_mode():
            level_logits, kv = self.generator(*(self._tensor(inputs[k]) for k in names))
        return level_logits.float().cpu().numpy(), kv

    def rank(self, kv, hist_len, cand_sids, cand_attrs, cand_bid):
        kv = getattr(kv, "value", kv)
        hist_len = np.asarray(hist_len, np.int64).reshape(-1) if not is_torch_tensor(hist_len) else hist_len
        with torch.inference_mode():
            scores = self.ranker(self._tensor(kv), self._tensor(hist_len), self._tensor(cand_sids),
                                 self._tensor(cand_attrs), self._tensor(cand_bid))
        return scores.float().cpu().numpy()
