"""ONNX Runtime runners (CPU default), each two graphs over one pooled KV.

    OrtGraphRunner  generation.onnx (beam search inside) then ranking.onnx (top-k inside): the
                    served path, two engine calls per batch
    OrtRunner       generator.onnx (decoder state) then ranker.onnx (scores), with the numpy beam
                    search between them: the baseline it replaces, and the cascade's runner

KV buffers are OrtValues from a pool keyed by (batch, kv length); IOBinding binds the same
OrtValue as the first graph's `kv` output and the second graph's `kv` input, so the stages share
it with no copy. `bind_kv=False` runs plain `session.run` (the KV leaves the runner as numpy).
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


def sessions(export_dir: Path, names: tuple[str, ...], threads: int, spin: bool = False) -> list:
    """One InferenceSession per `<name>.onnx`: `threads` intra-op threads, sequential execution."""
    if ort is None:
        raise RuntimeError("the onnxruntime engine needs the onnxruntime package, not installed here")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle intra-op threads sleep instead of spinning: in a server the stub shares 2 cores
    # with Triton, other stubs and the gRPC threads, and spinning threads starve them.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0" if not spin else "1")
    return [
        ort.InferenceSession(str(Path(export_dir) / f"{name}.onnx"), opts, providers=["CPUExecutionProvider"])
        for name in names
    ]


class _KVShape:
    """The KV's shape [B, R2, S, DM], S = F + L + T2, from export_info.json."""

    def __init__(self, export_dir: Path):
        info = json.loads((Path(export_dir) / "export_info.json").read_text())
        self.dims = info["dims"]
        self.step2_tokens = int(info["num_step2_tokens"])

    def kv_shape(self, inputs) -> tuple:
        batch, length = inputs["hist_actions"].shape
        return (batch, self.dims["R2"], self.dims["F"] + length + self.step2_tokens, self.dims["DM"])


def _ort_pool() -> KVPool:
    return KVPool(lambda shape: ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, "cpu", 0))


class OrtGraphRunner(_KVShape):
    """generation.onnx -> ranking.onnx, the KV bound in place (see module docstring)."""

    def __init__(self, export_dir: Path, threads: int = 2, bind_kv: bool = True, spin: bool = False):
        super().__init__(export_dir)
        self.generation, self.ranking = sessions(export_dir, ("generation", "ranking"), threads, spin)
        self.bind_kv = bind_kv
        self.pool = _ort_pool()

    def generate(self, inputs: dict, knobs: dict) -> tuple[dict, KVHandle]:
        """Token arrays [B, ...] + knobs (beam_width, num_candidates [B], exclude_idx [B, E])
        -> ({cand_idx, cand_logp, cand_stream} [B, N], KV handle)."""
        feeds = {**inputs, **knobs}
        names = ("cand_idx", "cand_logp", "cand_stream")
        if not self.bind_kv:
            *cands, kv = self.generation.run(None, feeds)
            return dict(zip(names, cands)), KVHandle(kv.shape, kv)
        shape = self.kv_shape(inputs)
        kv = self.pool.acquire(shape)
        io = self.generation.io_binding()
        for name, value in feeds.items():
            io.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in names:
            io.bind_output(name, "cpu")
        io.bind_ortvalue_output("kv", kv)
        self.generation.run_with_iobinding(io)
        # the candidates come to the host; the KV stays in its pooled OrtValue for the ranking graph
        return {name: value.numpy() for name, value in zip(names, io.get_outputs())}, KVHandle(shape, kv)

    def rank(self, kv: KVHandle, hist_len, cands: dict, top_k) -> dict:
        """-> {rec_item_ids, rec_scores, rec_gen_logp, rec_source_head [B, k], rec_count [B],
        num_generated [B]}."""
        feeds = {"hist_len": np.asarray(hist_len, np.int64), **cands, "top_k": np.asarray(top_k, np.int64)}
        names = [o.name for o in self.ranking.get_outputs()]
        generated = {"num_generated": (np.asarray(cands["cand_idx"]) >= 0).sum(axis=1)}
        if isinstance(kv, np.ndarray) or not self.bind_kv:
            return {**dict(zip(names, self.ranking.run(None, {"kv": getattr(kv, "value", kv), **feeds}))), **generated}
        io = self.ranking.io_binding()
        io.bind_ortvalue_input("kv", kv.value)
        for name, value in feeds.items():
            io.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in names:
            io.bind_output(name, "cpu")
        self.ranking.run_with_iobinding(io)
        return {**dict(zip(names, io.copy_outputs_to_cpu())), **generated}

    def release(self, kv: KVHandle) -> None:
        if self.bind_kv:
            self.pool.release(kv.shape, kv.value)


class OrtRunner(_KVShape):
    """generator.onnx -> ranker.onnx (decoder state, numpy beam search in between)."""

    def __init__(self, export_dir: Path, threads: int = 2, bind_kv: bool = True, spin: bool = False):
        super().__init__(export_dir)
        self.generator, self.ranker = sessions(export_dir, ("generator", "ranker"), threads, spin)
        self.bind_kv = bind_kv
        self.pool = _ort_pool()

    def generate(self, inputs):
        if not self.bind_kv:
            decoder_state, kv = self.generator.run(None, inputs)
            return decoder_state, KVHandle(kv.shape, kv)
        shape = self.kv_shape(inputs)
        kv = self.pool.acquire(shape)
        io = self.generator.io_binding()
        for name, value in inputs.items():
            io.bind_cpu_input(name, np.ascontiguousarray(value))
        io.bind_output("decoder_state", "cpu")
        io.bind_ortvalue_output("kv", kv)
        self.generator.run_with_iobinding(io)
        decoder_state = io.copy_outputs_to_cpu()[0]
        return decoder_state, KVHandle(shape, kv)

    def rank(self, kv: KVHandle, hist_len, cand_sids, cand_attrs, cand_bid):
        feeds = {
            "hist_len": np.asarray(hist_len, np.int64),
            "cand_sids": cand_sids,
            "cand_attrs": cand_attrs,
            "cand_bid": cand_bid,
        }
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
