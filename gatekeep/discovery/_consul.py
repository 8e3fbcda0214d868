"""Consul over its HTTP API: a small client and the blocking-query watcher.

Theory of operation
-------------------
``ConsulClient`` sends one request to the agent through gatekeep's own
upstream pool (h11 over anyio, keep-alive, TLS and mTLS), reads the whole
answer and turns every failure into a ``ConsulError`` at this one boundary.

``ConsulDiscovery`` keeps one service's instances fresh.  Its loop runs on
the gateway's lifespan task group::

    index = 0
    loop:
        GET /v1/health/service/<name>?passing&tag=..&dc=..[&index=<index>&wait=<wait>]
              (a plain read -- index 0 -- may take ``query_timeout``; a blocking one
              ``wait`` + wait/16 + 10 s)
        ok    -> instances = parse(body); index = next_index(index, X-Consul-Index)
        error -> keep the last known good instances, count it, log once per
                 outage, sleep a backoff with jitter (0.25 s doubling to 30 s)
        never start two queries closer than ``min_interval`` (a rate limit,
        so that an index that never blocks cannot make the loop spin)

A blocking query returns as soon as the service changes (or when ``wait``
passes, plus Consul's jitter of up to wait/16), so the gateway sees a change
within one round trip.  ``instances()`` is a plain attribute read: the
request path never waits for Consul.  An empty set is published as is; the
gateway then answers 503 ``NoHealthyUpstream``.  The gateway's start waits for
the first answer at most ``initial_timeout``; until one arrives the watcher is
``pending`` and the gateway answers 503 ``DiscoveryPending`` with ``Retry-After``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import anyio
import attrs

from .._errors import GatekeepError
from .._http import empty_body, replayable
from .._protocols import Instance
from .._upstream import PoolLimits, Timeouts, TLSSettings, UpstreamPool
from ._config import ConsulConfig, ConsulTLSConfig
from ._consul_api import next_index, parse_health, parse_index
from ._errors import ConsulError, ConsulHTTPError, ConsulUnavailable
from ._watcher import Watcher

__all__ = ["ConsulClient", "ConsulDiscovery", "ConsulReply", "DiscoveryStats"]

log = logging.getLogger("gatekeep.discovery")

# Answers bigger than this are refused (a health answer for thousands of instances is a few MiB).
_MAX_BODY = 64 * 1024 * 1024


@attrs.define
class DiscoveryStats:
    """What a watcher has seen, for metrics (``gatekeep_discovery_*``) and tests.

    Attributes:
        source: ``consul`` or ``dns``.
        service: the gatekeep service name.
        instances: how many instances are published now.
        updates: how many times the published set changed.
        queries: lookups made (successful or not).
        errors: lookups that failed (the last known good set was kept).
        healthy: whether the last lookup succeeded.
        last_error: what the last failure was.
        last_success: monotonic time of the last successful lookup.
    """

    source: str
    service: str
    instances: int = 0
    updates: int = 0
    queries: int = 0
    errors: int = 0
    healthy: bool = False
    last_error: str = ""
    last_success: float | None = None


@attrs.frozen
class ConsulReply:
    status: int
    index: int | None
    body: bytes
    headers: Mapping[str, str]

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def tls_settings(config: ConsulTLSConfig) -> TLSSettings:
    return TLSSettings(
        verify=config.verify,
        ca_file=config.ca_file,
        cert_file=config.cert_file,
        key_file=config.key_file,
        server_name=config.tls_server_name,
    )


class ConsulClient:
    """Requests to one Consul agent.

    Args:
        address: ``http://host:8500`` or ``https://host:8501``.
        token: an ACL token (sent as ``X-Consul-Token``).
        tls: TLS settings for an ``https`` address (CA, client certificate for mTLS).
        connect_timeout: seconds to connect (TLS handshake included).
    """

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls: TLSSettings | ConsulTLSConfig | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        parts = urlsplit(address)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// Consul address, got {address!r}")
        scheme = parts.scheme
        port = parts.port or (8501 if scheme == "https" else 8500)
        self.address = address
        self._instance = Instance(host=parts.hostname, port=port, scheme=scheme)
        self._tls = tls_settings(tls) if isinstance(tls, ConsulTLSConfig) else tls
        if scheme == "https" and self._tls is None:
            self._tls = TLSSettings()
        self._token = token
        self._connect_timeout = connect_timeout
        self._pool = UpstreamPool(PoolLimits(max_connections=8, max_idle=4, idle_timeout=15.0))

    async def request(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        *,
        body: bytes | None = None,
        read_timeout: float = 15.0,
    ) -> ConsulReply:
        """Send one request; return the answer when its status is 2xx.

        Raises:
            ConsulUnavailable: the agent could not be reached or did not answer in time.
            ConsulHTTPError: the agent answered an error status.
        """
        target = quote(path, safe="/:@")
        if query:
            target += "?" + urlencode(list(query))
        headers = [(b"accept", b"application/json"), (b"user-agent", b"gatekeep")]
        if self._token:
            headers.append((b"x-consul-token", self._token.encode("latin-1")))
        if body is not None:
            headers.append((b"content-type", b"application/json"))
            headers.append((b"content-length", str(len(body)).encode()))
        timeouts = Timeouts(connect=self._connect_timeout, read=read_timeout, write=10.0, pool=10.0)
        try:
            response = await self._pool.send(
                self._instance,
                method,
                target.encode("ascii"),
                headers,
                replayable(body) if body is not None else empty_body(),
                timeouts=timeouts,
                tls=self._tls,
                retry_safe=method in ("GET", "PUT"),  # Consul's PUTs here are idempotent
            )
            try:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.iter_body():
                    size += len(chunk)
                    if size > _MAX_BODY:
                        raise ConsulUnavailable(f"{self.address}: answer larger than {_MAX_BODY} bytes")
                    chunks.append(chunk)
            finally:
                await response.aclose()
        except ConsulError:
            raise
        except GatekeepError as exc:
            raise ConsulUnavailable(f"{self.address}: {exc.detail}") from exc
        data = b"".join(chunks)
        if not 200 <= response.status < 300:
            raise ConsulHTTPError(response.status, data.decode("utf-8", "replace").strip()[:300])
        pairs = {k.decode("latin-1"): v.decode("latin-1") for k, v in response.headers.raw}
        return ConsulReply(response.status, parse_index(pairs.get("x-consul-index")), data, pairs)

    async def aclose(self) -> None:
        await self._pool.aclose()


class ConsulDiscovery(Watcher):
    """One service's healthy instances from Consul, kept fresh with blocking queries.

    A ``Discovery``: ``instances(service)`` answers from memory.  Start it with
    ``await discovery.start(task_group)`` (the gateway does, on its lifespan
    task group) and stop it with ``await discovery.stop()``.

    Args:
        config: the ``consul`` table of the service.
        service: the gatekeep service name (the Consul name defaults to it).
        scheme: the scheme of the instances (the service's ``protocol``).
        rng: randomness for the backoff jitter.
        min_interval: the least time between the starts of two queries.
        retry_base / retry_max: the error backoff, doubling from base to max.
    """

    source = "consul"

    def __init__(
        self,
        config: ConsulConfig,
        *,
        service: str,
        scheme: str = "http",
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        min_interval: float = 0.05,
        retry_base: float = 0.25,
        retry_max: float = 30.0,
    ) -> None:
        self.config = config
        self.service = service
        self.consul_service = config.service or service
        self.scheme = scheme
        self.stats = DiscoveryStats(source=self.source, service=service)
        self.index = 0
        super().__init__()
        self._rng = rng or random.Random()
        self._clock = clock
        self._min_interval = min_interval
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._wait = config.wait_seconds
        self.initial_timeout = config.initial_timeout
        self._failures = 0
        self._client = ConsulClient(
            config.address,
            token=config.token,
            tls=config.tls,
            connect_timeout=config.connect_timeout,
        )
        base: list[tuple[str, str]] = []
        if config.passing:
            base.append(("passing", "true"))
        base.extend(("tag", t) for t in config.all_tags)
        if config.dc:
            base.append(("dc", config.dc))
        if config.filter:
            base.append(("filter", config.filter))
        self._query = base
        self._path = f"/v1/health/service/{self.consul_service}"

    # -- lifespan ---------------------------------------------------------------

    async def stop(self) -> None:
        """Stop watching and close connections to the agent.  Idempotent."""
        await super().stop()
        await self._client.aclose()

    async def _loop(self, started: Callable[[], None]) -> None:
        ready = False
        last_start = -1e9
        while True:
            gap = last_start + self._min_interval - self._clock()
            if gap > 0:
                await anyio.sleep(gap)
            last_start = self._clock()
            ok = await self.poll()
            if not ready:
                ready = True
                started()
            if not ok:
                await anyio.sleep(self._backoff())

    def _backoff(self) -> float:
        # "Equal jitter": half fixed so retries stay spaced, half random so gateways spread out.
        delay: float = min(self._retry_max, self._retry_base * 2.0 ** min(self._failures - 1, 30))
        return delay / 2 + self._rng.uniform(0, delay / 2)

    # -- one query ------------------------------------------------------------

    async def poll(self) -> bool:
        """Run one (blocking, once an index is known) query; ``True`` when it succeeded."""
        held = self.index
        query = list(self._query)
        read_timeout = self.config.query_timeout
        if held > 0:
            query += [("index", str(held)), ("wait", self.config.wait)]
            read_timeout = self._wait + self._wait / 16 + 10.0
        self.stats.queries += 1
        try:
            reply = await self._client.request("GET", self._path, query, read_timeout=read_timeout)
            found = parse_health(
                reply.body,
                scheme=self.scheme,
                passing_only=self.config.passing,
                tagged_address=self.config.tagged_address,
            )
        except ConsulError as exc:
            self._failed(exc)
            return False
        self.index = next_index(held, reply.index)
        if self.index == 0 and reply.index is not None and held > 0:
            log.info(
                "consul index for %r went backwards (%d -> %d); restarting the blocking loop",
                self.consul_service,
                held,
                reply.index,
            )
        self._publish(found)
        return True

    def _publish(self, found: tuple[Instance, ...]) -> None:
        stats = self.stats
        if self._failures:
            log.warning(
                "consul discovery for %r works again after %d failed queries",
                self.consul_service,
                self._failures,
            )
        self._failures = 0
        self.answered = True
        stats.healthy = True
        stats.last_success = self._clock()
        if found != self._instances:
            self._instances = found
            stats.updates += 1
            stats.instances = len(found)
            if not found:
                log.warning("consul has no usable instance of %r", self.consul_service)

    def _failed(self, exc: ConsulError) -> None:
        stats = self.stats
        stats.errors += 1
        stats.healthy = False
        stats.last_error = str(exc)
        self._failures += 1
        if self._failures == 1:
            log.warning(
                "consul discovery for %r failed (%s); keeping the %d last known instances until it works",
                self.consul_service,
                exc,
                len(self._instances),
            )
        # The agent may have restarted with a lower index: blocking on ours would
        # then hold for the whole wait.  Start over with a plain read.
        self.index = 0
