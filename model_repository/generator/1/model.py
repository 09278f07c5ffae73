"""Triton glue for `generator`: token tensors -> level logits and KV (split topologies).

The logic is oneranker_serving.triton.models.GeneratorModel, unit-tested with a fake pb_utils.
"""

import triton_python_backend_utils as pb_utils

from oneranker_serving.triton.models import GeneratorModel


class TritonPythonModel(GeneratorModel):
    pb = pb_utils
