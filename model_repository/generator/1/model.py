"""Triton glue for `generator` (Python backend, topologies b/c): a dynamic batch of token
tensors -> one engine call -> level_logits and kv per request. With the torch engine the kv
leaves by DLPack and stays on the instance's device (`kv_transport` = dlpack)."""

import triton_python_backend_utils as pb_utils

from oneranker_build import service
from oneranker_client import contract


class TritonPythonModel:
    def initialize(self, args):
        self.engine = service.load_split_engine(args, pb_utils)

    def execute(self, requests):
        e = self.engine
        items = [e.codec.inputs(r, contract.GENERATOR) for r in requests]
        batch, own = service.stack_generator_inputs(items)
        level_logits, kv = service.generate_split(e.recommender.runner, batch, keep_device=e.codec.dlpack)
        outs = service.split_generator_outputs(items, level_logits, kv, own, e.num_prefix)
        return [pb_utils.InferenceResponse(output_tensors=[e.codec.tensor(k, v) for k, v in o.items()])
                for o in outs]
