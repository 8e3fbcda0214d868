"""Rate limiting: token buckets decided all-or-none over every limit of a request.

``MemoryRateLimiter`` serves one process; ``RedisRateLimiter`` shares the
buckets between every gateway process through one Lua script.  Both satisfy
``gatekeep.RateLimiter`` and decide identically (``_bucket`` holds the
maths); ``bucket_key`` builds safe keys from client-controlled parts.
"""

from __future__ import annotations

from ._errors import RateLimiterUnavailable
from ._keys import bucket_key
from ._memory import MemoryRateLimiter
from ._redis import RedisRateLimiter

__all__ = ["MemoryRateLimiter", "RateLimiterUnavailable", "RedisRateLimiter", "bucket_key"]
