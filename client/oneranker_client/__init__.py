"""oneranker_client: the torch-free Python client of the OneRanker model served by Triton (gRPC).

from oneranker_client import OneRankerClient, RecommendRequest
"""

from . import contract
from .client import DEFAULT_TIMEOUT_S, AsyncOneRankerClient, OneRankerClient
from .defaults import DEFAULT_DEADLINE_S, DEFAULT_GRPC_URL
from .messages import Recommendation, RecommendRequest, build_inputs
from .retries import OneRankerError, RetryBudget, call_with_retries

__all__ = [
    "AsyncOneRankerClient",
    "DEFAULT_DEADLINE_S",
    "DEFAULT_GRPC_URL",
    "DEFAULT_TIMEOUT_S",
    "OneRankerClient",
    "OneRankerError",
    "Recommendation",
    "RecommendRequest",
    "RetryBudget",
    "build_inputs",
    "call_with_retries",
    "contract",
]
