"""Triton glue for `orchestrator_bls`: BLS calls to generator and ranker with beam search in between.

The logic is oneranker_serving.triton.models.BlsModel, unit-tested with a fake pb_utils.
"""

import triton_python_backend_utils as pb_utils

from oneranker_serving.triton.models import BlsModel


class TritonPythonModel(BlsModel):
    pb = pb_utils
