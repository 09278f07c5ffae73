"""Triton glue for `topk` (topology c): value scores -> the public top-k outputs."""

import triton_python_backend_utils as pb_utils

from oneranker_build import service
from oneranker_client import contract


class TritonPythonModel:
    def initialize(self, args):
        pass

    def execute(self, requests):
        responses = []
        for request in requests:
            a = {t.name: pb_utils.get_input_tensor_by_name(request, t.name).as_numpy() for t in contract.TOPK.inputs}
            out = service.topk_arrays(a["scores"], a["cand_item_ids"], a["cand_logp"], a["cand_head"], a["options"])
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in out.items()]))
        return responses
