"""The TensorRT build and runner's control flow, with fake `tensorrt` and `torch` modules (no
TensorRT, no GPU here): the runner reads the plans the build writes, runs on the device it was
given, keeps each context's shape setting and execution under one lock, and the timing cache of
one build is read by the next.

The fakes follow the TensorRT 10 Python API the code calls (Builder / OnnxParser / timing cache;
Runtime / ICudaEngine / IExecutionContext / IOutputAllocator). Fake tensors are real CPU torch
tensors; the fake torch records the device every allocation and context asked for.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import threading
import time
import types

import numpy as np
import pytest
import torch as real_torch

from oneranker_build import tensorrt_build
from oneranker_client import contract
from oneranker_serving import plans
from oneranker_serving.runners import tensorrt as trt_runner

B, R2, S, DM, N = 2, 2, 5, 4, 3  # batch, KV heads x layers, KV length, width, candidates


class Record:
    """What the fakes saw: deserialized plans, devices, streams, timing caches, overlaps."""

    def __init__(self):
        self.device = None  # the device of the innermost torch.cuda.device block
        self.stream = None
        self.deserialized = []  # (plan bytes, active device)
        self.executions = []  # (active device, active stream, stream handed to TensorRT)
        self.allocations = []  # (what, device)
        self.streams = []
        self.cache_reads = []  # bytes given to create_timing_cache
        self.overlaps = 0  # a context touched by one thread while another was setting it up


# --------------------------------------------------------------------------- fake torch
class FakeStream:
    def __init__(self, device=None):
        self.device = device
        self.cuda_stream = id(self)

    def synchronize(self):
        pass


def fake_torch(rec: Record):
    @contextlib.contextmanager
    def device_block(device):
        before, rec.device = rec.device, real_torch.device(device)
        try:
            yield
        finally:
            rec.device = before

    @contextlib.contextmanager
    def stream_block(stream):
        before, rec.stream = rec.stream, stream
        try:
            yield
        finally:
            rec.stream = before

    def stream(device=None):
        rec.streams.append(FakeStream(device))
        return rec.streams[-1]

    def empty(shape, dtype=None, device=None):
        rec.allocations.append(("empty", str(device)))
        return real_torch.empty(shape, dtype=dtype)

    def as_tensor(data, dtype=None, device=None):
        rec.allocations.append(("as_tensor", str(device)))
        return real_torch.as_tensor(data, dtype=dtype)

    cuda = types.SimpleNamespace(device=device_block, stream=stream_block, Stream=stream, current_device=lambda: 0)
    return types.SimpleNamespace(
        device=real_torch.device,
        Tensor=real_torch.Tensor,
        uint8=real_torch.uint8,
        from_numpy=real_torch.from_numpy,
        empty=empty,
        as_tensor=as_tensor,
        cuda=cuda,
    )


# --------------------------------------------------------------------------- fake tensorrt
NP = {"TYPE_INT64": np.int64, "TYPE_FP32": np.float32, "TYPE_INT32": np.int32}


class FakeEngine:
    """The engine of a fake plan b"plan:onnx:<graph>": the graph's tensors from the contract."""

    def __init__(self, rec: Record, graph: str):
        spec = contract.GRAPHS[graph]
        self.rec, self.graph = rec, graph
        self.modes = {t.name: "input" for t in spec.inputs} | {t.name: "output" for t in spec.outputs}
        self.types = {t.name: NP[t.dtype] for t in (*spec.inputs, *spec.outputs)}
        self.names = list(self.modes)
        self.num_io_tensors = len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return self.modes[name]

    def get_tensor_dtype(self, name):
        return self.types[name]

    def is_shape_inference_io(self, name):
        return False

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    """Counts an overlap whenever a second thread touches the context between the first one's
    set_input_shape and the end of its execute_async_v3."""

    def __init__(self, engine: FakeEngine):
        self.engine, self.rec = engine, engine.rec
        self.owner = None
        self.shapes, self.allocators = {}, {}

    def _touch(self):
        me = threading.get_ident()
        if self.owner not in (None, me):
            self.rec.overlaps += 1
        self.owner = me

    def set_input_shape(self, name, shape):
        self._touch()
        self.shapes[name] = tuple(shape)
        time.sleep(0.0005)  # widen the window another thread could slip into
        return True

    def get_tensor_shape(self, name):
        self._touch()
        batch = self.shapes["hist_len"][0]
        if name == "kv":
            return (batch, R2, S, DM)
        return (batch,) if name == "rec_count" else (batch, -1)  # -1: known during execution only

    def set_tensor_address(self, name, ptr):
        self._touch()

    def set_output_allocator(self, name, allocator):
        self.allocators[name] = allocator
        return True

    def execute_async_v3(self, stream_handle):
        self._touch()
        self.rec.executions.append((self.rec.device, self.rec.stream, stream_handle))
        batch = self.shapes["hist_len"][0]
        for name, allocator in self.allocators.items():
            shape = (batch,) if name == "rec_count" else (batch, N)
            size = int(np.prod(shape)) * np.dtype(self.engine.types[name]).itemsize
            allocator.reallocate_output_async(name, 0, size, 256, stream_handle)
            allocator.notify_shape(name, shape)
        time.sleep(0.001)
        self._touch()
        self.owner = None
        return True


def fake_tensorrt(rec: Record, version: str = "10.99.1"):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Logger:
        WARNING = 2

        def __init__(self, level=None):
            pass

    class IOutputAllocator:
        def __init__(self):
            pass

    class Network:
        onnx = b""

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse(self, data):
            self.network.onnx = bytes(data)
            return True

    class Cache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data

    class Config:
        def set_memory_pool_limit(self, pool, size):
            pass

        def create_timing_cache(self, data):
            rec.cache_reads.append(bytes(data))
            return Cache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

        def add_optimization_profile(self, profile):
            pass

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return types.SimpleNamespace(set_shape=lambda *a: None)

        def build_serialized_network(self, network, config):
            config.cache = Cache(config.cache.data + b"|timings of " + network.onnx)
            return b"plan:" + network.onnx

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            rec.deserialized.append((bytes(data), rec.device))
            return FakeEngine(rec, bytes(data).split(b":")[-1].decode())

    trt.Logger, trt.IOutputAllocator, trt.Builder, trt.OnnxParser, trt.Runtime = (
        Logger,
        IOutputAllocator,
        Builder,
        Parser,
        Runtime,
    )
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.nptype = np.dtype
    return trt


# --------------------------------------------------------------------------- fixtures
@pytest.fixture
def rec():
    return Record()


@pytest.fixture
def fake_trt(rec, monkeypatch):
    """The fake tensorrt for the build (`import tensorrt`) and the runner (its module globals)."""
    trt = fake_tensorrt(rec)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_runner, "trt", trt)
    monkeypatch.setattr(trt_runner, "torch", fake_torch(rec))
    return trt


@pytest.fixture
def export_dir(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    for graph in plans.PLAN_MODELS:
        (folder / f"{graph}.onnx").write_bytes(f"onnx:{graph}".encode())
    return folder


def build(export_dir, repo, cache_dir):
    info = tensorrt_build.build_plans(export_dir, repo, "tiny", cache_dir, gpu="fake-gpu-sm90")
    (repo / contract.PREPROCESS_MODEL / "1" / "artifacts").mkdir(parents=True, exist_ok=True)
    return info


def generation_inputs(batch: int = B) -> tuple[dict, dict]:
    inputs = {
        t.name: np.zeros((batch, *[3 if isinstance(d, str) or d == -1 else d for d in t.dims]), NP[t.dtype])
        for t in contract.GENERATION.inputs
        if t.name not in ("beam_width", "num_candidates", "exclude_idx")
    }
    inputs["hist_len"] = np.full(batch, 3, np.int64)
    knobs = {
        "beam_width": np.full(batch, 2, np.int64),
        "num_candidates": np.full(batch, N, np.int64),
        "exclude_idx": np.full((batch, 1), -1, np.int64),
    }
    return inputs, knobs


# --------------------------------------------------------------------------- tests
def test_runner_reads_the_plans_the_build_writes(fake_trt, rec, export_dir, tmp_path):
    repo = tmp_path / "tensorrt"
    build(export_dir, repo, tmp_path / "cache")
    written = {p: p.read_bytes() for p in repo.rglob("*.plan")}
    assert len(written) == len(plans.PLAN_MODELS)
    trt_runner.TrtRunner(repo / contract.PREPROCESS_MODEL / "1" / "artifacts", device="cuda:0")
    assert sorted(data for data, _ in rec.deserialized) == sorted(written.values())
    # and from a promoted version folder, the plans of that version
    assert plans.plans_beside(repo / "preprocess" / "7" / "artifacts") == {
        m: repo / m / "7" / "model.plan" for m in plans.PLAN_MODELS
    }


def test_runner_without_plans_names_the_missing_files(fake_trt, tmp_path):
    artifacts = tmp_path / "tensorrt" / "preprocess" / "1" / "artifacts"
    artifacts.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"generation/1/model\.plan.*oneranker build --engine tensorrt"):
        trt_runner.TrtRunner(artifacts, device="cuda")


def test_runner_honours_its_device(fake_trt, rec, export_dir, tmp_path):
    repo = tmp_path / "tensorrt"
    build(export_dir, repo, tmp_path / "cache")
    cuda1 = real_torch.device("cuda:1")
    runner = trt_runner.TrtRunner(repo / "preprocess" / "1" / "artifacts", device="cuda:1")
    assert [device for _, device in rec.deserialized] == [cuda1, cuda1]
    assert [s.device for s in rec.streams] == [cuda1, cuda1]
    inputs, knobs = generation_inputs()
    cands, kv = runner.generate(inputs, knobs)
    rec_out = runner.rank(kv, inputs["hist_len"], cands, np.full(B, 2, np.int64))
    runner.release(kv)
    assert tuple(kv.value.shape) == (B, R2, S, DM)
    assert rec_out["rec_item_ids"].shape == (B, N) and rec_out["num_generated"].shape == (B,)
    assert {device for _, device in rec.allocations} == {"cuda:1"}, rec.allocations
    plan_streams = {s.cuda_stream: s for s in rec.streams}
    assert len(rec.executions) == 2
    for device, active, handed in rec.executions:
        assert device == cuda1 and active is plan_streams[handed]
    with pytest.raises(ValueError, match="CUDA device"):
        trt_runner.TrtRunner(repo / "preprocess" / "1" / "artifacts", device="cpu")


def test_shapes_and_execution_of_a_context_stay_under_one_lock(fake_trt, rec, export_dir, tmp_path):
    repo = tmp_path / "tensorrt"
    build(export_dir, repo, tmp_path / "cache")
    runner = trt_runner.TrtRunner(repo / "preprocess" / "1" / "artifacts", device="cuda:0")
    errors = []

    def work(batch):
        try:
            for _ in range(15):
                inputs, knobs = generation_inputs(batch)
                cands, kv = runner.generate(inputs, knobs)
                assert tuple(kv.value.shape)[0] == batch
                runner.rank(kv, inputs["hist_len"], cands, np.full(batch, 2, np.int64))
                runner.release(kv)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(batch,)) for batch in (1, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert rec.overlaps == 0, f"{rec.overlaps} times a thread set shapes or ran a context another thread was using"


def test_timing_cache_survives_the_rebuild_and_is_reused(fake_trt, rec, export_dir, tmp_path, capsys):
    repo, cache_dir = tmp_path / "tensorrt", tmp_path / "tensorrt-timing-cache"
    first = build(export_dir, repo, cache_dir)
    assert "none yet" in capsys.readouterr().out
    assert rec.cache_reads[0] == b"" and not any(i["timing_cache_reused"] for i in first.values())
    cache = tensorrt_build.timing_cache_file(cache_dir, fake_trt.__version__, "fake-gpu-sm90")
    written = cache.read_bytes()
    assert b"timings of onnx:ranking" in written

    shutil.rmtree(repo)  # what the next build does to the repository (and to OUT/export)
    shutil.rmtree(export_dir)
    export_dir.mkdir()
    for graph in plans.PLAN_MODELS:
        (export_dir / f"{graph}.onnx").write_bytes(f"onnx:{graph}".encode())
    rec.cache_reads.clear()
    second = build(export_dir, repo, cache_dir)
    assert rec.cache_reads[0] == written, "the second build did not read the first build's timing cache"
    assert "reused from an earlier build" in capsys.readouterr().out
    for model, info in second.items():
        assert info["timing_cache_reused"] is True and info["timing_cache"] == str(cache)
        recorded = (plans.plan_path(repo, model).parent / "build_info.json").read_text()
        assert '"timing_cache_reused": true' in recorded


def test_timing_cache_is_keyed_by_tensorrt_version_and_gpu(tmp_path):
    names = {
        tensorrt_build.timing_cache_file(tmp_path, v, g).name
        for v in ("10.13.3", "10.14.1")
        for g in ("nvidia-h100-sm90", "nvidia-l4-sm89")
    }
    assert len(names) == 4
