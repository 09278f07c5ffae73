"""Triton glue for `preprocess`: raw request tensors -> validated tokens.

The logic is oneranker_serving.triton.models.PreprocessModel, unit-tested with a fake pb_utils.
"""

import triton_python_backend_utils as pb_utils

from oneranker_serving.triton.models import PreprocessModel


class TritonPythonModel(PreprocessModel):
    pb = pb_utils
