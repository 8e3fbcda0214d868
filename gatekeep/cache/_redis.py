"""The Redis strategy: one store shared by every gateway process.

An entry is one Redis string, ``<prefix>e:<route tag>:<key>``, written with
``SET ... PX <retain>`` and read with ``GET`` + ``PTTL`` in one round trip: the
time the entry has spent in Redis is ``retain - PTTL``, by the Redis server's
clock, so processes on different hosts agree on ``Age`` without comparing
their clocks.  The route tag is a short hash of the route's name, so that a
purge by route is one ``SCAN MATCH`` whatever characters the name holds.

Connections come from the rate limiter's Redis settings (``RedisSettings``:
Kong's ``redis`` table, single, Cluster or Sentinel) through its ``connect``;
every cache of a gateway naming the same settings shares one client per event
loop.  ``prefix`` left at the rate limiter's default (``gk:rl:``) becomes
``gk:cache:``.

Failures.  Every call is bounded by ``redis.timeout``; any error, timeout or
refusal is a ``CacheStoreError`` (the plugin then bypasses the cache: the
request goes to the upstream, never a 500).  After a failure the store does
not try Redis for ``probe_interval`` seconds; the outage is logged when it
starts and when it ends.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, Final

import anyio
import attrs
from redis.exceptions import RedisError

from ..ratelimit._connect import RedisSettings, Shared, close_shared, open_shared
from ._entry import Entry, decode, encode
from ._store import CacheStoreError

__all__ = ["RedisCacheStore", "close_redis_store", "open_redis_store"]

log = logging.getLogger("gatekeep.cache")

_RATELIMIT_PREFIX: Final = "gk:rl:"
CACHE_PREFIX: Final = "gk:cache:"
_GLOB: Final = str.maketrans({c: "\\" + c for c in "*?[]\\"})


def route_tag(route: str) -> str:
    return hashlib.blake2b(route.encode(), digest_size=6).hexdigest()


class RedisCacheStore:
    """A ``CacheStore`` on a redis-py asyncio client (``Redis`` or ``RedisCluster``)."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = CACHE_PREFIX,
        timeout: float = 2.0,
        probe_interval: float = 1.0,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.timeout = timeout
        self.probe_interval = probe_interval
        self._down_until = 0.0
        self._down = False
        self.outages = 0

    def name(self, route: str, key: str) -> str:
        return f"{self.prefix}e:{route_tag(route)}:{key}"

    async def get(self, route: str, key: str) -> Entry | None:
        name = self.name(route, key)

        async def call() -> tuple[bytes | None, int]:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.get(name)
                pipe.pttl(name)
                data, pttl = await pipe.execute()
            return data, int(pttl)

        data, pttl = await self._call(call)
        if data is None or pttl < 0:
            return None
        entry = decode(bytes(data), 0.0)
        if entry is None:
            return None
        return attrs.evolve(entry, resident=max(0.0, entry.retain - pttl / 1000))

    async def set(self, route: str, key: str, entry: Entry) -> None:
        data = encode(entry)
        ms = max(1, int(entry.retain * 1000))

        async def call() -> None:
            await self.client.set(self.name(route, key), data, px=ms)

        await self._call(call)

    async def purge(self, *, key: str | None = None, route: str | None = None) -> int:
        tag = route_tag(route) if route is not None else "*"
        pattern = f"{self.prefix.translate(_GLOB)}e:{tag}:{'*' if key is None else key.translate(_GLOB)}"

        async def call() -> int:
            removed = 0
            batch: list[Any] = []
            async for name in self.client.scan_iter(match=pattern, count=500):
                batch.append(name)
                if len(batch) >= 500:
                    removed += await self._unlink(batch)
                    batch = []
            if batch:
                removed += await self._unlink(batch)
            return removed

        # A purge walks the keyspace: bounded by ten timeouts, not one.
        removed: int = await self._call(call, self.timeout * 10)
        return removed

    async def _unlink(self, names: list[Any]) -> int:
        # One UNLINK per name in a pipeline: in a cluster the names live in different slots.
        async with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.unlink(name)
            return sum(int(n) for n in await pipe.execute())

    async def aclose(self) -> None:
        return None  # the client is shared: close_redis_store closes it

    async def _call(self, call: Any, bound: float | None = None) -> Any:
        now = time.monotonic()
        if now < self._down_until:
            raise CacheStoreError("redis is unavailable (waiting before the next try)")
        try:
            with anyio.fail_after(bound or self.timeout):
                result = await call()
        except (RedisError, OSError, TimeoutError) as exc:
            self._down_until = time.monotonic() + self.probe_interval
            if not self._down:
                self._down = True
                self.outages += 1
                reason = exc or type(exc).__name__
                log.warning("proxy-cache: redis unavailable, bypassing the cache: %s", reason)
            raise CacheStoreError(f"redis: {exc or type(exc).__name__}") from exc
        if self._down:
            self._down = False
            log.warning("proxy-cache: redis is back")
        return result


_stores: dict[tuple[RedisSettings, int], Shared[RedisCacheStore]] = {}


def open_redis_store(settings: RedisSettings) -> RedisCacheStore:
    """The store shared by every cache naming ``settings`` on this event loop (counted)."""
    prefix = CACHE_PREFIX if settings.prefix == _RATELIMIT_PREFIX else settings.prefix
    return open_shared(
        _stores, settings, lambda client: RedisCacheStore(client, prefix=prefix, timeout=settings.seconds)
    )


async def close_redis_store(settings: RedisSettings) -> None:
    """One user of ``settings`` is done; the last one closes the client."""
    await close_shared(_stores, settings)
