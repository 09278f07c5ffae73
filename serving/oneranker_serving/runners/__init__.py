"""Engine runners: `generate` (Steps 1-2) then `rank` (Step 3) over KV buffers that stay inside
the runner. One module per engine:

    onnxruntime.OrtRunner   ONNX Runtime, CPU (the embedded default)
    torch.TorchRunner       PyTorch exported programs, CPU or CUDA
    tensorrt.TrtRunner      TensorRT 10 plans (NGC hosts)

`make_runner` loads the module of the chosen engine only: a Python model serving ONNX Runtime
never pays torch's import time and memory, and the Triton image of one engine needs no other
engine's library. Each module guards its library import, so a runner of a missing engine fails
when it is built, saying why.
"""

from __future__ import annotations

import importlib
from pathlib import Path

ENGINE_RUNNERS = {"onnxruntime": "OrtRunner", "torch": "TorchRunner", "tensorrt": "TrtRunner"}
ENGINES = tuple(ENGINE_RUNNERS)


def runner_class(engine: str):
    if engine not in ENGINE_RUNNERS:
        raise ValueError(f"unknown engine {engine!r}: choose one of {ENGINES}")
    return getattr(importlib.import_module(f"{__name__}.{engine}"), ENGINE_RUNNERS[engine])


def make_runner(engine: str, artifact_dir: Path, threads: int = 2, device: str = "cpu", bind_kv: bool = True):
    """Runner for a rendered model's artifact folder (`bind_kv=False` where the KV must leave it)."""
    cls = runner_class(engine)
    if engine == "onnxruntime":
        return cls(Path(artifact_dir), threads=threads, bind_kv=bind_kv)
    if engine == "tensorrt":
        return cls(Path(artifact_dir))
    return cls(Path(artifact_dir), device=device, threads=threads)
