"""Triton glue for `ranking`: the ranking graph of topology `graphs` (Python-backend engines).

The logic is oneranker_serving.triton.models.RankingModel, unit-tested with a fake pb_utils.
"""

import triton_python_backend_utils as pb_utils

from oneranker_serving.triton.models import RankingModel


class TritonPythonModel(RankingModel):
    pb = pb_utils
