"""Rate limiting: token buckets decided all-or-none over every limit of a request.

``MemoryRateLimiter`` serves one process; ``RedisRateLimiter`` shares the
buckets between every gateway process through one Lua script.  Both satisfy
``gatekeep.RateLimiter`` and decide identically (``_bucket`` holds the
maths); ``bucket_key`` builds safe keys from client-controlled parts.
``open_store``/``close_store`` connect to Redis (single, Cluster or Sentinel:
``RedisSettings``) and ``LeasedRateLimiter`` takes tokens from it in leases;
the ``rate-limiting`` plugin builds on them.
"""

from __future__ import annotations

from ._connect import RedisSettings, SentinelNode, close_store, open_store
from ._errors import RateLimiterUnavailable
from ._keys import bucket_key
from ._lease import LeasedRateLimiter
from ._memory import MemoryRateLimiter
from ._redis import RedisRateLimiter

__all__ = [
    "LeasedRateLimiter",
    "MemoryRateLimiter",
    "RateLimiterUnavailable",
    "RedisRateLimiter",
    "RedisSettings",
    "SentinelNode",
    "bucket_key",
    "close_store",
    "open_store",
]
