"""Triton glue for `select`: level logits -> constrained beam search -> candidates (pure ensemble) (logic: oneranker_serving.triton.models.SelectModel)."""

import triton_python_backend_utils as pb_utils

from oneranker_serving.triton.models import SelectModel


class TritonPythonModel(SelectModel):
    pb = pb_utils
