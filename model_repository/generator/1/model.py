"""Triton glue for `generator`: token tensors -> level logits and KV (split topologies) (logic: oneranker_serving.triton.models.GeneratorModel)."""

import triton_python_backend_utils as pb_utils

from oneranker_serving.triton.models import GeneratorModel


class TritonPythonModel(GeneratorModel):
    pb = pb_utils
