"""Triton glue for `ranker` (Python backend, topologies b/c): a dynamic batch of KV + candidate
tensors -> one engine call -> scores per request. With the torch engine the kv arrives by DLPack
on the device the generator left it on (`kv_transport` = dlpack)."""

import triton_python_backend_utils as pb_utils

from oneranker_build import service
from oneranker_client import contract


class TritonPythonModel:
    def initialize(self, args):
        params, artifacts = service.model_setup(args)
        self.rec = service.load_recommender(artifacts, engine=params["engine"], threads=int(params["intra_op_threads"]),
                                            expected_checkpoint=params["checkpoint_sha256"],
                                            device=service.instance_device(args), bind_kv=False)
        self.codec = service.TensorCodec(pb_utils, params["kv_transport"])
        info = service.read_export_info(artifacts)
        self.num_prefix, self.num_step2 = info["dims"]["F"], info["num_step2_tokens"]

    def execute(self, requests):
        items = [self.codec.inputs(r, contract.RANKER) for r in requests]
        batch, shapes = service.stack_ranker_inputs(items, self.num_prefix, self.num_step2)
        scores = service.rank_split(self.rec.runner, batch)
        return [pb_utils.InferenceResponse(output_tensors=[self.codec.tensor("scores", s)])
                for s in service.split_scores(scores, shapes)]
