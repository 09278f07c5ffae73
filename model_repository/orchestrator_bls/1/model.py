"""Triton glue for `orchestrator_bls` (topology b): a dynamic batch of token tensors -> one BLS
call to `generator` -> beam search per request -> one BLS call to `ranker` -> top-k. Every BLS
call goes through `_exec`, which turns a failed sub-request into a per-request error. With the
torch engine the KV moves by DLPack and BLS asks for it in `kv_memory` (preferred_memory), so on
a GPU it never leaves the device."""

import numpy as np
import triton_python_backend_utils as pb_utils

from oneranker.features import RequestError
from oneranker_build import service
from oneranker_client import contract


class SubRequestError(Exception):
    pass


def _exec(codec, model_name, tensors, output_names):
    request = pb_utils.InferenceRequest(model_name=model_name, requested_output_names=list(output_names),
                                        inputs=[codec.tensor(k, v) for k, v in tensors.items()],
                                        preferred_memory=codec.preferred_memory())
    response = request.exec()
    if response.has_error():
        raise SubRequestError(f"{model_name}: {response.error().message()}")
    outputs = {name: pb_utils.get_output_tensor_by_name(response, name) for name in output_names}
    return {name: codec.kv(t) if name == "kv" else codec.host(t) for name, t in outputs.items()}


class TritonPythonModel:
    def initialize(self, args):
        params, artifacts = service.model_setup(args)
        self.rec = service.load_recommender(artifacts, engine="none", runner=service.NO_RUNNER,
                                            expected_checkpoint=params["checkpoint_sha256"])
        info = service.read_export_info(artifacts)
        self.num_prefix, self.num_step2 = info["dims"]["F"], info["num_step2_tokens"]
        self.codec = service.TensorCodec(pb_utils, params["kv_transport"], params["kv_memory"])

    def execute(self, requests):
        items = [self.codec.inputs(r, contract.BLS) for r in requests]
        try:
            batch, own = service.stack_generator_inputs(items)
            batch["hist_len"] = batch["hist_len"].reshape(-1, 1)
            gen = _exec(self.codec, contract.GENERATOR_MODEL, batch, ("level_logits", "kv"))
            per_request = service.split_generator_outputs(items, gen["level_logits"], gen["kv"], own, self.num_prefix)
        except SubRequestError as err:
            return [self._error(str(err)) for _ in requests]
        responses = [None] * len(requests)
        ranked = []
        for i, (item, out) in enumerate(zip(items, per_request)):
            try:
                cands = service.select_arrays(self.rec, out["level_logits"], item["options"], item["exclude_idx"])
                ranked.append((i, cands, {"kv": out["kv"], "hist_len": item["hist_len"].reshape(1, 1), **cands}))
            except RequestError as err:
                responses[i] = self._error(str(err))
        if ranked:
            try:
                batch, shapes = service.stack_ranker_inputs([r[2] for r in ranked], self.num_prefix, self.num_step2)
                batch["hist_len"] = batch["hist_len"].reshape(-1, 1)
                scores = _exec(self.codec, contract.RANKER_MODEL, batch, ("scores",))["scores"]
                for (i, cands, _), row_scores in zip(ranked, service.split_scores(scores, shapes)):
                    out = service.topk_arrays(row_scores, cands["cand_item_ids"], cands["cand_logp"],
                                              cands["cand_head"], items[i]["options"])
                    responses[i] = pb_utils.InferenceResponse(
                        output_tensors=[pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in out.items()])
            except SubRequestError as err:
                for i, _, _ in ranked:
                    responses[i] = self._error(str(err))
        return responses

    @staticmethod
    def _error(message):
        return pb_utils.InferenceResponse(output_tensors=[],
                                          error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))
