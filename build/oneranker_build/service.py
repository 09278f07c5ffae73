"""Pure serving glue used by the Triton Python models (no pb_utils here, testable without a
server): load a rendered model's artifacts, turn request arrays into `serving.Parsed`, turn
responses into output arrays named by the contract.

    preprocess:  raw arrays (contract.PUBLIC inputs) -> token arrays (contract.PREPROCESS outputs)
    recommender: token arrays -> Parsed -> Recommender.recommend_parsed -> rec_* arrays
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from oneranker.config import ServeConfig
from oneranker.features import RequestError, UserTokens
from oneranker.serving import Parsed, Recommender, Request, Response
from oneranker_client import contract

from .tables import load_generation_tables


class ArtifactMismatch(RuntimeError):
    pass


def read_export_info(artifact_dir: Path, expected_checkpoint: str | None = None) -> dict:
    info = json.loads((Path(artifact_dir) / "export_info.json").read_text())
    if expected_checkpoint and info["checkpoint_sha256"] != expected_checkpoint:
        raise ArtifactMismatch(
            f"{artifact_dir}: artifacts belong to checkpoint {info['checkpoint_sha256'][:12]}, the model "
            f"config expects {expected_checkpoint[:12]}; re-run `oneranker build`"
        )
    return info


def serve_config(info: dict) -> ServeConfig:
    raw = dict(info["serve"])
    raw["length_buckets"] = tuple(raw["length_buckets"])
    return ServeConfig(**raw)


def load_recommender(artifact_dir: Path, engine: str, threads: int = 2, expected_checkpoint: str | None = None,
                     runner=None, bind_kv: bool = True, device: str = "cpu") -> Recommender:
    from .runners import make_runner

    artifact_dir = Path(artifact_dir)
    info = read_export_info(artifact_dir, expected_checkpoint)
    gen, items = load_generation_tables(artifact_dir / "generation_tables.safetensors",
                                        info["num_interest_heads"], info["num_value_heads"])
    runner = runner or make_runner(engine, artifact_dir, threads=threads, bind_kv=bind_kv, device=device)
    return Recommender(runner, items, gen, serve_config(info), info["feature_cardinality"], info["dims"]["F"])


CASCADE_HALVES = ("generator", "ranker")


def load_cascade_recommender(artifact_dir: Path, engine: str, threads: int = 2, expected_checkpoints: str | None = None,
                             device: str = "cpu") -> Recommender:
    """The served cascade baseline: artifact_dir/generator and artifact_dir/ranker are the exports
    of the two cascade runs. Candidates come from the generator export's level logits and tables,
    K/V and scores from the ranker export (which encodes the history again). `expected_checkpoints`
    is "GENERATOR_SHA,RANKER_SHA" (the rendered config's checkpoint_sha256)."""
    from oneranker.serving import CascadeRunner

    from .runners import make_runner

    artifact_dir = Path(artifact_dir)
    expected = expected_checkpoints.split(",") if expected_checkpoints else [None, None]
    if len(expected) != 2:
        raise ArtifactMismatch(f"the cascade expects two checkpoints (generator,ranker), got {expected_checkpoints!r}")
    gen_dir, rank_dir = (artifact_dir / half for half in CASCADE_HALVES)
    gen_info = read_export_info(gen_dir, expected[0])
    rank_info = read_export_info(rank_dir, expected[1])
    if gen_info["sid_version"] != rank_info["sid_version"]:
        raise ArtifactMismatch(f"cascade halves disagree on semantic IDs: {gen_info['sid_version']} "
                               f"!= {rank_info['sid_version']}")
    runner = CascadeRunner(make_runner(engine, gen_dir, threads=threads, bind_kv=False, device=device),
                           make_runner(engine, rank_dir, threads=threads, bind_kv=True, device=device))
    return load_recommender(gen_dir, engine, runner=runner)


def load_pipeline(params: dict, artifacts: Path, device: str = "cpu") -> Recommender:
    """The Recommender a fused-style model serves: `pipeline` unified (OneRanker) or cascade."""
    pipeline = params.get("pipeline", "unified")
    threads = int(params["intra_op_threads"])
    if pipeline == "cascade":
        return load_cascade_recommender(artifacts, params["engine"], threads, params["checkpoint_sha256"], device)
    if pipeline != "unified":
        raise ValueError(f"unknown pipeline {pipeline!r}: unified or cascade")
    return load_recommender(artifacts, engine=params["engine"], threads=threads,
                            expected_checkpoint=params["checkpoint_sha256"], device=device)


def model_setup(args: dict) -> tuple[dict, Path]:
    """Triton's initialize() args -> (string parameters of config.pbtxt, the version's artifacts dir)."""
    config = json.loads(args["model_config"])
    params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    return params, Path(args["model_repository"]) / args["model_version"] / "artifacts"


def instance_device(args: dict) -> str:
    """Triton's model-instance args -> torch device ("cuda:N" for KIND_GPU instances)."""
    if args.get("model_instance_kind") == "GPU":
        return f"cuda:{args.get('model_instance_device_id', 0)}"
    return "cpu"


def _first(value, name: str):
    arr = np.asarray(value).reshape(-1)
    if arr.size != 1:
        raise RequestError(f"{name} must hold exactly one value, got {arr.size}")
    return arr[0]


def _check_batch_one(arrays: dict) -> None:
    for name, value in arrays.items():
        if value is not None and np.asarray(value).shape[:1] != (1,):
            raise RequestError(f"{name} must have a leading batch dimension of 1, got shape {np.shape(value)}")


def request_from_arrays(arrays: dict) -> Request:
    """contract.PUBLIC input arrays ([1, ...] each; optional ones may be None) -> Request."""
    _check_batch_one(arrays)
    for spec in contract.PUBLIC.inputs:
        value = arrays.get(spec.name)
        if value is None:
            if not spec.optional:
                raise RequestError(f"missing input {spec.name}")
            continue
        if np.asarray(value).dtype != spec.numpy_dtype:
            raise RequestError(f"{spec.name} must be {spec.wire_dtype}, got {np.asarray(value).dtype}")
        if np.asarray(value).ndim != len(spec.dims) + 1:
            raise RequestError(f"{spec.name} must have {len(spec.dims) + 1} dims (batch first), got {np.ndim(value)}")
    if np.issubdtype(arrays["timestamps"].dtype, np.floating) and not np.isfinite(arrays["timestamps"]).all():
        raise RequestError("timestamps must be finite")

    def option(name):
        value = arrays.get(name)
        return None if value is None else int(_first(value, name))

    exclude = arrays.get("exclude_item_ids")
    return Request(
        user_features=arrays["user_features"][0],
        item_ids=arrays["item_ids"][0],
        actions=arrays["actions"][0],
        timestamps=arrays["timestamps"][0],
        request_time=int(_first(arrays["request_time"], "request_time")),
        top_k=option("top_k"),
        num_candidates=option("num_candidates"),
        beam_width=option("beam_width"),
        exclude_item_ids=np.zeros(0, np.int64) if exclude is None else exclude[0],
    )


def tokens_to_arrays(rec: Recommender, req: Request) -> dict[str, np.ndarray]:
    """Validate + tokenize one raw request -> contract.PREPROCESS outputs (batch dim 1, history
    right-padded to its length bucket so same-bucket requests batch in shape-strict engines)."""
    from oneranker.features import bucket_for, pad_batch

    tokens, k, n, w, exclude = rec.validate(req)
    padded = pad_batch([tokens], bucket_for(tokens.length, rec.serve.length_buckets))  # one shape per bucket
    return {
        "user_features": padded["user_features"],
        "hist_sids": padded["hist_sids"],
        "hist_actions": padded["hist_actions"],
        "hist_dt": padded["hist_dt"],
        "hist_len": np.array([[tokens.length]], dtype=np.int64),
        "options": np.array([[k, n, w]], dtype=np.int32),
        "exclude_idx": exclude.astype(np.int64)[None],
    }


def parsed_from_arrays(slot: int, arrays: dict) -> Parsed:
    """contract.PREPROCESS outputs of one request -> Parsed (padding stripped by hist_len)."""
    length = int(np.asarray(arrays["hist_len"]).reshape(-1)[0])
    k, n, w = (int(x) for x in np.asarray(arrays["options"]).reshape(-1))
    tokens = UserTokens(
        user_features=np.asarray(arrays["user_features"])[0],
        hist_sids=np.asarray(arrays["hist_sids"])[0, :length],
        hist_actions=np.asarray(arrays["hist_actions"])[0, :length],
        hist_dt=np.asarray(arrays["hist_dt"])[0, :length],
    )
    return Parsed(slot, tokens, k, n, w, np.asarray(arrays["exclude_idx"]).reshape(-1))


def response_arrays(resp: Response) -> dict[str, np.ndarray]:
    """Response -> contract.PUBLIC outputs, batch dim 1."""
    values = {"rec_item_ids": resp.item_ids, "rec_scores": resp.scores, "rec_gen_logp": resp.gen_logp,
              "rec_source_head": resp.source_head}
    return {spec.name: np.asarray(values[spec.name], dtype=spec.numpy_dtype)[None] for spec in contract.PUBLIC.outputs}


class _NoRunner:
    """Runner of a model that only validates (preprocess): calling it is a bug."""

    def generate(self, inputs):
        raise RuntimeError("the preprocess model has no engine")

    rank = generate


NO_RUNNER = _NoRunner()


# ----------------------------------------------------------------------------- split topologies
# (b) BLS and (c) ensemble run generator, selection and ranker as separate Triton models. These
# helpers batch several requests into one engine call and split the results again.


def _rows(value) -> int:
    return int(np.asarray(value).shape[0])


def stack_generator_inputs(items: list[dict]) -> tuple[dict, list[int]]:
    """Generator inputs of several Triton requests (each [b_i, L_i, ...], history padded to L_i)
    -> one batch padded to the longest L; returns each request's own L."""
    own = [int(np.asarray(a["hist_actions"]).shape[1]) for a in items]
    length = max(own)

    def cat(name, dtype, pad_axis=1):
        parts = []
        for a in items:
            v = np.asarray(a[name], dtype=dtype)
            if pad_axis is not None and v.shape[pad_axis] < length:
                widths = [(0, 0)] * v.ndim
                widths[pad_axis] = (0, length - v.shape[pad_axis])
                v = np.pad(v, widths)
            parts.append(v)
        return np.concatenate(parts)

    batch = {
        "user_features": cat("user_features", np.int64, None),
        "hist_sids": cat("hist_sids", np.int64),
        "hist_actions": cat("hist_actions", np.int64),
        "hist_dt": cat("hist_dt", np.float32),
        "hist_len": np.concatenate([np.asarray(a["hist_len"], np.int64).reshape(-1) for a in items]),
    }
    return batch, own


def _is_torch(value) -> bool:
    return type(value).__module__.startswith("torch")


def _concat(parts: list, axis: int):
    """np.concatenate or torch.cat, whichever the parts are (KV stays where it lives)."""
    if _is_torch(parts[0]):
        import torch

        return torch.cat(parts, dim=axis)
    return np.concatenate(parts, axis=axis)


def _contiguous(value):
    return value.contiguous() if _is_torch(value) else np.ascontiguousarray(value)


def relayout_kv(kv, num_prefix: int, from_len: int, to_len: int):
    """kv [..., F + from_len + T2, DM] -> [..., F + to_len + T2, DM]: the H1 segment is cut or
    zero-padded, the H2 segment stays last (positions past the true length are masked anyway).
    numpy in, numpy out; torch in, torch out on the same device."""
    if from_len == to_len:
        return kv
    h1_end = num_prefix + from_len
    h1, h2 = kv[..., :h1_end, :], kv[..., h1_end:, :]
    if to_len < from_len:
        h1 = h1[..., : num_prefix + to_len, :]
    else:
        shape = tuple(kv.shape[:-2]) + (to_len - from_len, kv.shape[-1])
        pad = kv.new_zeros(shape) if _is_torch(kv) else np.zeros(shape, dtype=kv.dtype)
        h1 = _concat([h1, pad], axis=-2)
    return _concat([h1, h2], axis=-2)


def split_generator_outputs(items: list[dict], level_logits: np.ndarray, kv, own: list[int],
                            num_prefix: int) -> list[dict]:
    """One batch of generator outputs -> per-request outputs, kv (numpy, or torch on its device)
    laid out for the request's L."""
    out, row, length = [], 0, max(own)
    for a, n in zip(items, own):
        b = _rows(a["hist_actions"])
        out.append({"level_logits": level_logits[row:row + b],
                    "kv": _contiguous(relayout_kv(kv[row:row + b], num_prefix, length, n))})
        row += b
    return out


def stack_ranker_inputs(items: list[dict], num_prefix: int, num_step2: int) -> tuple[dict, list[tuple[int, int]]]:
    """Ranker inputs of several requests (kv [b_i, R2, S_i, DM], candidates [b_i, n_i, ...]) ->
    one batch (kv re-laid out to the longest history, candidates zero-padded to the widest);
    returns (rows, candidates) per request."""
    lengths = [a["kv"].shape[2] - num_prefix - num_step2 for a in items]
    longest = max(lengths)
    shapes = [(_rows(a["cand_bid"]), int(np.asarray(a["cand_bid"]).shape[1])) for a in items]
    width = max(1, max(n for _, n in shapes))
    kv = _concat([relayout_kv(a["kv"], num_prefix, n, longest) for a, n in zip(items, lengths)], axis=0)

    def pad(name, dtype):
        parts = []
        for a in items:
            v = np.asarray(a[name], dtype=dtype)
            widths = [(0, 0)] * v.ndim
            widths[1] = (0, width - v.shape[1])
            parts.append(np.pad(v, widths))
        return np.concatenate(parts)

    batch = {"kv": kv, "hist_len": np.concatenate([np.asarray(a["hist_len"], np.int64).reshape(-1) for a in items]),
             "cand_sids": pad("cand_sids", np.int64), "cand_attrs": pad("cand_attrs", np.int64),
             "cand_bid": pad("cand_bid", np.float32)}
    return batch, shapes


def split_scores(scores: np.ndarray, shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    out, row = [], 0
    for b, n in shapes:
        out.append(np.ascontiguousarray(scores[row:row + b, :n]))
        row += b
    return out


def select_arrays(rec: Recommender, level_logits: np.ndarray, options: np.ndarray, exclude_idx: np.ndarray) -> dict:
    """Selection step of topologies (b)/(c): one request's level logits -> candidate tensors."""
    from oneranker.selection import beam_search, merge_candidates

    k, n, w = (int(x) for x in np.asarray(options).reshape(-1))
    ads, lp, head = merge_candidates(*beam_search(np.asarray(level_logits)[0], rec.gen_tables, w), n,
                                     np.asarray(exclude_idx).reshape(-1))
    if len(ads) == 0:
        raise RequestError("no candidate left after exclusions")
    sids, attrs, bid = rec.tables.candidate_features(ads)
    return {"cand_sids": sids[None], "cand_attrs": attrs[None], "cand_bid": bid[None],
            "cand_item_ids": rec.tables.ad_ids[ads].astype(np.int64)[None],
            "cand_logp": lp.astype(np.float32)[None], "cand_head": head.astype(np.int32)[None]}


def topk_arrays(scores, cand_item_ids, cand_logp, cand_head, options) -> dict:
    """Final step of topologies (b)/(c): value scores -> contract.PUBLIC outputs."""
    from oneranker.selection import top_k

    k = int(np.asarray(options).reshape(-1)[0])
    scores = np.asarray(scores).reshape(-1)
    best = top_k(scores, k)
    resp = Response(item_ids=np.asarray(cand_item_ids).reshape(-1)[best], scores=scores[best],
                    gen_logp=np.asarray(cand_logp).reshape(-1)[best], source_head=np.asarray(cand_head).reshape(-1)[best])
    return response_arrays(resp)


def generate_split(runner, batch: dict, keep_device: bool = False) -> tuple[np.ndarray, Any]:
    """Run the generator for topologies (b)/(c), where the KV leaves the runner as a tensor of
    the Triton model (the runner is built with `bind_kv=False`). level_logits come back on the
    host (beam search is numpy); the KV as numpy, or, with `keep_device` (torch engine, DLPack
    transport), as the torch tensor on the runner's device."""
    level_logits, kv = runner.generate(batch)
    value = getattr(kv, "value", kv)
    if _is_torch(value) and not keep_device:
        value = value.detach().cpu().numpy()
    return np.asarray(level_logits), value if _is_torch(value) else np.asarray(value)


def rank_split(runner, batch: dict) -> np.ndarray:
    """Run the ranker on a KV that came from another model (numpy, or torch via DLPack)."""
    return np.asarray(runner.rank(batch["kv"], batch["hist_len"], batch["cand_sids"], batch["cand_attrs"],
                                  batch["cand_bid"]))


# ----------------------------------------------------------------------------- tensor transport
KV_TRANSPORTS = ("numpy", "dlpack")


def kv_memory(spec: str):
    """Render parameter `kv_memory` ("cpu" or "gpu:N") -> (is_gpu, device id)."""
    kind, _, device = spec.partition(":")
    if kind not in ("cpu", "gpu"):
        raise ValueError(f"kv_memory must be cpu or gpu:N, got {spec!r}")
    return kind == "gpu", int(device or 0)


@dataclass
class SplitEngine:
    """What the `generator` and `ranker` Python models (topologies b/c) hold."""

    recommender: Recommender  # its runner is built with bind_kv=False: the KV leaves the model
    codec: "TensorCodec"
    num_prefix: int  # F
    num_step2: int  # T2


def load_split_engine(args: dict, pb) -> SplitEngine:
    """Triton's initialize() args of a generator/ranker model -> its runner, codec and dims."""
    params, artifacts = model_setup(args)
    rec = load_recommender(artifacts, engine=params["engine"], threads=int(params["intra_op_threads"]),
                           expected_checkpoint=params["checkpoint_sha256"], device=instance_device(args), bind_kv=False)
    info = read_export_info(artifacts)
    return SplitEngine(rec, TensorCodec(pb, params["kv_transport"]), info["dims"]["F"], info["num_step2_tokens"])


class TensorCodec:
    """pb_utils.Tensor <-> arrays for one Python model (`pb` is triton_python_backend_utils,
    injected so this stays testable without a server).

    transport "numpy": every tensor is a host numpy array (ONNX Runtime engine).
    transport "dlpack" (torch engine): the KV moves as a torch tensor through DLPack, zero copy and
    on the device it lives on (GPU memory for KIND_GPU instances); token and score tensors, which
    the numpy selection code reads, come to the host. BLS requests ask for outputs in `kv_memory`
    (Triton's preferred_memory), so a generator's KV reaches the orchestrator on the GPU."""

    def __init__(self, pb, transport: str = "numpy", memory: str = "cpu"):
        if transport not in KV_TRANSPORTS:
            raise ValueError(f"kv_transport must be one of {KV_TRANSPORTS}, got {transport!r}")
        self.pb, self.dlpack = pb, transport == "dlpack"
        self.gpu, self.device_id = kv_memory(memory)

    def host(self, tensor) -> np.ndarray:
        """Any input/output tensor -> numpy on the host."""
        if tensor.is_cpu():
            return tensor.as_numpy()
        from torch.utils.dlpack import from_dlpack

        return from_dlpack(tensor.to_dlpack()).cpu().numpy()

    def kv(self, tensor):
        """The KV tensor -> torch (DLPack, where it lives) or numpy."""
        if not self.dlpack:
            return self.host(tensor)
        from torch.utils.dlpack import from_dlpack

        return from_dlpack(tensor.to_dlpack())

    def tensor(self, name: str, value):
        """numpy or torch -> pb_utils.Tensor (torch tensors by DLPack, no copy)."""
        if _is_torch(value):
            from torch.utils.dlpack import to_dlpack

            return self.pb.Tensor.from_dlpack(name, to_dlpack(value.contiguous()))
        return self.pb.Tensor(name, np.ascontiguousarray(value))

    def inputs(self, request, spec: "contract.ModelSpec") -> dict:
        """One request's inputs named by `spec`: kv via `kv()`, everything else on the host."""
        out = {}
        for t in spec.inputs:
            tensor = self.pb.get_input_tensor_by_name(request, t.name)
            out[t.name] = self.kv(tensor) if t.name == "kv" else self.host(tensor)
        return out

    def preferred_memory(self):
        """preferred_memory for BLS requests: where the callee's outputs (the KV) should land."""
        kind = self.pb.TRITONSERVER_MEMORY_GPU if self.gpu else self.pb.TRITONSERVER_MEMORY_CPU
        return self.pb.PreferredMemory(kind, self.device_id)
