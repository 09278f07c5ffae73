"""Triton glue for `generator` (Python backend, topologies b/c): a dynamic batch of token
tensors -> one engine call -> level_logits and kv per request. With the torch engine the kv
leaves by DLPack and stays on the instance's device (`kv_transport` = dlpack)."""

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
        self.num_prefix = self.rec.num_user_features

    def execute(self, requests):
        items = [self.codec.inputs(r, contract.GENERATOR) for r in requests]
        batch, own = service.stack_generator_inputs(items)
        level_logits, kv = service.generate_split(self.rec.runner, batch, keep_device=self.codec.dlpack)
        outs = service.split_generator_outputs(items, level_logits, kv, own, self.num_prefix)
        return [pb_utils.InferenceResponse(output_tensors=[self.codec.tensor(k, v) for k, v in o.items()])
                for o in outs]
