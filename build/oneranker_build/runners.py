"""Engine runners: `generate` (Steps 1-2) then `rank` (Step 3) over KV buffers that never leave
the runner. One implementation per engine; the orchestrator and reference call only these two
methods (see `oneranker.serving.EngineRunner`).

    OrtRunner   ONNX Runtime (CPU default). KV buffers are OrtValues from a pool keyed by
                (batch, kv length); IOBinding binds the same OrtValue as the generator's `kv`
                output and the ranker's `kv` input, so the stages share it with no copy.
    TrtRunner   TensorRT 10 (NGC hosts). Two execution contexts; the generator's `kv` output
                and the ranker's `kv` input are set to the same device address.
    TorchRunner (oneranker.reference) PyTorch eager, CPU or CUDA.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from pathlib import Path

import numpy as np


class KVPool:
    """Reusable KV buffers keyed by shape; each acquire hands out a buffer no one else holds."""

    def __init__(self, allocate):
        self._allocate = allocate
        self._free: dict[tuple, list] = defaultdict(list)
        self._lock = threading.Lock()
        self.allocations = 0

    def acquire(self, shape: tuple):
        with self._lock:
            if self._free[shape]:
                return self._free[shape].pop()
            self.allocations += 1
        return self._allocate(shape)

    def release(self, shape: tuple, buffer) -> None:
        with self._lock:
            self._free[shape].append(buffer)


class KVHandle:
    def __init__(self, shape: tuple, value, numpy_view=None):
        self.shape, self.value, self.numpy_view = shape, value, numpy_view


class OrtRunner:
    """ONNX Runtime runner. `bind_kv=False` runs plain `session.run` (the unbound baseline)."""

    def __init__(self, export_dir: Path, threads: int = 2, bind_kv: bool = True, spin: bool = False):
        import onnxruntime as ort

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
        self._ort = ort
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


class TrtRunner:
    """TensorRT 10 runner (written against the real API; runs where TensorRT is installed, i.e.
    NGC containers). KV is one device buffer bound as generator output and ranker input."""

    def __init__(self, plan_dir: Path, device: str = "cuda"):
        try:
            import tensorrt as trt
        except ImportError as err:  # pragma: no cover - exercised only without TensorRT
            raise RuntimeError(
                "TensorRT is not installed here: run the tensorrt engine inside the NGC containers "
                "(docker-compose.yml, service triton) or use --engine onnxruntime / torch"
            ) from err
        import torch

        self.trt, self.torch = trt, torch
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        plan_dir = Path(plan_dir)
        self.engines = {name: runtime.deserialize_cuda_engine((plan_dir / f"{name}.plan").read_bytes())
                        for name in ("generator", "ranker")}
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
        for key, value in (("hist_len", hist_len), ("cand_sids", cand_sids), ("cand_attrs", cand_attrs),
                           ("cand_bid", cand_bid)):
            feeds[key] = torch.from_numpy(np.ascontiguousarray(value)).to(self.device)
        scores = torch.empty(cand_bid.shape, dtype=torch.float32, device=self.device)
        with self._lock, torch.cuda.stream(self.stream):
            self._run("ranker", feeds, {"scores": scores})
            self.stream.synchronize()
        return scores.cpu().numpy()

    def release(self, kv: KVHandle) -> None:
        self.pool.release(kv.shape, kv.value)


def make_runner(engine: str, artifact_dir: Path, threads: int = 2, device: str = "cpu", bind_kv: bool = True):
    """Runner for a rendered model's artifact folder (`bind_kv=False` where the KV must leave it)."""
    artifact_dir = Path(artifact_dir)
    if engine == "onnxruntime":
        return OrtRunner(artifact_dir, threads=threads, bind_kv=bind_kv)
    if engine == "tensorrt":
        return TrtRunner(artifact_dir)
    if engine == "torch":
        import torch

        from oneranker.checkpoint import load_run
        from oneranker.reference import TorchRunner

        torch.set_num_threads(threads)
        _, model, _, _ = load_run(artifact_dir / "run")
        return TorchRunner(model, device=device)
    raise ValueError(f"unknown engine {engine!r}: choose onnxruntime, torch or tensorrt")


ENGINES = ("onnxruntime", "torch", "tensorrt")
