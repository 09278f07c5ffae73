"""Engine runners: `generate` (Steps 1-2) then `rank` (Step 3) over KV buffers that stay inside
the runner. One module per engine:

    onnxruntime   ONNX Runtime, CPU (the embedded default)
    torch         PyTorch exported programs, CPU or CUDA
    tensorrt      TensorRT 10 plans (NGC hosts), the ones `oneranker build --engine tensorrt` compiles

Two graph pairs, chosen by `search`: "graph" (generation -> ranking, beam search and top-k inside
the graphs: OrtGraphRunner, TorchGraphRunner, TrtRunner) and "numpy" (generator -> ranker over
decoder state, the numpy beam search between them: OrtRunner, TorchRunner; the baseline and the
cascade). TensorRT plans are built for the generation and ranking graphs only.

`make_runner` loads the module of the chosen engine only: a Python model serving ONNX Runtime
never pays torch's import time and memory, and the Triton image of one engine needs no other
engine's library. Each module guards its library import, so a runner of a missing engine fails
when it is built, saying why.
"""

from __future__ import annotations

import importlib
from pathlib import Path

ENGINE_RUNNERS = {"onnxruntime": "OrtRunner", "torch": "TorchRunner"}
GRAPH_RUNNERS = {"onnxruntime": "OrtGraphRunner", "torch": "TorchGraphRunner", "tensorrt": "TrtRunner"}
ENGINES = tuple(dict.fromkeys((*ENGINE_RUNNERS, *GRAPH_RUNNERS)))
SEARCHES = ("graph", "numpy")


def runner_class(engine: str, search: str = "numpy"):
    table = GRAPH_RUNNERS if search == "graph" else ENGINE_RUNNERS
    if search not in SEARCHES:
        raise ValueError(f"unknown beam search {search!r}: one of {SEARCHES}")
    if engine not in table:
        raise ValueError(f"engine {engine!r} has no {search}-search runner: one of {tuple(table)}")
    return getattr(importlib.import_module(f"{__name__}.{engine}"), table[engine])


def make_runner(
    engine: str, artifact_dir: Path, threads: int = 2, device: str = "cpu", bind_kv: bool = True, search: str = "numpy"
):
    """Runner for a rendered model's artifact folder (`bind_kv=False` where the KV must leave it)."""
    cls = runner_class(engine, search)
    if engine == "onnxruntime":
        return cls(Path(artifact_dir), threads=threads, bind_kv=bind_kv)
    if engine == "tensorrt":  # plans beside the artifacts, on a CUDA device (cpu: refused, saying so)
        return cls(Path(artifact_dir), device=device)
    return cls(Path(artifact_dir), device=device, threads=threads)
