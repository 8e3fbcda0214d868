"""The storage seam of the response cache, and its in-process implementation.

``CacheStore`` is what the ``proxy-cache`` plugin asks of a strategy: look an
entry up, store one, purge by key, by route or all, close.  Entries are named
by (route, key): the key is the request's cache key (``X-Cache-Key``), the
route lets an operator purge one route's entries without knowing their keys.

``MemoryCacheStore`` is an LRU under a byte budget: storing an entry evicts the
least recently used ones until the total fits, and an entry larger than the
whole budget is not stored.  Expired entries go when they are looked up or
evicted.  Time is the injected monotonic clock.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import attrs

from ._entry import Entry

__all__ = ["CacheStore", "CacheStoreError", "MemoryCacheStore"]


class CacheStoreError(Exception):
    """The store could not answer (Redis down, slow, refusing): the cache is bypassed."""


@runtime_checkable
class CacheStore(Protocol):
    async def get(self, route: str, key: str) -> Entry | None:
        """The entry, with ``resident`` filled in, or ``None``.  Raises ``CacheStoreError``."""
        ...

    async def set(self, route: str, key: str, entry: Entry) -> None:
        """Store ``entry`` for ``entry.retain`` seconds.  Raises ``CacheStoreError``."""
        ...

    async def purge(self, *, key: str | None = None, route: str | None = None) -> int:
        """Remove the entry of ``key``, every entry of ``route``, or (neither) all; return how many."""
        ...

    async def aclose(self) -> None: ...


class MemoryCacheStore:
    """Entries in this process: LRU within ``max_bytes``."""

    def __init__(self, max_bytes: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.clock = clock
        # (route, key) -> (entry, stored at, expires at); most recently used last.
        self._entries: OrderedDict[tuple[str, str], tuple[Entry, float, float]] = OrderedDict()
        self.bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, route: str, key: str) -> Entry | None:
        name = (route, key)
        found = self._entries.get(name)
        if found is None:
            return None
        entry, stored, expires = found
        now = self.clock()
        if now >= expires:
            self._drop(name)
            return None
        self._entries.move_to_end(name)
        return _with_resident(entry, now - stored)

    async def set(self, route: str, key: str, entry: Entry) -> None:
        size = entry.size
        if size > self.max_bytes:
            return
        name = (route, key)
        if name in self._entries:
            self._drop(name)
        while self.bytes + size > self.max_bytes and self._entries:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.evictions += 1
        now = self.clock()
        self._entries[name] = (entry, now, now + entry.retain)
        self.bytes += size

    async def purge(self, *, key: str | None = None, route: str | None = None) -> int:
        doomed = [
            name
            for name in self._entries
            if (key is None or name[1] == key) and (route is None or name[0] == route)
        ]
        for name in doomed:
            self._drop(name)
        return len(doomed)

    async def aclose(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def _drop(self, name: tuple[str, str]) -> None:
        entry, _, _ = self._entries.pop(name)
        self.bytes -= entry.size


def _with_resident(entry: Entry, resident: float) -> Entry:
    return attrs.evolve(entry, resident=resident)
