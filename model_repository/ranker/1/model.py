"""Triton glue for `ranker`: KV and candidates -> value scores (split topologies).

The logic is oneranker_serving.triton.models.RankerModel, unit-tested with a fake pb_utils.
"""

import triton_python_backend_utils as pb_utils

from oneranker_serving.triton.models import RankerModel


class TritonPythonModel(RankerModel):
    pb = pb_utils
