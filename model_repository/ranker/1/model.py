"""Triton glue for `ranker` (Python backend, topologies b/c): a dynamic batch of KV + candidate
tensors -> one engine call -> scores per request."""

import triton_python_backend_utils as pb_utils

from oneranker_build import service
from oneranker_client import contract


class TritonPythonModel:
    def initialize(self, args):
        params, artifacts = service.model_setup(args)
        self.rec = service.load_recommender(artifacts, engine=params["engine"], threads=int(params["intra_op_threads"]),
                                            expected_checkpoint=params["checkpoint_sha256"],
                                            device=service.instance_device(args), bind_kv=False)
        info = service.read_export_info(artifacts)
        self.num_prefix, self.num_step2 = info["dims"]["F"], info["num_step2_tokens"]

    def execute(self, requests):
        items = [{t.name: pb_utils.get_input_tensor_by_name(r, t.name).as_numpy() for t in contract.RANKER.inputs}
                 for r in requests]
        batch, shapes = service.stack_ranker_inputs(items, self.num_prefix, self.num_step2)
        scores = service.rank_numpy(self.rec.runner, batch)
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("scores", s)])
                for s in service.split_scores(scores, shapes)]
