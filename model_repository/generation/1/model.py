"""Triton glue for `generation`: the generation graph of topology `graphs` (Python-backend engines).

The logic is oneranker_serving.triton.models.GenerationModel, unit-tested with a fake pb_utils.
"""

import triton_python_backend_utils as pb_utils

from oneranker_serving.triton.models import GenerationModel


class TritonPythonModel(GenerationModel):
    pb = pb_utils
