"""pb_utils.Tensor <-> arrays for one Python model; `pb` (triton_python_backend_utils) is
injected so everything here is testable with a fake.

    transport "numpy":  every tensor is a host numpy array (ONNX Runtime engine).
    transport "dlpack": (torch engine) the KV moves as a torch tensor through DLPack, zero copy and
                        on the device it lives on (GPU memory for KIND_GPU instances); token,
                        knob and candidate tensors come to the host. With
                        FORCE_CPU_ONLY_INPUT_TENSORS=no (rendered for the torch engine) the
                        generation model's KV reaches the ranking model where it was made.
"""

from __future__ import annotations

import importlib

import numpy as np

KV_TRANSPORTS = ("numpy", "dlpack")


def is_torch(value) -> bool:
    """True for a torch tensor, without importing torch (a numpy-only model never loads it)."""
    return type(value).__module__.startswith("torch")


class TensorCodec:
    def __init__(self, pb, transport: str = "numpy"):
        if transport not in KV_TRANSPORTS:
            raise ValueError(f"kv_transport must be one of {KV_TRANSPORTS}, got {transport!r}")
        self.pb, self.dlpack = pb, transport == "dlpack"
        self._torch = None

    @property
    def torch_runner(self):
        """The torch runner module, which owns every torch import of the serving package; loaded
        on first use (dlpack transport, or a tensor that lives on a GPU)."""
        if self._torch is None:
            self._torch = importlib.import_module("oneranker_serving.runners.torch")
        return self._torch

    def host(self, tensor) -> np.ndarray:
        """Any input/output tensor -> numpy on the host."""
        if tensor.is_cpu():
            return tensor.as_numpy()
        return self.torch_runner.from_dlpack(tensor.to_dlpack()).cpu().numpy()

    def kv(self, tensor):
        """The KV tensor -> torch (DLPack, where it lives) or numpy."""
        if not self.dlpack:
            return self.host(tensor)
        return self.torch_runner.from_dlpack(tensor.to_dlpack())

    def tensor(self, name: str, value):
        """numpy or torch -> pb_utils.Tensor (torch tensors by DLPack, no copy)."""
        if is_torch(value):
            return self.pb.Tensor.from_dlpack(name, self.torch_runner.to_dlpack(value))
        return self.pb.Tensor(name, np.ascontiguousarray(value))

    def inputs(self, request, spec) -> dict:
        """One request's inputs named by `spec` (a contract.ModelSpec): kv via `kv()`, the rest
        on the host."""
        out = {}
        for t in spec.inputs:
            tensor = self.pb.get_input_tensor_by_name(request, t.name)
            out[t.name] = self.kv(tensor) if t.name == "kv" else self.host(tensor)
        return out

    def outputs(self, values: dict) -> list:
        return [self.tensor(name, value) for name, value in values.items()]
