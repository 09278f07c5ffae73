"""Triton glue for `select` (topology c): level logits -> constrained beam search -> candidates."""

import triton_python_backend_utils as pb_utils

from oneranker.features import RequestError
from oneranker_build import service
from oneranker_client import contract


class TritonPythonModel:
    def initialize(self, args):
        params, artifacts = service.model_setup(args)
        self.rec = service.load_recommender(artifacts, engine="none", runner=service.NO_RUNNER,
                                            expected_checkpoint=params["checkpoint_sha256"])

    def execute(self, requests):
        responses = []
        for request in requests:
            a = {t.name: pb_utils.get_input_tensor_by_name(request, t.name).as_numpy() for t in contract.SELECT.inputs}
            try:
                out = service.select_arrays(self.rec, a["level_logits"], a["options"], a["exclude_idx"])
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in out.items()]))
            except RequestError as err:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(str(err), pb_utils.TritonError.INVALID_ARG)))
        return responses
