"""Triton glue for `recommender`: validate, generation graph, ranking graph -> top-k in one process.

The logic is oneranker_serving.triton.models.RecommenderModel, unit-tested with a fake pb_utils.
"""

import triton_python_backend_utils as pb_utils

from oneranker_serving.triton.models import RecommenderModel


class TritonPythonModel(RecommenderModel):
    pb = pb_utils
