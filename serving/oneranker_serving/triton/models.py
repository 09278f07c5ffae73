"""The Triton Python models of oneranker, with `pb_utils` injected: each `model_repository/<m>/1/
model.py` is `class TritonPythonModel(<Model>): pb = pb_utils`, so every line of logic here runs
under a fake `pb_utils` in unit tests.

    PreprocessModel   raw request -> validated tokens          (numpy_beam, graphs, cascade)
    RecommenderModel  raw request (fused) or tokens -> generate, beam search, rank -> top-k
                      (fused: both inside the graphs; numpy_beam and cascade: numpy beam search)
    GenerationModel   tokens + knobs -> generation graph -> candidates, kv    (graphs)
    RankingModel      kv + candidates -> ranking graph -> top-k               (graphs)
Every model answers a bad request with its own INVALID_ARG response (`errors.error_response`)
and the other requests of the dynamic batch normally.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oneranker_client import contract

from ..artifacts import load_recommender, load_system, load_validator, read_export_info
from ..recommender import Parsed, Recommender, StageTimes
from ..tokenize import RequestError
from . import arrays, batching
from .codec import TensorCodec
from .errors import error_response


def model_version(args: dict) -> int:
    """The version directory Triton loaded this model from: the release answering (status output)."""
    return int(args["model_version"])


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


class PythonModel:
    """Shared by every model: `pb` is triton_python_backend_utils (or a fake)."""

    pb = None

    def error(self, message: str):
        return error_response(self.pb, message)

    def respond(self, values: dict):
        return self.pb.InferenceResponse(
            output_tensors=[self.pb.Tensor(k, np.ascontiguousarray(v)) for k, v in values.items()]
        )

    def host_inputs(self, request, spec: contract.ModelSpec) -> dict:
        out = {}
        for t in spec.inputs:
            tensor = self.pb.get_input_tensor_by_name(request, t.name)
            out[t.name] = None if tensor is None else tensor.as_numpy()
        return out


class PreprocessModel(PythonModel):
    def initialize(self, args):
        params, artifacts = model_setup(args)
        self.validator = load_validator(artifacts, expected_checkpoint=params["checkpoint_sha256"])
        self.version = model_version(args)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                raw = arrays.request_from_arrays(self.host_inputs(request, contract.PUBLIC))
                responses.append(self.respond(arrays.tokens_to_arrays(self.validator, raw, self.version)))
            except RequestError as err:
                responses.append(self.error(str(err)))
        return responses


class RecommenderModel(PythonModel):
    """Topology (a) and the baselines: `request_format` raw (the fused model: validates and tokenizes
    itself) or tokens (after `preprocess`: the numpy beam search baseline and the cascade);
    `system` unified | cascade; `beam_search` graph | numpy. One generate and one rank per
    dynamic batch; stage times go to Prometheus counters."""

    STAGES = ("generate", "select", "rank")

    def initialize(self, args):
        params, artifacts = model_setup(args)
        self.recommender: Recommender = load_system(params, artifacts, device=instance_device(args))
        self.raw_inputs = params.get("request_format", "tokens") == "raw"
        # the fused model validates requests itself, so it reports the status outputs
        self.version = model_version(args) if self.raw_inputs else None
        labels = {"system": params.get("system", "unified"), "beam_search": params.get("beam_search", "numpy")}
        family = self.pb.MetricFamily
        # MetricFamily objects must outlive their Metrics: keep them on self.
        self.families = {
            "stage": family(
                name="oneranker_stage_seconds_total", description="cumulative seconds per stage", kind=family.COUNTER
            ),
            "candidates": family(
                name="oneranker_candidates_total", description="candidates ranked", kind=family.COUNTER
            ),
            "requests": family(
                name="oneranker_requests_total", description="requests answered by the recommender", kind=family.COUNTER
            ),
        }
        self.stage_metrics = {s: self.families["stage"].Metric(labels={"stage": s, **labels}) for s in self.STAGES}
        self.candidates = self.families["candidates"].Metric(labels=labels)
        self.requests_metric = self.families["requests"].Metric(labels=labels)

    def parse(self, requests, responses: list) -> list:
        """Requests -> Parsed; an invalid raw request gets its error response in `responses`."""
        if not self.raw_inputs:
            return [
                arrays.parsed_from_arrays(slot, self.host_inputs(request, contract.NUMPY_BEAM))
                for slot, request in enumerate(requests)
            ]
        parsed = []
        for slot, request in enumerate(requests):
            try:
                raw = arrays.request_from_arrays(self.host_inputs(request, contract.PUBLIC))
                parsed.append(Parsed(slot, *self.recommender.validate(raw)))
            except RequestError as err:
                responses[slot] = self.error(str(err))
        return parsed

    def execute(self, requests):
        responses = [None] * len(requests)
        parsed = self.parse(requests, responses)
        times = StageTimes()
        for p, result in zip(parsed, self.recommender.recommend_parsed(parsed, times)):
            responses[p.slot] = (
                self.error(str(result))
                if isinstance(result, RequestError)
                else self.respond(arrays.response_arrays(result, self.version))
            )
        for stage, seconds in zip(self.STAGES, (times.generate_s, times.select_s, times.rank_s)):
            self.stage_metrics[stage].increment(seconds)
        self.candidates.increment(float(times.candidates))
        self.requests_metric.increment(float(len(requests)))
        return responses


@dataclass
class GraphEngine:
    """What the `generation` and `ranking` models of the graphs topology hold."""

    recommender: Recommender  # its runner is built with bind_kv=False: the KV leaves the model
    codec: TensorCodec
    num_prefix: int  # F
    num_step2: int  # T2


def load_graph_engine(args: dict, pb) -> GraphEngine:
    """Triton's initialize() args of a generation/ranking model -> its runner (the in-graph beam
    search graphs), codec and dims."""
    params, artifacts = model_setup(args)
    rec = load_recommender(
        artifacts,
        engine=params["engine"],
        threads=int(params["intra_op_threads"]),
        expected_checkpoint=params["checkpoint_sha256"],
        device=instance_device(args),
        bind_kv=False,
        search="graph",
    )
    info = read_export_info(artifacts)
    return GraphEngine(rec, TensorCodec(pb, params["kv_transport"]), info["dims"]["F"], info["num_step2_tokens"])


class GenerationModel(PythonModel):
    """Topology `graphs`, first engine call: one generation-graph run per dynamic batch; each
    request gets its candidates and its KV (numpy, or by DLPack on its device: torch engine)."""

    def initialize(self, args):
        self.engine = load_graph_engine(args, self.pb)

    def execute(self, requests):
        e = self.engine
        items = [e.codec.inputs(r, contract.GENERATION) for r in requests]
        outs = batching.generate_graphs(e.recommender.runner, items, e.num_prefix, keep_device=e.codec.dlpack)
        return [self.pb.InferenceResponse(output_tensors=e.codec.outputs(o)) for o in outs]


class RankingModel(PythonModel):
    """Topology `graphs`, second engine call: one ranking-graph run per dynamic batch -> each
    request's top-k (public outputs, cut to its own count), or an INVALID_ARG when exclusions
    left it no candidate (the fused model's answer)."""

    def initialize(self, args):
        self.engine = load_graph_engine(args, self.pb)

    def execute(self, requests):
        e = self.engine
        items = [e.codec.inputs(r, contract.RANKING) for r in requests]
        responses = []
        for out in batching.rank_graphs(e.recommender.runner, items, e.num_prefix, e.num_step2):
            if int(out["rec_count"].min()) == 0:
                responses.append(self.error("no candidate left after exclusions"))
                continue
            values = {s.name: out[s.name].astype(s.numpy_dtype) for s in contract.RANKING.outputs if s.name in out}
            values["rec_count"] = out["rec_count"].astype(np.int64)  # [b]: the config reshapes [1] to []
            responses.append(self.respond(values))
        return responses
