"""``proxy-cache``: Kong's response cache, in memory (LRU under a byte budget) or in Redis.

The request phase builds the cache key (``gatekeep.cache.KeyBuilder``) and
looks it up: a fresh entry answers at once (``X-Cache-Status: Hit``, ``Age``),
the upstream is never called.  On a miss the request leads a *flight*: other
requests for the same key wait for it instead of going to the upstream too
(``gatekeep.cache.Flights``).  The response phase decides whether the answer
may be stored (``response_code``, ``content_type``, no ``Set-Cookie``, no
``Vary: *``, RFC 9111 directives with ``cache_control``, at most
``max_entry_size`` bytes) and, if so, copies the body as it streams to the
client and stores it after the last byte; an answer that grows past the cap
streams on untouched and is not stored.  Answers the cache will not store,
and requests it will not look up, carry ``X-Cache-Status: Bypass``.

Never cached unless configured: a request with ``Authorization``
(``cache_authorized``; the entries are then per consumer, or per credentials
when no authentication plugin named a consumer) and an answer that sets a
cookie (``cache_set_cookie``).  A request's cookies are part of its key
(``cookie_in_key``, on by default): one browser session never reads
another's entry.  Never cached at all: a request with a body,
an answer with ``Vary: *``, anything but GET and HEAD (a HEAD is answered
from the GET's entry and never stores one).

A store that fails (Redis down or slow past ``redis.timeout``) makes the
request a Bypass: it goes to the upstream as if there were no cache.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

import attrs

from gatekeep import BasePlugin, Headers, Request, Response, validators
from gatekeep.cache import (
    CacheStore,
    CacheStoreError,
    Entry,
    Flight,
    KeyBuilder,
    MemoryCacheStore,
    ResponseCache,
    close_redis_store,
    freshness,
    open_redis_store,
    request_directives,
)
from gatekeep.ratelimit import RedisSettings

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

__all__ = ["ProxyCacheConfig", "ProxyCacheFilter", "RedisSettings"]

log = logging.getLogger("gatekeep.proxy_cache")

_STATE: Final = "proxy-cache"
_CACHEABLE_METHODS: Final = ("GET", "HEAD")
# Headers never stored: recomputed on every hit, or about one connection only.
_NOT_STORED: Final = frozenset(
    {b"age", b"x-cache-status", b"x-cache-key", b"transfer-encoding", b"connection"}
)
_HIT: Final = (b"x-cache-status", b"Hit")
_MISS: Final = (b"x-cache-status", b"Miss")
_REFRESH: Final = (b"x-cache-status", b"Refresh")
_BYPASS: Final = (b"x-cache-status", b"Bypass")


def _methods(_: object, attribute: object, value: Sequence[str]) -> None:
    if not value:
        raise ValueError("must name at least one method")
    for i, method in enumerate(value):
        if method not in _CACHEABLE_METHODS:
            raise ValueError(
                f"entry {i}: {method!r} cannot be cached (only GET and HEAD: the cache key holds no"
                " request body, so POST, PUT and PATCH answers would be served to other bodies)"
            )


def _codes(_: object, attribute: object, value: Sequence[int]) -> None:
    if not value:
        raise ValueError("must name at least one status code")
    for i, code in enumerate(value):
        if not 200 <= code <= 599:
            raise ValueError(f"entry {i}: {code} is not a final HTTP status (200-599)")


def _content_types(_: object, attribute: object, value: Sequence[str]) -> None:
    if not value:
        raise ValueError("must name at least one media type")
    for i, media in enumerate(value):
        kind, slash, sub = media.partition(";")[0].strip().partition("/")
        if not slash or not kind or not sub or (kind == "*" and sub != "*"):
            raise ValueError(f"entry {i}: {media!r} is not a media type like 'application/json' or 'text/*'")


def _lower_tuple(value: Sequence[str]) -> tuple[str, ...]:
    return tuple(v.lower() for v in value)


@attrs.frozen
class ProxyCacheConfig:
    """Kong's ``proxy-cache`` fields, plus the byte limits, Redis settings and two opt-ins.

    ``memory_size`` is the memory strategy's budget in bytes (LRU);
    ``max_entry_size`` caps one stored answer (bigger ones stream through,
    not stored); ``cache_authorized`` stores answers to requests carrying
    ``Authorization``; ``cache_set_cookie`` stores answers that set a cookie
    (the cookie is stored too and given to every client of the entry);
    ``cookie_in_key`` makes a request's ``Cookie`` part of the key (as a
    digest), so that an answer to one browser session is never served to
    another (web cache deception); turn it off when cookies do not change
    answers, for more hits;
    ``coalesce_wait`` is how long a request waits for another one fetching
    the same key.  ``redis`` is the rate limiter's Redis table (``url`` or
    ``host``/``port``, Cluster, Sentinel, TLS); ``redis.prefix`` left at its
    default stores under ``gk:cache:``.
    """

    response_code: tuple[int, ...] = attrs.field(default=(200, 301, 404), converter=tuple, validator=_codes)
    request_method: tuple[str, ...] = attrs.field(
        default=("GET", "HEAD"), converter=tuple, validator=_methods
    )
    content_type: tuple[str, ...] = attrs.field(
        default=("text/plain", "application/json"), converter=_lower_tuple, validator=_content_types
    )
    cache_ttl: int = attrs.field(default=300, validator=validators.positive)
    storage_ttl: int | None = attrs.field(default=None, validator=validators.positive)
    strategy: Literal["memory", "redis"] = "memory"
    cache_control: bool = False
    vary_query_params: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    vary_headers: tuple[str, ...] = attrs.field(
        default=(), converter=tuple, validator=validators.header_names
    )
    ignore_uri_case: bool = False
    # Ours.
    memory_size: int = attrs.field(default=64 * 1024 * 1024, validator=validators.positive)
    max_entry_size: int = attrs.field(default=1024 * 1024, validator=validators.positive)
    cache_authorized: bool = False
    cache_set_cookie: bool = False
    cookie_in_key: bool = True
    coalesce_wait: float = attrs.field(default=10.0, validator=validators.positive)
    redis: RedisSettings | None = None

    def __attrs_post_init__(self) -> None:
        if self.strategy == "redis" and self.redis is None:
            raise ValueError("strategy 'redis' needs a redis table (host, port ... or url)")
        if self.strategy == "memory" and self.max_entry_size > self.memory_size:
            raise ValueError(
                f"max_entry_size ({self.max_entry_size}) must not exceed memory_size ({self.memory_size})"
            )


@attrs.define(slots=True)
class _Lookup:
    """What the request phase learnt, for the response phase (``request.state["proxy-cache"]``)."""

    status: tuple[bytes, bytes]
    key: str = ""
    route: str = ""
    flight: Flight | None = None
    hit: Response | None = None
    head: bool = False


_BYPASSED: Final = _Lookup(_BYPASS)


class ProxyCacheFilter(BasePlugin[ProxyCacheConfig]):
    name: ClassVar[str] = "proxy-cache"
    priority: ClassVar[int] = 100  # Kong's: after authentication, acl and rate limiting

    def __init__(self, config: ProxyCacheConfig | None = None) -> None:
        super().__init__(config)
        c = self.config
        self.methods = frozenset(c.request_method)
        self.codes = frozenset(c.response_code)
        self.exact_types = frozenset(t.replace(" ", "") for t in c.content_type if ";" in t)
        self.media_types = frozenset(t for t in c.content_type if ";" not in t and not t.endswith("/*"))
        self.type_families = frozenset(t[:-1] for t in c.content_type if t.endswith("/*") and t != "*/*")
        self.any_type = "*/*" in c.content_type
        self.keys = KeyBuilder(
            vary_headers=c.vary_headers,
            vary_query_params=c.vary_query_params,
            ignore_uri_case=c.ignore_uri_case,
        )
        self.cache = ResponseCache(
            self._open_store, self._close_store, coalesce_wait=c.coalesce_wait, shared=c.strategy == "redis"
        )
        if c.strategy == "memory":
            self.cache.open()

    # -- lifespan ------------------------------------------------------------------------------

    def _open_store(self) -> CacheStore:
        c = self.config
        if c.strategy == "redis" and c.redis is not None:
            return open_redis_store(c.redis)
        return MemoryCacheStore(c.memory_size)

    async def _close_store(self, store: CacheStore) -> None:
        if self.config.strategy == "redis" and self.config.redis is not None:
            await close_redis_store(self.config.redis)
        else:
            await store.aclose()

    async def start(self, task_group: TaskGroup) -> None:
        self.cache.open()

    async def stop(self) -> None:
        if self.config.strategy == "redis":
            await self.cache.close()

    def stats(self) -> dict[str, int]:
        """Counters for the prometheus plugin (``gatekeep_proxy_cache_*``)."""
        s = self.cache.counts
        found = attrs.asdict(s)
        store = self.cache.store
        if isinstance(store, MemoryCacheStore):
            found["memory_bytes"] = store.bytes
            found["entries"] = len(store)
            found["evictions"] = store.evictions
        return found

    # -- request phase -------------------------------------------------------------------------

    async def on_request(self, request: Request) -> Response | None:
        lookup = await self._lookup(request)
        request.state[_STATE] = lookup
        return lookup.hit

    async def _lookup(self, request: Request) -> _Lookup:
        c = self.config
        stats = self.cache.counts
        headers = request.headers
        route = request.route
        if request.method not in self.methods or route is None or request.websocket or _has_body(headers):
            stats.bypasses += 1
            return _BYPASSED
        principal = _consumer_of(request)
        authorization = headers.get(b"authorization")
        if authorization is not None:
            if not c.cache_authorized:
                stats.bypasses += 1
                return _BYPASSED
            if not principal:
                # No authentication plugin named a consumer: one entry per credentials.
                principal = "authorization:" + hashlib.blake2b(authorization, digest_size=16).hexdigest()
        if c.cookie_in_key:
            cookies = headers.get_all(b"cookie")
            if cookies:
                principal += "|cookie:" + hashlib.blake2b(b"; ".join(cookies), digest_size=16).hexdigest()
        refresh = False
        max_age: float | None = None
        if c.cache_control:
            directives = request_directives(headers.get_all(b"cache-control"), headers.get(b"pragma"))
            if not directives.store:
                stats.bypasses += 1
                return _BYPASSED
            refresh, max_age = directives.refresh, directives.max_age
        route_name = route.name or ""
        key = self.keys.key(
            method=request.method,
            host=request.host,
            path=request.path,
            query_string=request.query_string,
            header_values=self.keys.header_values(headers),
            route=route_name,
            principal=principal,
        )
        head = request.method == "HEAD"
        if refresh:
            return _Lookup(_REFRESH, key, route_name, head=head)
        store = self.cache.store
        if store is None:  # not started yet
            stats.bypasses += 1
            return _BYPASSED
        try:
            hit = await self._find(store, request, route_name, key, max_age)
            if hit is not None:
                return hit
            flight = None if head else self.cache.flights.lead(key)
            if flight is None and not head:
                # Another request is fetching this key: wait for its answer.
                stats.coalesced += 1
                await self.cache.flights.wait(key)
                hit = await self._find(store, request, route_name, key, max_age)
                if hit is not None:
                    return hit
        except CacheStoreError as exc:
            log.debug("proxy-cache: lookup failed, bypassing: %s", exc)
            stats.store_errors += 1
            stats.bypasses += 1
            return _BYPASSED
        return _Lookup(_MISS, key, route_name, flight=flight, head=head)

    async def _find(
        self, store: CacheStore, request: Request, route: str, key: str, max_age: float | None
    ) -> _Lookup | None:
        entry = await store.get(route, key)
        if entry is None:
            return None
        age = entry.current_age()
        if age >= entry.fresh or (max_age is not None and age > max_age):
            return None
        headers = request.headers
        for name, value in entry.vary:
            found = headers.get_all(name)
            if (b", ".join(found) if found else None) != value:
                return None
        answer = Headers(entry.headers)
        answer.raw += [(b"age", b"%d" % int(age)), _HIT, (b"x-cache-key", key.encode("ascii"))]
        head = request.method == "HEAD"
        response = Response(entry.status, answer, b"" if head else entry.body, source="gateway")
        stats = self.cache.counts
        stats.hits += 1
        if not head:
            stats.served_bytes += len(entry.body)
        return _Lookup(_HIT, key, route, hit=response, head=head)

    # -- response phase ------------------------------------------------------------------------

    async def on_response(self, request: Request, response: Response) -> Response | None:
        lookup: _Lookup | None = request.state.get(_STATE)
        if lookup is None:
            return None  # a filter before this one answered: the cache was not asked
        if lookup.hit is not None:
            return None  # our own answer
        flight = lookup.flight
        headers = response.headers
        lifetime = self._storable(request, response) if lookup.status is not _BYPASS else None
        if lifetime is None:
            if flight is not None:
                flight.land()
            if lookup.status is not _BYPASS:
                self.cache.counts.bypasses += 1  # looked up, but the answer may not be stored
            headers.remove(b"x-cache-status", b"x-cache-key")
            headers.raw.append(_BYPASS)
            return None
        if lookup.status is _MISS:
            self.cache.counts.misses += 1
        else:
            self.cache.counts.refreshes += 1
        headers.remove(b"x-cache-status", b"x-cache-key")
        headers.raw += [lookup.status, (b"x-cache-key", lookup.key.encode("ascii"))]
        if lookup.head:
            return None  # a HEAD's answer has no body to store
        stored_headers = tuple((k, v) for k, v in headers.raw if k not in _NOT_STORED)
        fresh, age = lifetime
        entry_of = _EntryMaker(
            status=response.status,
            headers=stored_headers,
            fresh=fresh,
            retain=float(self.config.storage_ttl or fresh),
            age=age,
            vary=_vary_values(request.headers, headers),
        )
        body = response.body
        if isinstance(body, bytes | bytearray | memoryview):
            await self._store(lookup, entry_of, bytes(body))
            if flight is not None:
                flight.land()
            return None
        if flight is not None:
            response.defer(flight.aland)  # lands whatever happens to the body
        response.body = self._copying(body, lookup, entry_of)
        return None

    def _storable(self, request: Request, response: Response) -> tuple[float, float] | None:
        """(freshness lifetime, age) when the answer may be stored, else ``None``."""
        c = self.config
        if response.source != "service" or response.status not in self.codes:
            return None
        headers = response.headers
        if not self._type_allowed(headers.get(b"content-type")):
            return None
        if not c.cache_set_cookie and b"set-cookie" in headers:
            return None
        for value in headers.get_all(b"vary"):
            if b"*" in value:
                return None
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > c.max_entry_size):
            return None  # streams through untouched
        if not c.cache_control:
            return float(c.cache_ttl), 0.0
        lifetime = freshness(
            headers.get_all(b"cache-control"),
            expires=headers.get(b"expires"),
            date=headers.get(b"date"),
            default=float(c.cache_ttl),
            now=time.time(),
        )
        if lifetime is None:
            return None
        upstream_age = headers.get(b"age")
        age = float(int(upstream_age)) if upstream_age is not None and upstream_age.isdigit() else 0.0
        if age >= lifetime:
            return None
        return lifetime, age

    def _type_allowed(self, value: bytes | None) -> bool:
        if self.any_type:
            return True
        if value is None:
            return False
        text = value.decode("latin-1").lower()
        media = text.partition(";")[0].strip()
        if media in self.media_types or text.replace(" ", "") in self.exact_types:
            return True
        family = media.partition("/")[0] + "/"
        return family in self.type_families

    async def _copying(
        self, body: AsyncIterable[bytes], lookup: _Lookup, entry_of: _EntryMaker
    ) -> AsyncIterator[bytes]:
        """Pass ``body`` through, keeping a copy while it fits; store the copy after the last byte."""
        cap = self.config.max_entry_size
        parts: list[bytes] | None = []
        size = 0
        async for chunk in body:
            if parts is not None:
                size += len(chunk)
                if size > cap:
                    parts = None  # too big: stream on, store nothing
                else:
                    parts.append(chunk)
            yield chunk
        if parts is not None:
            await self._store(lookup, entry_of, b"".join(parts))
        if lookup.flight is not None:
            lookup.flight.land()

    async def _store(self, lookup: _Lookup, entry_of: _EntryMaker, body: bytes) -> None:
        store = self.cache.store
        if store is None or len(body) > self.config.max_entry_size:
            return
        entry = entry_of.make(body)
        try:
            await store.set(lookup.route, lookup.key, entry)
        except CacheStoreError as exc:
            log.debug("proxy-cache: storing failed: %s", exc)
            self.cache.counts.store_errors += 1
            return
        stats = self.cache.counts
        stats.stored += 1
        stats.stored_bytes += len(body)


@attrs.frozen
class _EntryMaker:
    """An entry but for its body (known after the last byte)."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    fresh: float
    retain: float
    age: float
    vary: tuple[tuple[bytes, bytes | None], ...]

    def make(self, body: bytes) -> Entry:
        headers = tuple((k, v) for k, v in self.headers if k != b"content-length")
        headers += ((b"content-length", b"%d" % len(body)),)
        return Entry(self.status, headers, body, self.fresh, max(self.retain, 1.0), self.age, self.vary)


def _has_body(headers: Headers) -> bool:
    length = headers.get(b"content-length")
    return (length is not None and length != b"0") or b"transfer-encoding" in headers


def _consumer_of(request: Request) -> str:
    consumer: Any = request.consumer
    if consumer is None:
        return ""
    key = getattr(consumer, "key", None)
    if isinstance(key, str) and key:
        return "consumer:" + key
    return "consumer:" + (request.consumer_name or repr(consumer))


def _vary_values(
    request_headers: Headers, response_headers: Headers
) -> tuple[tuple[bytes, bytes | None], ...]:
    """The request header values the answer's ``Vary`` names (compared on every hit)."""
    names: list[bytes] = []
    for value in response_headers.get_all(b"vary"):
        names += [n.strip().lower() for n in value.split(b",") if n.strip()]
    found: list[tuple[bytes, bytes | None]] = []
    for name in dict.fromkeys(names):
        values = request_headers.get_all(name)
        found.append((name, b", ".join(values) if values else None))
    return tuple(found)
