"""oneranker_client: the torch-free Python client of the OneRanker model served by Triton (gRPC).

from oneranker_client import OneRankerClient, RecommendRequest
"""

from . import contract
from .client import (
    DEFAULT_TIMEOUT_S,
    AsyncOneRankerClient,
    OneRankerClient,
    OneRankerError,
    Recommendation,
    RecommendRequest,
    build_inputs,
    call_with_retries,
)
from .defaults import DEFAULT_GRPC_URL

__all__ = [
    "AsyncOneRankerClient",
    "DEFAULT_GRPC_URL",
    "DEFAULT_TIMEOUT_S",
    "OneRankerClient",
    "OneRankerError",
    "Recommendation",
    "RecommendRequest",
    "build_inputs",
    "call_with_retries",
    "contract",
]
