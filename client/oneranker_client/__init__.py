"""oneranker_client: the torch-free Python client of the OneRanker model served by Triton (gRPC).

from oneranker_client import OneRankerClient, RecommendRequest
"""

from . import contract
from .client import (
    DEFAULT_DEADLINE_S,
    DEFAULT_TIMEOUT_S,
    AsyncOneRankerClient,
    OneRankerClient,
    OneRankerError,
    Recommendation,
    RecommendRequest,
    RetryBudget,
    build_inputs,
    call_with_retries,
)
from .defaults import DEFAULT_GRPC_URL

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
