"""What every engine runner shares: pooled KV buffers and the handle that names one.

A runner implements `generate(inputs) -> (decoder_state, kv)` and `rank(kv, ...) -> scores`
(`oneranker_serving.recommender.EngineRunner`); `release(kv)` returns a pooled buffer.
"""

from __future__ import annotations

import threading
from collections import defaultdict


class KVPool:
    """Reusable KV buffers keyed by shape; each acquire hands out a buffer no one else holds."""

    def __init__(self, allocate):
        self._allocate = allocate
        self._free: dict[tuple, list] = defaultdict(list)
        self._lock = threading.Lock()
        self.allocations = 0

    def acquire(self, shape: tuple):
        with self._lock:
            if self._free[shape]:
                return self._free[shape].pop()
            self.allocations += 1
        return self._allocate(shape)

    def release(self, shape: tuple, buffer) -> None:
        with self._lock:
            self._free[shape].append(buffer)


class KVHandle:
    def __init__(self, shape: tuple, value, numpy_view=None):
        self.shape, self.value, self.numpy_view = shape, value, numpy_view
