"""The Triton Python models of oneranker, with `pb_utils` injected: each `model_repository/<m>/1/
model.py` is `class TritonPythonModel(<Model>): pb = pb_utils`, so every line of logic here runs
under a fake `pb_utils` in unit tests.

    PreprocessModel   raw request -> validated tokens          (numpy_beam, BLS, ensemble, cascade)
    RecommenderModel  raw request (fused) or tokens -> generate, beam search, rank -> top-k
                      (fused: both inside the graphs; numpy_beam and cascade: numpy beam search)
    GenerationModel   tokens + knobs -> generation graph -> candidates, kv    (graphs)
    RankingModel      kv + candidates -> ranking graph -> top-k               (graphs)
    GeneratorModel    tokens -> level_logits, kv                              (BLS, ensemble)
    SelectModel       level_logits -> candidates                              (ensemble)
    RankerModel       kv + candidates -> scores                               (BLS, ensemble)
    TopkModel         scores -> top-k                                         (ensemble)
    BlsModel          tokens -> BLS generator -> beam search -> BLS ranker    (BLS)
Every model answers a bad request with its own INVALID_ARG response (`errors.error_response`)
and the other requests of the dynamic batch normally.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oneranker_client import contract

from ..artifacts import load_recommender, load_selector, load_system, load_validator, read_export_info
from ..recommender import Parsed, Recommender, StageTimes
from ..tokenize import RequestError
from . import arrays, batching
from .codec import TensorCodec
from .errors import error_response


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

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                raw = arrays.request_from_arrays(self.host_inputs(request, contract.PUBLIC))
                responses.append(self.respond(arrays.tokens_to_arrays(self.validator, raw)))
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
                else self.respond(arrays.response_arrays(result))
            )
        for stage, seconds in zip(self.STAGES, (times.generate_s, times.select_s, times.rank_s)):
            self.stage_metrics[stage].increment(seconds)
        self.candidates.increment(float(times.candidates))
        self.requests_metric.increment(float(len(requests)))
        return responses


@dataclass
class SplitEngine:
    """What the `generator` and `ranker` models of the split topologies hold."""

    recommender: Recommender  # its runner is built with bind_kv=False: the KV leaves the model
    codec: TensorCodec
    num_prefix: int  # F
    num_step2: int  # T2


def load_split_engine(args: dict, pb, search: str = "numpy") -> SplitEngine:
    """Triton's initialize() args of a generator/ranker (search "numpy": level-logit graphs) or
    generation/ranking model (search "graph") -> its runner, codec and dims."""
    params, artifacts = model_setup(args)
    rec = load_recommender(
        artifacts,
        engine=params["engine"],
        threads=int(params["intra_op_threads"]),
        expected_checkpoint=params["checkpoint_sha256"],
        device=instance_device(args),
        bind_kv=False,
        search=search,
    )
    info = read_export_info(artifacts)
    return SplitEngine(rec, TensorCodec(pb, params["kv_transport"]), info["dims"]["F"], info["num_step2_tokens"])


class GeneratorModel(PythonModel):
    def initialize(self, args):
        self.engine = load_split_engine(args, self.pb)

    def execute(self, requests):
        e = self.engine
        items = [e.codec.inputs(r, contract.GENERATOR) for r in requests]
        batch, own = batching.stack_generator_inputs(items)
        level_logits, kv = batching.generate_split(e.recommender.runner, batch, keep_device=e.codec.dlpack)
        outs = batching.split_generator_outputs(items, level_logits, kv, own, e.num_prefix)
        return [self.pb.InferenceResponse(output_tensors=e.codec.outputs(o)) for o in outs]


class GenerationModel(PythonModel):
    """Topology `graphs`, first engine call: one generation-graph run per dynamic batch; each
    request gets its candidates and its KV (numpy, or by DLPack on its device: torch engine)."""

    def initialize(self, args):
        self.engine = load_split_engine(args, self.pb, search="graph")

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
        self.engine = load_split_engine(args, self.pb, search="graph")

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


class RankerModel(PythonModel):
    def initialize(self, args):
        self.engine = load_split_engine(args, self.pb)

    def execute(self, requests):
        e = self.engine
        items = [e.codec.inputs(r, contract.RANKER) for r in requests]
        batch, shapes = batching.stack_ranker_inputs(items, e.num_prefix, e.num_step2)
        scores = batching.rank_split(e.recommender.runner, batch)
        return [
            self.pb.InferenceResponse(output_tensors=e.codec.outputs({"scores": s}))
            for s in batching.split_scores(scores, shapes)
        ]


class SelectModel(PythonModel):
    def initialize(self, args):
        params, artifacts = model_setup(args)
        validator, self.gen_tables = load_selector(artifacts, expected_checkpoint=params["checkpoint_sha256"])
        self.tables = validator.tables

    def execute(self, requests):
        responses = []
        for request in requests:
            a = self.host_inputs(request, contract.SELECT)
            try:
                responses.append(
                    self.respond(
                        arrays.select_arrays(
                            self.tables, self.gen_tables, a["level_logits"], a["options"], a["exclude_idx"]
                        )
                    )
                )
            except RequestError as err:
                responses.append(self.error(str(err)))
        return responses


class TopkModel(PythonModel):
    def initialize(self, args):
        pass

    def execute(self, requests):
        responses = []
        for request in requests:
            a = self.host_inputs(request, contract.TOPK)
            responses.append(
                self.respond(
                    arrays.topk_arrays(a["scores"], a["cand_item_ids"], a["cand_logp"], a["cand_head"], a["options"])
                )
            )
        return responses


class SubRequestError(Exception):
    """A BLS call to a composing model failed; the message names the model."""


class BlsModel(PythonModel):
    """Topology (b): one BLS call to `generator` for the whole batch, beam search per request, one
    BLS call to `ranker`, top-k. With the torch engine the KV moves by DLPack and the BLS calls ask
    for it in `kv_memory` (preferred_memory), so on a GPU it never leaves the device."""

    def initialize(self, args):
        params, artifacts = model_setup(args)
        validator, self.gen_tables = load_selector(artifacts, expected_checkpoint=params["checkpoint_sha256"])
        self.tables = validator.tables
        info = read_export_info(artifacts)
        self.num_prefix, self.num_step2 = info["dims"]["F"], info["num_step2_tokens"]
        self.codec = TensorCodec(self.pb, params["kv_transport"], params["kv_memory"])

    def call(self, model_name: str, tensors: dict, output_names) -> dict:
        """One BLS request; a failed sub-request raises SubRequestError (the one place that checks)."""
        pb, codec = self.pb, self.codec
        request = pb.InferenceRequest(
            model_name=model_name,
            requested_output_names=list(output_names),
            inputs=codec.outputs(tensors),
            preferred_memory=codec.preferred_memory(),
        )
        response = request.exec()
        if response.has_error():
            raise SubRequestError(f"{model_name}: {response.error().message()}")
        outputs = {name: pb.get_output_tensor_by_name(response, name) for name in output_names}
        return {name: codec.kv(t) if name == "kv" else codec.host(t) for name, t in outputs.items()}

    def execute(self, requests):
        items = [self.codec.inputs(r, contract.BLS) for r in requests]
        try:
            batch, own = batching.stack_generator_inputs(items)
            batch["hist_len"] = batch["hist_len"].reshape(-1, 1)
            gen = self.call(contract.GENERATOR_MODEL, batch, ("level_logits", "kv"))
            per_request = batching.split_generator_outputs(items, gen["level_logits"], gen["kv"], own, self.num_prefix)
        except SubRequestError as err:
            return [self.error(str(err)) for _ in requests]
        responses = [None] * len(requests)
        ranked = []
        for i, (item, out) in enumerate(zip(items, per_request)):
            try:
                cands = arrays.select_arrays(
                    self.tables, self.gen_tables, out["level_logits"], item["options"], item["exclude_idx"]
                )
                ranked.append((i, cands, {"kv": out["kv"], "hist_len": item["hist_len"].reshape(1, 1), **cands}))
            except RequestError as err:
                responses[i] = self.error(str(err))
        if ranked:
            try:
                batch, shapes = batching.stack_ranker_inputs([r[2] for r in ranked], self.num_prefix, self.num_step2)
                batch["hist_len"] = batch["hist_len"].reshape(-1, 1)
                scores = self.call(contract.RANKER_MODEL, batch, ("scores",))["scores"]
                for (i, cands, _), row_scores in zip(ranked, batching.split_scores(scores, shapes)):
                    responses[i] = self.respond(
                        arrays.topk_arrays(
                            row_scores,
                            cands["cand_item_ids"],
                            cands["cand_logp"],
                            cands["cand_head"],
                            items[i]["options"],
                        )
                    )
            except SubRequestError as err:
                for i, _, _ in ranked:
                    responses[i] = self.error(str(err))
        return responses
