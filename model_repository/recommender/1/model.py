"""Triton glue for `recommender`: tokens -> generate, beam search, rank -> top-k in one process (also the cascade baseline) (logic: oneranker_serving.triton.models.RecommenderModel)."""

import triton_python_backend_utils as pb_utils

from oneranker_serving.triton.models import RecommenderModel


class TritonPythonModel(RecommenderModel):
    pb = pb_utils
