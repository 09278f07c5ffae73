"""Triton glue for `topk`: value scores -> the public top-k outputs (pure ensemble) (logic: oneranker_serving.triton.models.TopkModel)."""

import triton_python_backend_utils as pb_utils

from oneranker_serving.triton.models import TopkModel


class TritonPythonModel(TopkModel):
    pb = pb_utils
