"""Triton glue for `ranker`: KV and candidates -> value scores (split topologies) (logic: oneranker_serving.triton.models.RankerModel)."""

import triton_python_backend_utils as pb_utils

from oneranker_serving.triton.models import RankerModel


class TritonPythonModel(RankerModel):
    pb = pb_utils
