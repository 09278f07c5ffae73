"""Triton glue for `preprocess`: raw request tensors -> validated tokens (oneranker_build.service)."""

import triton_python_backend_utils as pb_utils

from oneranker.features import RequestError
from oneranker_build import service
from oneranker_client import contract


class TritonPythonModel:
    def initialize(self, args):
        params, artifacts = service.model_setup(args)
        self.validator = service.load_recommender(artifacts, engine="none", runner=service.NO_RUNNER,
                                                  expected_checkpoint=params["checkpoint_sha256"])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                arrays = {}
                for spec in contract.PUBLIC.inputs:
                    tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
                    arrays[spec.name] = None if tensor is None else tensor.as_numpy()
                tokens = service.tokens_to_arrays(self.validator, service.request_from_arrays(arrays))
                outputs = [pb_utils.Tensor(name, value) for name, value in tokens.items()]
                responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            except RequestError as err:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(str(err), pb_utils.TritonError.INVALID_ARG)))
        return responses
