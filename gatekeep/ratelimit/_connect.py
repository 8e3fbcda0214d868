"""Redis settings, the clients made from them, and one shared limiter per settings.

Every ``rate-limiting`` filter of a gateway that names the same Redis (the
same ``RedisSettings``) shares one client -- one connection pool -- and one
``RedisRateLimiter``, so that their decisions also share one batching queue.
``open_store`` hands out the shared limiter and counts its users;
``close_store`` closes the client when the last one is done.  The registry is
per event loop (a redis.asyncio client belongs to the loop that made it).
``open_shared`` / ``close_shared`` are that registry for any object made on a
client (the proxy cache's Redis store uses them too).

Clients are made with redis-py's own classes: ``Redis`` (optionally from a
``url``), ``RedisCluster`` (``mode = "cluster"``) and ``Sentinel``
(``mode = "sentinel"``).  redis-py's own retries are switched off and its socket
timeouts set to the configured timeout: the limiter bounds every call anyway,
and a retry inside that bound would only turn a fast failure into a slow one.
The "no retries" object is redis-py's asyncio ``Retry`` (redis 8 warns when an
asyncio client is handed the synchronous one).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

import attrs
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import ConnectionPool, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from .. import validators
from ._redis import RedisRateLimiter

__all__ = [
    "RedisSettings",
    "SentinelNode",
    "Shared",
    "close_shared",
    "close_store",
    "connect",
    "open_shared",
    "open_store",
]


def _ca_file(_: object, attribute: object, value: str | None) -> None:
    """A CA bundle that loads now, so that a bad path fails the config, not the first request."""
    if value is None:
        return
    try:
        ssl.create_default_context(cafile=value)
    except FileNotFoundError:
        raise ValueError(f"no such file: {value!r}") from None
    except ssl.SSLError as exc:  # before OSError, its base
        raise ValueError(f"{value!r} holds no PEM CA certificates ({exc.reason or exc})") from None
    except OSError as exc:
        raise ValueError(f"cannot read {value!r}: {exc.strerror}") from None


def _prefix(_: object, attribute: object, value: str) -> None:
    if "{" in value or "}" in value:
        raise ValueError(f"must not hold braces (Redis Cluster hash tags), got {value!r}")


@attrs.frozen
class SentinelNode:
    """One Sentinel to ask for the master (Kong's ``sentinel_nodes`` entries)."""

    host: str
    port: int = attrs.field(default=26379, validator=validators.port)


@attrs.frozen
class RedisSettings:
    """Kong's ``redis`` table, plus ``url``, ``mode`` and ``prefix``.

    ``timeout`` is in milliseconds, as Kong's: no decision waits longer.
    ``url`` (``redis://``, ``rediss://``, ``unix://``) replaces host, port,
    database and ssl (a ``rediss://`` url verifies the server as redis-py
    does by default).  TLS: ``ssl_verify`` checks the certificate and the
    name (``server_name``, else ``host``) against ``ca_file`` (a PEM bundle,
    read at load time) or the system's CAs; ``server_name`` is also the SNI.
    ``mode = "cluster"`` uses ``RedisCluster`` with ``host``/``port`` (or
    ``url``) as its startup node; ``mode = "sentinel"`` asks
    ``sentinel_nodes`` for ``sentinel_master``.
    """

    kong_names: ClassVar[Mapping[str, str]] = validators.kong_fields(
        "host", "port", "timeout", "username", "password", "database", "ssl", "ssl_verify", "server_name"
    )

    host: str | None = None
    port: int = attrs.field(default=6379, validator=validators.port)
    timeout: int = attrs.field(default=2000, validator=validators.positive)
    username: str | None = None
    password: str | None = None
    database: int = attrs.field(default=0, validator=validators.non_negative)
    ssl: bool = False
    ssl_verify: bool = False
    server_name: str | None = None
    ca_file: str | None = attrs.field(default=None, validator=_ca_file)
    url: str | None = None
    mode: Literal["standalone", "cluster", "sentinel"] = "standalone"
    sentinel_master: str | None = None
    sentinel_nodes: tuple[SentinelNode, ...] = ()
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    prefix: str = attrs.field(default="gk:rl:", validator=_prefix)

    def __attrs_post_init__(self) -> None:
        if self.url is not None and not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis.url must start with redis://, rediss:// or unix://, got {self.url!r}")
        if self.mode == "sentinel":
            if not self.sentinel_master or not self.sentinel_nodes:
                raise ValueError("redis.mode 'sentinel' needs sentinel_master and sentinel_nodes")
        elif self.url is None and not self.host:
            raise ValueError("redis needs a host (or a url)")
        if self.mode == "cluster" and self.database != 0:
            raise ValueError("redis.database must be 0 in cluster mode")
        if self.ca_file is not None:
            if self.url is not None:
                verified = self.url.startswith("rediss://")
            else:
                verified = self.ssl and self.ssl_verify
            if not verified:
                raise ValueError(
                    "redis.ca_file is only used with ssl = true and ssl_verify = true (or a rediss:// url)"
                )
        if self.server_name is not None:
            if not self.ssl or self.url is not None or self.mode != "standalone":
                raise ValueError("redis.server_name needs ssl = true with host/port in standalone mode")

    @property
    def seconds(self) -> float:
        return self.timeout / 1000


class _SNIConnection(SSLConnection):
    """A TLS connection that sends ``server_name`` as SNI (and checks it), not the host."""

    def __init__(self, *, server_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._server_name = server_name

    def _connection_arguments(self) -> Mapping[str, Any]:
        kwargs = dict(super()._connection_arguments())
        kwargs["server_hostname"] = self._server_name
        return kwargs


def connect(settings: RedisSettings) -> Redis | RedisCluster:
    """A redis-py asyncio client for ``settings`` (connections open lazily)."""
    s = settings
    common: dict[str, Any] = {
        "socket_timeout": s.seconds,
        "socket_connect_timeout": s.seconds,
        "retry": Retry(NoBackoff(), 0),
    }
    if s.username is not None:
        common["username"] = s.username
    if s.password is not None:
        common["password"] = s.password
    tls: dict[str, Any] = {}
    if s.ssl and s.url is None:
        tls = {
            "ssl_cert_reqs": "required" if s.ssl_verify else "none",
            "ssl_check_hostname": s.ssl_verify,
        }
    if s.ca_file is not None:
        tls["ssl_ca_certs"] = s.ca_file
        if s.url is not None:
            common.update(tls)
    if s.mode == "cluster":
        cluster: RedisCluster  # typed here, as below
        if s.url is not None:
            cluster = RedisCluster.from_url(s.url, **common)
        else:
            cluster = RedisCluster(host=s.host, port=s.port, ssl=s.ssl, **tls, **common)
        return cluster
    if s.mode == "sentinel":
        # The Sentinels' own connections need the same: redis-py's default
        # retries with backoff would spend seconds on one Sentinel that is down.
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": s.seconds,
            "socket_connect_timeout": s.seconds,
            "retry": Retry(NoBackoff(), 0),
        }
        if s.sentinel_username is not None:
            sentinel_kwargs["username"] = s.sentinel_username
        if s.sentinel_password is not None:
            sentinel_kwargs["password"] = s.sentinel_password
        sentinel = Sentinel(
            [(n.host, n.port) for n in s.sentinel_nodes],
            sentinel_kwargs=sentinel_kwargs,
            db=s.database,
            ssl=s.ssl,
            **tls,
            **common,
        )
        client: Redis = sentinel.master_for(s.sentinel_master or "")
        return client
    # Typed here: some redis-py releases leave these constructors' results unannotated.
    standalone: Redis
    if s.url is not None:
        standalone = Redis.from_url(s.url, **common)
    elif s.ssl and s.server_name:
        pool = ConnectionPool(
            connection_class=_SNIConnection,
            server_name=s.server_name,
            host=s.host or "",
            port=s.port,
            db=s.database,
            **tls,
            **common,
        )
        standalone = Redis.from_pool(pool)
    else:
        standalone = Redis(host=s.host or "", port=s.port, db=s.database, ssl=s.ssl, **tls, **common)
    return standalone


class _Closable(Protocol):
    async def aclose(self) -> None: ...


_T = TypeVar("_T", bound=_Closable)


@attrs.define(eq=False)
class Shared(Generic[_T]):
    """One client, the object made on it, and how many users hold them."""

    client: Any
    value: _T
    users: int = 0


def open_shared(
    registry: dict[tuple[RedisSettings, int], Shared[_T]],
    settings: RedisSettings,
    make: Callable[[Redis | RedisCluster], _T],
) -> _T:
    """The object ``make`` built on the client of ``settings`` for this event loop (counted)."""
    name = (settings, id(asyncio.get_running_loop()))
    shared = registry.get(name)
    if shared is None:
        client = connect(settings)
        shared = registry[name] = Shared(client, make(client))
    shared.users += 1
    return shared.value


async def close_shared(
    registry: dict[tuple[RedisSettings, int], Shared[_T]], settings: RedisSettings
) -> None:
    """One user of ``settings`` is done; the last one closes the object, then the client."""
    name = (settings, id(asyncio.get_running_loop()))
    shared = registry.get(name)
    if shared is None:
        return
    shared.users -= 1
    if shared.users > 0:
        return
    del registry[name]
    try:
        await shared.value.aclose()
    finally:
        await _close(shared.client)


_stores: dict[tuple[RedisSettings, int], Shared[RedisRateLimiter]] = {}


def open_store(settings: RedisSettings) -> RedisRateLimiter:
    """The limiter shared by every user of ``settings`` on this event loop (counted)."""
    return open_shared(
        _stores,
        settings,
        lambda client: RedisRateLimiter(client, prefix=settings.prefix, timeout=settings.seconds),
    )


async def close_store(settings: RedisSettings) -> None:
    """One user of ``settings`` is done; the last one closes the client."""
    await close_shared(_stores, settings)


async def _close(client: Redis | RedisCluster) -> None:
    """Close ``client``, and for a Sentinel's master client the Sentinels' clients too."""
    try:
        await client.aclose()
    finally:
        pool = getattr(client, "connection_pool", None)
        if isinstance(pool, SentinelConnectionPool):
            # Before redis 8, master_for() hands its pool to the client as the
            # caller's (the client's aclose() leaves it open), and Sentinel has
            # no aclose() of its own: close the pool and each Sentinel's client.
            await pool.disconnect()
            for sentinel_client in pool.sentinel_manager.sentinels:
                await sentinel_client.aclose()
