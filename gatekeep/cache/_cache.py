"""One response cache: a store, the requests in flight, and what happened (stats).

Request coalescing.  When many requests miss the same key at once, the first
becomes the *leader* of a flight and goes to the upstream; the others wait
for the flight to land (at most ``coalesce_wait`` seconds), then look the key up again
and are answered from the entry the leader stored.  A flight lands when the
leader's answer is stored, found not storable, or abandoned (the client went
away, the body failed): ``Flight.land`` is idempotent, and the plugin calls
it from every one of those paths, including the response's clean-up.  A
follower that still finds nothing goes to the upstream itself, without
leading a new flight (otherwise an answer that is never stored would make
every waiter wait in turn).  Flights are per process: with the Redis strategy
each process sends at most one request per key to the upstream at a time.

``purge_caches(plugins, key=, route=)`` purges every ``ResponseCache`` held
by a gateway's plugins (``gateway.plugin_context.plugins``): the hook an
Admin API mounts as Kong's ``DELETE /proxy-cache[/{key}]``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable

import anyio
import attrs

from ._store import CacheStore

__all__ = ["CacheStats", "Flight", "Flights", "ResponseCache", "purge_caches"]


@attrs.define
class CacheStats:
    """Counters for metrics (``gatekeep_proxy_cache_*``): lookups by result, bytes stored and served."""

    hits: int = 0
    misses: int = 0
    refreshes: int = 0
    bypasses: int = 0
    stored: int = 0
    stored_bytes: int = 0
    served_bytes: int = 0
    store_errors: int = 0
    coalesced: int = 0


class Flight:
    """A leader's claim on a key; ``land`` wakes the followers (once)."""

    __slots__ = ("event", "flights", "key", "started")

    def __init__(self, flights: Flights, key: str, started: float) -> None:
        self.flights = flights
        self.key = key
        self.started = started
        self.event = anyio.Event()

    def land(self) -> None:
        if self.flights.in_flight.get(self.key) is self:
            del self.flights.in_flight[self.key]
        self.event.set()

    async def aland(self) -> None:
        """``land`` as a ``Response.defer`` clean-up."""
        self.land()


class Flights:
    """The keys some request is fetching right now, in this process.

    A flight older than ``patience`` seconds is taken over by the next
    request: its leader was cancelled before any phase could land it (the
    client went away while the upstream was being asked).
    """

    def __init__(self, patience: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.patience = patience
        self.clock = clock
        self.in_flight: dict[str, Flight] = {}

    def lead(self, key: str) -> Flight | None:
        """A new flight for ``key`` (you lead it), or ``None`` when one is already under way."""
        now = self.clock()
        current = self.in_flight.get(key)
        if current is not None:
            if now - current.started < self.patience:
                return None
            current.land()
        flight = self.in_flight[key] = Flight(self, key, now)
        return flight

    async def wait(self, key: str) -> None:
        """Wait until the flight of ``key`` lands (at most ``patience`` seconds)."""
        flight = self.in_flight.get(key)
        if flight is None:
            return
        with anyio.move_on_after(max(0.0, flight.started + self.patience - self.clock())):
            await flight.event.wait()


class ResponseCache:
    """A store (opened by ``open_store`` in the gateway's lifespan), its flights and its stats."""

    def __init__(
        self,
        open_store: Callable[[], CacheStore],
        close_store: Callable[[CacheStore], Awaitable[None]],
        *,
        coalesce_wait: float = 10.0,
        shared: bool = False,
        name: str = "proxy-cache",
    ) -> None:
        self._open = open_store
        self._close = close_store
        self.name = name
        # True when every gateway process sees the same store (Redis): a purge from
        # another process (the CLI) reaches it.
        self.shared = shared
        self.store: CacheStore | None = None
        self.flights = Flights(coalesce_wait)
        self.counts = CacheStats()  # read through the plugin's stats() (one record per cache)

    def open(self) -> CacheStore:
        if self.store is None:
            self.store = self._open()
        return self.store

    async def close(self) -> None:
        store, self.store = self.store, None
        if store is not None:
            await self._close(store)

    async def purge(self, *, key: str | None = None, route: str | None = None) -> int:
        """Remove one key's entry, one route's entries, or (neither) every entry; return how many.

        Works before the gateway started too (the CLI): the store is opened for the purge.
        Raises ``CacheStoreError`` when the store cannot be reached.
        """
        if self.store is not None:
            return await self.store.purge(key=key, route=route)
        store = self._open()
        try:
            return await store.purge(key=key, route=route)
        finally:
            await self._close(store)


async def purge_caches(
    plugins: Iterable[object],
    *,
    key: str | None = None,
    route: str | None = None,
    shared_only: bool = False,
) -> int:
    """Purge the response caches of ``plugins`` (each store once); return the entries removed.

    ``plugins`` is what a gateway holds (``gateway.plugin_context.plugins``);
    objects without a ``cache`` that is a ``ResponseCache`` are skipped.
    ``key`` is an ``X-Cache-Key``, ``route`` a route's name; neither purges all.
    ``shared_only`` skips per-process (memory) caches: for a process that is
    not the gateway (``gatekeep cache purge``).
    Raises ``CacheStoreError`` when a store cannot be reached.
    """
    seen: set[int] = set()
    removed = 0
    for plugin in plugins:
        cache = getattr(plugin, "cache", None)
        if not isinstance(cache, ResponseCache) or (shared_only and not cache.shared):
            continue
        store = cache.store
        ident = id(store) if store is not None else id(cache)
        if ident in seen:
            continue
        seen.add(ident)
        removed += await cache.purge(key=key, route=route)
    return removed
