"""The timing loop the micro-benchmarks share."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable


async def us_per_call(fn: Callable[[], Awaitable[object]], seconds: float, batch: int = 500) -> float:
    """µs per call of ``fn``, calling it in batches for about ``seconds``."""
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            await fn()
        n += batch
        now = time.perf_counter()
        if now >= deadline:
            return (now - start) / n * 1e6
