"""Triton glue for `topk`: value scores -> the public top-k outputs (pure ensemble).

The logic is oneranker_serving.triton.models.TopkModel, unit-tested with a fake pb_utils.
"""

import triton_python_backend_utils as pb_utils

from oneranker_serving.triton.models import TopkModel


class TritonPythonModel(TopkModel):
    pb = pb_utils
