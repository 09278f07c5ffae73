"""Triton glue for `ranker` (Python backend, topologies b/c): a dynamic batch of KV + candidate
tensors -> one engine call -> scores per request. With the torch engine the kv arrives by DLPack
on the device the generator left it on (`kv_transport` = dlpack)."""

import triton_python_backend_utils as pb_utils

from oneranker_build import service
from oneranker_client import contract


class TritonPythonModel:
    def initialize(self, args):
        self.engine = service.load_split_engine(args, pb_utils)

    def execute(self, requests):
        e = self.engine
        items = [e.codec.inputs(r, contract.RANKER) for r in requests]
        batch, shapes = service.stack_ranker_inputs(items, e.num_prefix, e.num_step2)
        scores = service.rank_split(e.recommender.runner, batch)
        return [pb_utils.InferenceResponse(output_tensors=[e.codec.tensor("scores", s)])
                for s in service.split_scores(scores, shapes)]
