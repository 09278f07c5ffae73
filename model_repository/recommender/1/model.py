"""Triton glue for `recommender` (topology a) and `cascade` (the baseline, rendered from this
folder with pipeline=cascade): token tensors of a dynamic batch -> one generate, per-request beam
search, one rank -> top-k. Logic lives in oneranker.serving / oneranker_build."""

import triton_python_backend_utils as pb_utils

from oneranker.features import RequestError
from oneranker.serving import StageTimes
from oneranker_build import service
from oneranker_client import contract


class TritonPythonModel:
    def initialize(self, args):
        params, artifacts = service.model_setup(args)
        self.recommender = service.load_pipeline(params, artifacts, device=service.instance_device(args))
        labels = {"pipeline": params.get("pipeline", "unified")}
        # MetricFamily objects must outlive their Metrics: keep them on self.
        self.families = {
            "stage": pb_utils.MetricFamily(name="oneranker_stage_seconds_total",
                                           description="cumulative seconds per pipeline stage",
                                           kind=pb_utils.MetricFamily.COUNTER),
            "candidates": pb_utils.MetricFamily(name="oneranker_candidates_total", description="candidates ranked",
                                                kind=pb_utils.MetricFamily.COUNTER),
            "requests": pb_utils.MetricFamily(name="oneranker_requests_total",
                                              description="requests answered by the recommender",
                                              kind=pb_utils.MetricFamily.COUNTER),
        }
        self.stage_metrics = {s: self.families["stage"].Metric(labels={"stage": s, **labels})
                              for s in ("generate", "select", "rank")}
        self.candidates = self.families["candidates"].Metric(labels=labels)
        self.requests_metric = self.families["requests"].Metric(labels=labels)

    def execute(self, requests):
        responses = [None] * len(requests)
        parsed = []
        for slot, request in enumerate(requests):
            arrays = {spec.name: pb_utils.get_input_tensor_by_name(request, spec.name).as_numpy()
                      for spec in contract.FUSED.inputs}
            parsed.append(service.parsed_from_arrays(slot, arrays))
        times = StageTimes()
        for p, result in zip(parsed, self.recommender.recommend_parsed(parsed, times)):
            if isinstance(result, RequestError):
                responses[p.slot] = pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(str(result), pb_utils.TritonError.INVALID_ARG))
            else:
                outputs = [pb_utils.Tensor(k, v) for k, v in service.response_arrays(result).items()]
                responses[p.slot] = pb_utils.InferenceResponse(output_tensors=outputs)
        self.stage_metrics["generate"].increment(times.generate_s)
        self.stage_metrics["select"].increment(times.select_s)
        self.stage_metrics["rank"].increment(times.rank_s)
        self.candidates.increment(float(times.candidates))
        self.requests_metric.increment(float(len(requests)))
        assert len(responses) == len(requests)
        return responses
