"""ONNX Runtime runner (CPU default): generator.onnx then ranker.onnx over one pooled KV.

KV buffers are OrtValues from a pool keyed by (batch, kv length); IOBinding binds the same
OrtValue as the generator's `kv` output and the ranker's `kv` input, so the stages share it with
no copy. `bind_kv=False` runs plain `session.run` (the KV leaves the runner as numpy).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

try:
    import onnxruntime as ort
except ImportError:  # the TensorRT / torch images need not carry ONNX Runtime
    ort = None

from .base import KVHandle, KVPool


class OrtRunner:
    """ONNX Runtime runner. `bind_kv=False` runs plain `session.run` (the unbound baseline)."""

    def __init__(self, export_dir: Path, threads: int = 2, bind_kv: bool = True, spin: bool = False):
        if ort is None:
            raise RuntimeError("the onnxruntime engine needs the onnxruntime package, not installed here")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle intra-op threads sleep instead of spinning: in a server the stub shares 2 cores
        # with Triton, other stubs and the gRPC threads, and spinning threads starve them.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0" if not spin else "1")
        providers = ["CPUExecutionProvider"]
        export_dir = Path(export_dir)
        self.generator = ort.InferenceSession(str(export_dir / "generator.onnx"), opts, providers=providers)
        self.ranker = ort.InferenceSession(str(export_dir / "ranker.onnx"), opts, providers=providers)
        self.bind_kv = bind_kv
        self.pool = KVPool(lambda shape: ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, "cpu", 0))
        info = json.loads((export_dir / "export_info.json").read_text())
        self.dims = info["dims"]
        self.step2_tokens = int(info["num_step2_tokens"])

    def kv_shape(self, inputs) -> tuple:
        """[B, R2, S, DM] with S = F + L + T2."""
        batch, length = inputs["hist_actions"].shape
        return (batch, self.dims["R2"], self.dims["F"] + length + self.step2_tokens, self.dims["DM"])

    def generate(self, inputs):
        if not self.bind_kv:
            level_logits, kv = self.generator.run(None, inputs)
            return level_logits, KVHandle(kv.shape, kv)
        shape = self.kv_shape(inputs)
        kv = self.pool.acquire(shape)
        io = self.generator.io_binding()
        for name, value in inputs.items():
            io.bind_cpu_input(name, np.ascontiguousarray(value))
        io.bind_output("level_logits", "cpu")
        io.bind_ortvalue_output("kv", kv)
        self.generator.run_with_iobinding(io)
        level_logits = io.copy_outputs_to_cpu()[0]
        return level_logits, KVHandle(shape, kv)

    def rank(self, kv: KVHandle, hist_len, cand_sids, cand_attrs, cand_bid):
        feeds = {"hist_len": np.asarray(hist_len, np.int64), "cand_sids": cand_sids, "cand_attrs": cand_attrs,
                 "cand_bid": cand_bid}
        if isinstance(kv, np.ndarray) or not self.bind_kv:
            return self.ranker.run(["scores"], {"kv": getattr(kv, "value", kv), **feeds})[0]
        io = self.ranker.io_binding()
        io.bind_ortvalue_input("kv", kv.value)
        for name, value in feeds.items():
            io.bind_cpu_input(name, np.ascontiguousarray(value))
        io.bind_output("scores", "cpu")
        self.ranker.run_with_iobinding(io)
        return io.copy_outputs_to_cpu()[0]

    def release(self, kv: KVHandle) -> None:
        if self.bind_kv:
            self.pool.release(kv.shape, kv.value)
