"""Triton glue for `select`: level logits -> constrained beam search -> candidates (pure ensemble).

The logic is oneranker_serving.triton.models.SelectModel, unit-tested with a fake pb_utils.
"""

import triton_python_backend_utils as pb_utils

from oneranker_serving.triton.models import SelectModel


class TritonPythonModel(SelectModel):
    pb = pb_utils
