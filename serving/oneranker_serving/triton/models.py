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
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oneranker_client import contract

from ..artifacts import ArtifactMismatch, load_recommender, load_system, load_validator, read_export_info
from ..recommender import Parsed, Recommender, RequestCancelled, StageTimes
from ..tokenize import RequestError
from . import arrays, batching
from .codec import TensorCodec
from .counters import DEFAULT_INTERVAL_MS, DeferredCounters
from .errors import error_response


def model_version(args: dict) -> int:
    """The version directory Triton loaded this model from: the release answering (status output)."""
    return int(args["model_version"])


def model_setup(args: dict) -> tuple[dict, Path]:
    """Triton's initialize() args -> (string parameters of config.pbtxt, the version's artifacts dir).

    The config is rendered for one release (`release_version`) and names its checkpoint; the
    previous release, kept loaded beside it during a rollout, is checked against the contract
    version only (its own artifacts say which checkpoint it is)."""
    config = json.loads(args["model_config"])
    params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    artifacts = Path(args["model_repository"]) / args["model_version"] / "artifacts"
    release = params.get("release_version")
    if release is not None and int(release) != model_version(args):
        info = read_export_info(artifacts)
        if str(info["contract_version"]) != params["contract_version"]:
            raise ArtifactMismatch(
                f"version {args['model_version']} was built for contract v{info['contract_version']}, the config "
                f"(release {release}) is v{params['contract_version']}: it cannot be served beside that release"
            )
        params["checkpoint_sha256"] = ""  # not this release's checkpoint: no check
    return params, artifacts


def instance_device(args: dict) -> str:
    """Triton's model-instance args -> torch device ("cuda:N" for KIND_GPU instances)."""
    if args.get("model_instance_kind") == "GPU":
        return f"cuda:{args.get('model_instance_device_id', 0)}"
    return "cpu"


# Fault injection for tests of the request lifecycle: seconds slept after each stage of the fused
# model and after preprocess (so a cancellation or a deadline can land between stages, or between
# ensemble steps). Unset in production.
STAGE_DELAY_ENV = "ONERANKER_STAGE_DELAY_S"


def stage_delay_s() -> float:
    return float(os.environ.get(STAGE_DELAY_ENV, "0") or 0)


# A cancellation check is an IPC round trip to the server (perf/results/backend_ipc: ~30-60 us on
# 2 cores), so a stage boundary checks only when this long has passed since the batch's last
# check, the first one counting from the moment the batch reached `execute`: checks cost at most
# ~10% of the work, and a request cancelled in between costs at most this much work plus the
# stage it is in. Triton's dynamic batcher drops a request cancelled while it waits in the queue,
# but not one already in a batch formed ahead of time under load: that one stops at the first
# boundary that checks. Boundaries after longer stages (or a test's stage delay) always check.
DEFAULT_CANCEL_CHECK_INTERVAL_US = 500


def is_cancelled(request) -> bool:
    """Triton's `request.is_cancelled()` (the client cancelled, or its gRPC deadline passed)."""
    check = getattr(request, "is_cancelled", None)
    return bool(check is not None and check())


class PythonModel:
    """Shared by every model: `pb` is triton_python_backend_utils (or a fake)."""

    pb = None

    def error(self, message: str):
        return error_response(self.pb, message)

    def cancelled_response(self, stage: str):
        return error_response(self.pb, f"request cancelled before {stage}", self.pb.TritonError.CANCELLED)

    def split_cancelled(self, requests, stage: str) -> tuple[list, list[int]]:
        """-> (responses with CANCELLED where the request was cancelled while it queued, else
        None; the slots still to answer)."""
        responses = [self.cancelled_response(stage) if is_cancelled(r) else None for r in requests]
        return responses, [i for i, r in enumerate(responses) if r is None]

    def answer_live(self, requests, stage: str, answer) -> list:
        """`answer(request)` for every request not cancelled while it queued; a cancelled one
        gets a CANCELLED response and no work (the model's entry is a stage boundary)."""
        return [self.cancelled_response(stage) if is_cancelled(r) else answer(r) for r in requests]

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
        self.stage_delay_s = stage_delay_s()

    def execute(self, requests):
        responses = self.answer_live(requests, "preprocess", self.answer)
        if self.stage_delay_s > 0:
            time.sleep(self.stage_delay_s)
        return responses

    def answer(self, request):
        try:
            raw = arrays.request_from_arrays(self.host_inputs(request, contract.PUBLIC))
            return self.respond(arrays.tokens_to_arrays(self.validator, raw, self.version))
        except RequestError as err:
            return self.error(str(err))


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
        self.families["cancelled"] = family(
            name="oneranker_cancelled_total",
            description="requests dropped because the client cancelled them (or its deadline passed), by the "
            "stage that did not run",
            kind=family.COUNTER,
        )
        self.cancelled_metrics = {
            s: self.families["cancelled"].Metric(labels={"stage": s, **labels}) for s in self.CANCEL_STAGES
        }
        self.stage_delay_s = stage_delay_s()
        interval_us = params.get("cancel_check_interval_us", DEFAULT_CANCEL_CHECK_INTERVAL_US)
        self.cancel_check_interval_s = float(interval_us) / 1e6
        interval_ms = float(params.get("counter_interval_ms", DEFAULT_INTERVAL_MS))
        self.counters = DeferredCounters(interval_ms / 1e3, self.log_error)

    def finalize(self):
        """Triton unloads the instance: the counters still pending are sent."""
        self.counters.close()

    # Stage boundaries where a cancelled request stops: before validation, before the generation
    # graph, before the ranking graph. Each checks once `cancel_check_interval_s` has passed since
    # the batch's last check, or since it reached `execute` (DEFAULT_CANCEL_CHECK_INTERVAL_US):
    # before validation, only when the interval is 0.
    CANCEL_STAGES = ("validate", "generate", "rank")

    def drop_cancelled(self, requests, items: list, stage: str, responses: list, slot_of, cancelled: Counter) -> list:
        """The items whose request is still wanted; a cancelled one gets its CANCELLED response
        and counts in `cancelled[stage]` (oneranker_cancelled_total{stage}, sent by `record`)."""
        kept = []
        for item in items:
            slot = slot_of(item)
            if is_cancelled(requests[slot]):
                responses[slot] = self.cancelled_response(stage)
                cancelled[stage] += 1
            else:
                kept.append(item)
        return kept

    def pause(self) -> None:
        if self.stage_delay_s > 0:
            time.sleep(self.stage_delay_s)

    def parse(self, requests, slots: list[int], responses: list) -> list:
        """requests[slots] -> Parsed; an invalid raw request gets its error response in `responses`."""
        if not self.raw_inputs:
            return [
                arrays.parsed_from_arrays(slot, self.host_inputs(requests[slot], contract.NUMPY_BEAM)) for slot in slots
            ]
        parsed = []
        for slot in slots:
            try:
                raw = arrays.request_from_arrays(self.host_inputs(requests[slot], contract.PUBLIC))
                parsed.append(Parsed(slot, *self.recommender.validate(raw)))
            except RequestError as err:
                responses[slot] = self.error(str(err))
        return parsed

    def execute(self, requests):
        """Answers the batch: one response per request, returned (one IPC message for all of
        them). Its counters are only added to the stub's pending sums (`counters`): they reach
        Prometheus from a background thread, off every request's latency."""
        responses, times, cancelled = self.answer(requests)
        self.record(len(requests), times, cancelled)
        return responses

    def answer(self, requests) -> tuple[list, StageTimes, Counter]:
        """-> (one response per request, the batch's stage times, cancelled requests per stage).
        Stage boundaries (validate | generate | rank) drop cancelled requests: theirs is a
        CANCELLED response and none of their later stages runs. A boundary checks once
        `cancel_check_interval_s` has passed since the batch's last check, the first counting from
        the batch's arrival; so with the default interval the validate boundary never checks (a
        request cancelled while it queued is Triton's to drop) and the first check comes before
        the ranking graph, or before generation after a slow validation."""
        responses = [None] * len(requests)
        cancelled: Counter = Counter()
        last_check = [time.perf_counter()]

        def check_due() -> bool:
            now = time.perf_counter()
            if now - last_check[0] < self.cancel_check_interval_s:
                return False
            last_check[0] = now
            return True

        live = list(range(len(requests)))
        if check_due():
            live = self.drop_cancelled(requests, live, "validate", responses, lambda slot: slot, cancelled)
        parsed = self.parse(requests, live, responses)
        self.pause()
        if check_due():
            parsed = self.drop_cancelled(requests, parsed, "generate", responses, lambda p: p.slot, cancelled)

        def still_wanted(batch: list) -> list:
            self.pause()
            if not check_due():
                return [True] * len(batch)
            return [not is_cancelled(requests[p.slot]) for p in batch]

        times = StageTimes()
        for p, result in zip(parsed, self.recommender.recommend_parsed(parsed, times, still_wanted)):
            if isinstance(result, RequestCancelled):
                responses[p.slot] = self.cancelled_response("rank")
                cancelled["rank"] += 1
            elif isinstance(result, RequestError):
                responses[p.slot] = self.error(str(result))
            else:
                responses[p.slot] = self.respond(arrays.response_arrays(result, self.version))
        return responses, times, cancelled

    def record(self, num_requests: int, times: StageTimes, cancelled: Counter) -> None:
        """Adds the batch's counters to the pending sums (a zero one is not sent): stage seconds
        (`select` is 0 when the graph searches), candidates, requests, cancelled requests per
        stage. Sending them is `counters`' thread's; a failure there is logged, never raised."""
        self.counters.add(
            [
                *zip((self.stage_metrics[s] for s in self.STAGES), (times.generate_s, times.select_s, times.rank_s)),
                (self.candidates, times.candidates),
                (self.requests_metric, num_requests),
                *((self.cancelled_metrics[stage], count) for stage, count in cancelled.items()),
            ]
        )

    def log_error(self, message: str) -> None:
        logger = getattr(self.pb, "Logger", None)
        if logger is not None:
            logger.log_error(message)
        else:
            print(message, file=sys.stderr)


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
        responses, live = self.split_cancelled(requests, "generation")
        if live:
            items = [e.codec.inputs(requests[i], contract.GENERATION) for i in live]
            outs = batching.generate_graphs(e.recommender.runner, items, e.num_prefix, keep_device=e.codec.dlpack)
            for i, out in zip(live, outs):
                responses[i] = self.pb.InferenceResponse(output_tensors=e.codec.outputs(out))
        return responses


class RankingModel(PythonModel):
    """Topology `graphs`, second engine call: one ranking-graph run per dynamic batch -> each
    request's top-k (public outputs, cut to its own count), or an INVALID_ARG when exclusions
    left it no candidate (the fused model's answer)."""

    def initialize(self, args):
        self.engine = load_graph_engine(args, self.pb)

    def execute(self, requests):
        e = self.engine
        responses, live = self.split_cancelled(requests, "ranking")
        if not live:
            return responses
        items = [e.codec.inputs(requests[i], contract.RANKING) for i in live]
        for i, out in zip(live, batching.rank_graphs(e.recommender.runner, items, e.num_prefix, e.num_step2)):
            if int(out["rec_count"].min()) == 0:
                responses[i] = self.error("no candidate left after exclusions")
                continue
            values = {s.name: out[s.name].astype(s.numpy_dtype) for s in contract.RANKING.outputs if s.name in out}
            values["rec_count"] = out["rec_count"].astype(np.int64)  # [b]: the config reshapes [1] to []
            responses[i] = self.respond(values)
        return responses
