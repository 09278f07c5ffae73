"""TensorRT 10 runner over the plans `oneranker build --engine tensorrt` compiles (written against
the real API; runs where TensorRT and a CUDA GPU exist, i.e. the NGC containers). Importing this
module without TensorRT works; constructing a runner fails with the reason.

    <repository>/<model>/<version>/artifacts      the artifact folder a runner is built from
      -> plans.plans_beside -> <repository>/{generation,ranking}/<version>/model.plan
         (the files tensorrt_build.build_plans writes, through the same plans.plan_path)
    generate: token arrays + knobs (host) -> generation plan -> candidates (device) + KV (a
              pooled device buffer, bound as the plan's `kv` output)
    rank:     KV + candidates + hist_len + top_k -> ranking plan -> rec_* (host numpy)

Both plans hold the in-graph beam search and top-k: this is GraphRecommender's runner, like
OrtGraphRunner / TorchGraphRunner. No decoder-state plans are built, so TensorRT has no
numpy-search runner.

Device: engines, execution contexts, streams, inputs, the KV and the outputs all live on the
device given ("cuda" = the current one, "cuda:N"); TensorRT binds an engine to the CUDA device
current when it is deserialized, so that and every execution run under torch.cuda.device.

Threads: one execution context per plan, each with its own lock and stream. A context's input
shapes, the output shapes read back, the tensor addresses, the execution and the copies of its
outputs all happen under that lock: two threads never mix shapes or buffers on one context.

Outputs whose shape depends on input values (the batch's largest num_candidates or top_k) are
sized by TensorRT during execution through an IOutputAllocator, then copied out under the lock
(the allocator's buffers serve the next call).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..plans import plans_beside
from .base import KVHandle, KVPool

try:
    import tensorrt as trt
    import torch
except ImportError:  # the CPU default and the Triton image without TensorRT
    trt = torch = None


def _output_allocator(device):
    """A trt.IOutputAllocator handing out `device` memory (grown, never shrunk) and keeping the
    shapes TensorRT reports."""

    class OutputAllocator(trt.IOutputAllocator):
        def __init__(self):
            trt.IOutputAllocator.__init__(self)
            self.buffers, self.shapes = {}, {}

        def reallocate_output_async(self, tensor_name, memory, size, alignment, stream):
            buffer = self.buffers.get(tensor_name)
            if buffer is None or buffer.numel() < size:
                buffer = torch.empty((max(int(size), 1),), dtype=torch.uint8, device=device)
                self.buffers[tensor_name] = buffer
            return buffer.data_ptr()

        def reallocate_output(self, tensor_name, memory, size, alignment):
            return self.reallocate_output_async(tensor_name, memory, size, alignment, None)

        def notify_shape(self, tensor_name, shape):
            self.shapes[tensor_name] = tuple(shape)

    return OutputAllocator()


class _Plan:
    """One deserialized plan with its execution context, lock, stream and output allocator.
    Outputs named in `bound` are written into buffers the caller provides (the KV); every
    other output goes through the allocator."""

    def __init__(self, runtime, path: Path, device, bound: tuple = ()):
        self.device = device
        self.engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise RuntimeError(
                f"TensorRT could not deserialize {path}: plans load only in the TensorRT and GPU model "
                "that built them (rebuild with `oneranker build --engine tensorrt` here)"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {
            n: torch.from_numpy(np.empty(0, trt.nptype(self.engine.get_tensor_dtype(n)))).dtype for n in names
        }
        # shape-tensor inputs are read by TensorRT on the host, every other tensor on the device
        self.host_inputs = {n for n in self.inputs if self.engine.is_shape_inference_io(n)}
        self.bound = tuple(bound)
        self.allocator = _output_allocator(device)
        for name in self.outputs:
            if name not in self.bound and not self.context.set_output_allocator(name, self.allocator):
                raise RuntimeError(f"TensorRT refused an output allocator for {path}: {name}")
        self.stream = torch.cuda.Stream(device=device)
        self.lock = threading.Lock()

    def _input(self, name: str, value):
        """numpy or torch -> a contiguous tensor of the plan's dtype, where TensorRT reads it."""
        where = "cpu" if name in self.host_inputs else self.device
        return torch.as_tensor(value, dtype=self.dtypes[name], device=where).contiguous()

    def _allocated(self, name: str):
        """An allocator output as a tensor of its own (a copy, enqueued on the stream)."""
        shape = self.allocator.shapes.get(name) or tuple(self.context.get_tensor_shape(name))
        dtype = self.dtypes[name]
        buffer = self.allocator.buffers.get(name)
        if buffer is None:  # TensorRT asked for no memory: an empty output
            return torch.empty(shape, dtype=dtype, device=self.device)
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * dtype.itemsize
        return buffer[:nbytes].view(dtype).reshape(shape).clone()

    def run(self, feeds: dict, provide: dict | None = None) -> dict:
        """feeds {input: numpy array or tensor}; provide {bound output: shape -> tensor} ->
        {output: device tensor}. Everything touching the context happens under its lock."""
        provide = provide or {}
        with self.lock, torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            held = {name: self._input(name, feeds[name]) for name in self.inputs}  # alive until synced
            for name, tensor in held.items():
                if not self.context.set_input_shape(name, tuple(tensor.shape)):
                    raise ValueError(f"TensorRT rejected {name} of shape {tuple(tensor.shape)} (outside the profile?)")
                self.context.set_tensor_address(name, tensor.data_ptr())
            out = {}
            for name in self.bound:
                out[name] = provide[name](tuple(self.context.get_tensor_shape(name)))
                self.context.set_tensor_address(name, out[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution failed ({', '.join(self.outputs)})")
            for name in self.outputs:
                if name not in self.bound:
                    out[name] = self._allocated(name)
            self.stream.synchronize()
        return out


class TrtRunner:
    """generation plan -> ranking plan over a pooled device KV (see the module docstring).
    `artifact_dir`: a model's artifact folder inside the tensorrt repository whose plans to run."""

    def __init__(self, artifact_dir: Path, device: str = "cuda"):
        if trt is None or torch is None:
            raise RuntimeError(
                "TensorRT is not installed here: run the tensorrt engine inside the NGC containers "
                "(docker-compose.yml, service triton) or use --engine onnxruntime / torch"
            )
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"TensorRT runs on a CUDA device, not {device!r}: pass 'cuda' or 'cuda:N'")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        paths = plans_beside(artifact_dir)
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"no TensorRT plan at {missing}: build them with `oneranker build --engine tensorrt` "
                "where TensorRT exists (the NGC builder image)"
            )
        with torch.cuda.device(self.device):
            self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.generation = _Plan(self.runtime, paths["generation"], self.device, bound=("kv",))
            self.ranking = _Plan(self.runtime, paths["ranking"], self.device)
        kv_dtype = self.generation.dtypes["kv"]
        self.pool = KVPool(lambda shape: torch.empty(shape, dtype=kv_dtype, device=self.device))

    def generate(self, inputs: dict, knobs: dict) -> tuple[dict, KVHandle]:
        """Token arrays [B, ...] + knobs (beam_width, num_candidates [B], exclude_idx [B, E]) ->
        ({cand_idx, cand_logp, cand_stream} on the device, KV handle)."""
        out = self.generation.run({**inputs, **knobs}, {"kv": self.pool.acquire})
        kv = out.pop("kv")
        return out, KVHandle(tuple(kv.shape), kv)

    def rank(self, kv: KVHandle, hist_len, cands: dict, top_k) -> dict:
        """-> {rec_item_ids, rec_scores, rec_gen_logp, rec_source_head [B, k], rec_count [B],
        num_generated [B]} as host arrays."""
        feeds = {"kv": getattr(kv, "value", kv), "hist_len": hist_len, **cands, "top_k": top_k}
        rec = {name: value.cpu().numpy() for name, value in self.ranking.run(feeds).items()}
        idx = cands["cand_idx"]
        idx = idx.cpu().numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
        rec["num_generated"] = (idx >= 0).sum(axis=-1)
        return rec

    def release(self, kv: KVHandle) -> None:
        self.pool.release(kv.shape, kv.value)
