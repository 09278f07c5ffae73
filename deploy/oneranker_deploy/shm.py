"""Shared-memory sizing of a Triton server from the tensor contract (``shm_size``, ``/dev/shm``).

Torch-free (``oneranker.config`` and the tensor contract are imported lazily). Data flow: a
config preset (or a compose service's labels, :func:`compose_shm_inputs`) gives the contract
dims and request limits; with the instance count of every contract model
(:func:`oneranker_deploy.repository.rendered_instance_counts` by default) :func:`shm_size_bytes`
sums the largest tensors of one request over every model instance; :func:`format_size` writes the
docker size string the compose file and the manifests carry.

Shared memory (``shm_size`` of the ``triton`` service, ``/dev/shm`` of the Kubernetes pods)
------------------------------------------------------------------------------------------
Triton's Python backend moves every input and output tensor of a Python model through POSIX
shared memory in ``/dev/shm``. Docker gives a container 64 MiB
of it by default, which the python_backend README (section "Managing Shared Memory") calls
"very small". Per that README the backend allocates ``shm-default-byte-size`` per model instance
up front (1 MiB in current releases; 64 MiB in the releases that introduced shared memory) and
grows the region in ``shm-growth-byte-size`` chunks when a batch needs more (both set with
``--backend-config=python,<key>=<bytes>``). The size we give the container is::

    shm = round_up_MiB( safety * sum_models( instances[m] * max_batch_size *
                                             sum_tensors(m) bytes of one request ) )
    shm = max(shm, 256 MiB)

over every model of ``oneranker_client.contract.MODELS`` and every one of its inputs and
outputs, at the largest shape a request may have. Variable (-1) dimensions resolve by the rule
in ``VARIABLE_DIMS`` (explicit per tensor name; a tensor the rule does not know is an error, so a
contract change forces a decision here):

* ``history``: the behaviour history, padded at most to ``max_history`` (model.max_history);
* ``kv``: the Step-3 key/value sequence ``[H1 ; H2]`` = ``F`` feature tokens + ``max_history``
  events + the Step-2 tokens (``model.num_step2_tokens``: task tokens + fake items);
* ``candidates``: candidate lists, the top-k outputs and the exclusion lists, bounded by
  ``max_candidates`` (serve.max_num_candidates; top_k <= num_candidates <= max_candidates).
  ``exclude_item_ids`` is not bounded by the contract itself: preprocess must reject longer
  lists, otherwise the bound here is not one.

``safety`` (default 2) covers a request's inputs and outputs being alive at once and the growth
chunks' fragmentation. The 256 MiB floor covers the per-instance default regions (64 MiB each in
early python_backend releases) and the backend's control structures, whatever the tensors.

Instance counts: one per contract model, as ``oneranker build`` renders them
(`rendered_instance_counts` renders the templates and reads their instance groups back: 1 for an
ensemble, 0 for a contract model the repository does not hold, e.g. the fused recommender in the
tensorrt repository). A deployment that raises counts
declares its own (``--instances``, or the ``oneranker.instances`` label of the compose service).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .repository import _models, config_preset, contract_dims, rendered_instance_counts

if TYPE_CHECKING:
    from oneranker.config import ExperimentConfig
    from oneranker_client.contract import ContractDims, ModelSpec, TensorSpec

__all__ = [
    "GIB",
    "MIB",
    "SHM_FLOOR_BYTES",
    "VARIABLE_DIMS",
    "compose_shm_inputs",
    "deploy_limits",
    "format_size",
    "model_request_bytes",
    "parse_instance_counts",
    "parse_size",
    "shm_size_bytes",
    "shm_size_for_preset",
    "tensor_bytes",
]

MIB = 1 << 20
GIB = 1 << 30
SHM_FLOOR_BYTES = 256 * MIB
_WORD_BYTES = {"TYPE_INT64": 8, "TYPE_INT32": 4, "TYPE_FP32": 4}

# How every variable (-1) dimension of the contract resolves (see the module docstring).
VARIABLE_DIMS: dict[str, str] = {
    # behaviour history
    "item_ids": "history",
    "actions": "history",
    "timestamps": "history",
    "hist_sids": "history",
    "hist_actions": "history",
    "hist_dt": "history",
    # Step-3 key/value sequence [H1 ; H2]
    "kv": "kv",
    # candidate-sized lists
    "exclude_item_ids": "candidates",
    "exclude_idx": "candidates",
    "cand_idx": "candidates",
    "cand_logp": "candidates",
    "cand_stream": "candidates",
    "rec_item_ids": "candidates",
    "rec_scores": "candidates",
    "rec_gen_logp": "candidates",
    "rec_source_head": "candidates",
}


def deploy_limits(cfg: ExperimentConfig) -> dict[str, int]:
    """The shape limits of one request under a config (arguments of `shm_size_bytes`)."""
    return {
        "max_batch_size": cfg.serve.max_batch_size,
        "max_history": cfg.model.max_history,
        "max_candidates": cfg.serve.max_num_candidates,
    }


def _variable_length(
    tensor: TensorSpec, dims: ContractDims, max_history: int, max_candidates: int, step2_tokens: int
) -> int:
    kind = VARIABLE_DIMS.get(tensor.name)
    if kind is None:
        raise ValueError(
            f"tensor {tensor.name!r} has a variable dimension that oneranker_deploy."
            "VARIABLE_DIMS does not classify (history, kv or candidates): add it there"
        )
    if kind == "history":
        return max_history
    if kind == "candidates":
        return max_candidates
    return dims.F + max_history + step2_tokens  # kv


def tensor_bytes(
    tensor: TensorSpec, dims: ContractDims, max_history: int, max_candidates: int, step2_tokens: int
) -> int:
    """Bytes of one request's tensor at its largest shape (batch dimension excluded)."""
    if tensor.dtype not in _WORD_BYTES:
        raise ValueError(f"tensor {tensor.name!r}: unknown dtype {tensor.dtype}")
    n = 1
    for d in tensor.dims:
        v = dims.value(d)
        if v == -1:
            v = _variable_length(tensor, dims, max_history, max_candidates, step2_tokens)
        if not isinstance(v, int) or v < 0:
            raise ValueError(f"tensor {tensor.name!r}: cannot resolve dimension {d!r}")
        n *= v
    return n * _WORD_BYTES[tensor.dtype]


def model_request_bytes(
    model: ModelSpec, dims: ContractDims, max_history: int, max_candidates: int, step2_tokens: int
) -> int:
    """Bytes of every input and output of one request of `model`, at the largest shapes."""
    return sum(
        tensor_bytes(t, dims, max_history, max_candidates, step2_tokens) for t in (*model.inputs, *model.outputs)
    )


def _step2_tokens(dims: ContractDims, step2_tokens: int | None) -> int:
    if step2_tokens is not None:
        return int(step2_tokens)
    if "step2_tokens" not in dims.extra:
        raise ValueError(
            "the kv length needs the Step-2 token count: pass step2_tokens= or build dims with contract_dims(cfg)"
        )
    return int(dims.extra["step2_tokens"])


def shm_size_bytes(
    dims: ContractDims,
    max_batch_size: int,
    instance_counts: Mapping[str, int],
    max_history: int,
    max_candidates: int,
    safety: float = 2.0,
    *,
    step2_tokens: int | None = None,
    floor: int = SHM_FLOOR_BYTES,
) -> int:
    """``/dev/shm`` bytes for a Triton server holding `instance_counts` of the contract's models.

    ``instance_counts`` must name every model of ``contract.MODELS`` (0 = not in this
    repository) and nothing else: a model added to the contract must be sized on purpose.
    """
    unknown = sorted(set(instance_counts) - set(_models()))
    missing = sorted(set(_models()) - set(instance_counts))
    if unknown or missing:
        raise ValueError(
            f"instance_counts must name exactly the contract's models "
            f"{sorted(_models())}; unknown {unknown}, missing {missing}"
        )
    if max_batch_size < 1 or max_history < 1 or max_candidates < 1:
        raise ValueError("max_batch_size, max_history and max_candidates must be >= 1")
    if safety < 1.0:
        raise ValueError("safety must be >= 1")
    t2 = _step2_tokens(dims, step2_tokens)
    total = 0
    for name, model in _models().items():
        count = int(instance_counts[name])
        if count < 0:
            raise ValueError(f"instance count of {name!r} must be >= 0")
        total += count * max_batch_size * model_request_bytes(model, dims, max_history, max_candidates, t2)
    need = math.ceil(total * safety / MIB) * MIB
    return max(need, floor)


def shm_size_for_preset(
    preset: str | ExperimentConfig, instance_counts: Mapping[str, int] | None = None, safety: float = 2.0
) -> int:
    cfg = config_preset(preset) if isinstance(preset, str) else preset
    counts = rendered_instance_counts() if instance_counts is None else dict(instance_counts)
    return shm_size_bytes(contract_dims(cfg), instance_counts=counts, safety=safety, **deploy_limits(cfg))


def format_size(nbytes: int) -> str:
    """Docker/compose size string: "2g" when a whole number of GiB, else "768m" (MiB, up)."""
    if nbytes % GIB == 0:
        return f"{nbytes // GIB}g"
    return f"{math.ceil(nbytes / MIB)}m"


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([bkmg]?)b?\s*$", re.IGNORECASE)
_SIZE_UNIT = {"": 1, "b": 1, "k": 1 << 10, "m": MIB, "g": GIB}


def parse_size(text: str | int) -> int:
    """Inverse of `format_size`; accepts docker's forms (512m, 2g, 2gb, 1024k, bytes)."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r}")
    return int(m.group(1)) * _SIZE_UNIT[m.group(2).lower()]


def parse_instance_counts(text: str) -> dict[str, int]:
    """ "generation=2,ranking=2" -> {"generation": 2, "ranking": 2}"""
    out: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"expected MODEL=COUNT, got {item!r}")
        out[name.strip()] = int(value)
    return out


def compose_shm_inputs(compose: dict, service: str) -> tuple[str, dict[str, int]]:
    """(preset, instance counts) a compose service declares in its labels
    ``oneranker.shm.preset`` and ``oneranker.instances`` (contract models the label does not
    name have no instance in that repository: 0)."""
    svc = compose["services"][service]
    labels = svc.get("labels") or {}
    if isinstance(labels, list):
        labels = dict(item.split("=", 1) for item in labels)
    try:
        preset_name, declared = labels["oneranker.shm.preset"], parse_instance_counts(labels["oneranker.instances"])
    except KeyError as e:
        raise ValueError(f"service {service!r} lacks label {e.args[0]!r}") from None
    unknown = sorted(set(declared) - set(_models()))
    if unknown:
        raise ValueError(f"service {service!r}: label oneranker.instances names unknown models {unknown}")
    return preset_name, {name: declared.get(name, 0) for name in _models()}
