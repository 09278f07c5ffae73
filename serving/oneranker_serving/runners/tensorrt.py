"""TensorRT 10 runner (written against the real API; runs where TensorRT is installed, i.e. the
NGC containers). The KV is one device buffer bound as the generator's output and the ranker's
input. Importing this module without TensorRT works; constructing a runner fails with the reason.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from .base import KVHandle, KVPool

try:
    import tensorrt as trt
    import torch
except ImportError:  # the CPU default and the Triton image without TensorRT
    trt = torch = None


class TrtRunner:
    """TensorRT 10 runner (written against the real API; runs where TensorRT is installed, i.e.
    NGC containers). KV is one device buffer bound as generator output and ranker input."""

    def __init__(self, plan_dir: Path, device: str = "cuda"):
        if trt is None:
            raise RuntimeError(
                "TensorRT is not installed here: run the tensorrt engine inside the NGC containers "
                "(docker-compose.yml, service triton) or use --engine onnxruntime / torch"
            )
        self.trt, self.torch = trt, torch
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        plan_dir = Path(plan_dir)
        self.engines = {
            name: runtime.deserialize_cuda_engine((plan_dir / f"{name}.plan").read_bytes())
            for name in ("generator", "ranker")
        }
        self.contexts = {name: engine.create_execution_context() for name, engine in self.engines.items()}
        self.stream = torch.cuda.Stream()
        self.device = device
        self.pool = KVPool(lambda shape: torch.empty(shape, dtype=torch.float32, device=device))
        self._lock = threading.Lock()

    def _run(self, name: str, inputs: dict, outputs: dict) -> None:
        ctx = self.contexts[name]
        for key, tensor in inputs.items():
            ctx.set_input_shape(key, tuple(tensor.shape))
            ctx.set_tensor_address(key, tensor.data_ptr())
        for key, tensor in outputs.items():
            ctx.set_tensor_address(key, tensor.data_ptr())
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT {name} execution failed")

    def generate(self, inputs):
        torch = self.torch
        dev = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in inputs.items()}
        b, length = inputs["hist_actions"].shape
        ctx = self.contexts["generator"]
        for key, tensor in dev.items():
            ctx.set_input_shape(key, tuple(tensor.shape))
        kv_shape = tuple(ctx.get_tensor_shape("kv"))
        logits = torch.empty(tuple(ctx.get_tensor_shape("level_logits")), dtype=torch.float32, device=self.device)
        kv = self.pool.acquire(kv_shape)
        with self._lock, torch.cuda.stream(self.stream):
            self._run("generator", dev, {"level_logits": logits, "kv": kv})
            self.stream.synchronize()
        return logits.cpu().numpy(), KVHandle(kv_shape, kv)

    def rank(self, kv: KVHandle, hist_len, cand_sids, cand_attrs, cand_bid):
        torch = self.torch
        feeds = {"kv": kv.value}
        for key, value in (
            ("hist_len", hist_len),
            ("cand_sids", cand_sids),
            ("cand_attrs", cand_attrs),
            ("cand_bid", cand_bid),
        ):
            feeds[key] = torch.from_numpy(np.ascontiguousarray(value)).to(self.device)
        scores = torch.empty(cand_bid.shape, dtype=torch.float32, device=self.device)
        with self._lock, torch.cuda.stream(self.stream):
            self._run("ranker", feeds, {"scores": scores})
            self.stream.synchronize()
        return scores.cpu().numpy()

    def release(self, kv: KVHandle) -> None:
        self.pool.release(kv.shape, kv.value)
