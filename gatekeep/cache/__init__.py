"""The response cache the ``proxy-cache`` plugin builds on.

* ``_policy``: RFC 9111 decisions (what may be stored, for how long, what a
  request's ``Cache-Control`` asks), sans-IO;
* ``KeyBuilder``: the cache key (method, host, path, query, varied headers,
  route, consumer);
* ``Entry``: a stored answer; ``CacheStore`` the storage seam, with
  ``MemoryCacheStore`` (LRU under a byte budget) and ``RedisCacheStore``
  (shared by every gateway process; Redis settings as the rate limiter's);
* ``ResponseCache``: a store, request coalescing (``Flights``) and
  ``CacheStats``; ``purge_caches`` purges a gateway's caches (the Admin API's
  ``DELETE /proxy-cache[/{key}]``, the ``gatekeep cache purge`` command).
"""

from __future__ import annotations

from ._cache import CacheStats, Flight, Flights, ResponseCache, purge_caches
from ._entry import Entry
from ._key import KeyBuilder
from ._policy import RequestDirectives, freshness, parse_cache_control, request_directives
from ._redis import RedisCacheStore, close_redis_store, open_redis_store
from ._store import CacheStore, CacheStoreError, MemoryCacheStore

__all__ = [
    "CacheStats",
    "CacheStore",
    "CacheStoreError",
    "Entry",
    "Flight",
    "Flights",
    "KeyBuilder",
    "MemoryCacheStore",
    "RedisCacheStore",
    "RequestDirectives",
    "ResponseCache",
    "close_redis_store",
    "freshness",
    "open_redis_store",
    "parse_cache_control",
    "purge_caches",
    "request_directives",
]
