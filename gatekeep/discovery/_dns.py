"""DNS SRV discovery with dnspython's async resolver.

Theory of operation
-------------------
One refresh asks for the SRV records of ``name``, then the A/AAAA addresses
of each target: taken from the answer's additional section when the server
put them there (Consul and most authoritative servers do), else resolved.
The published instances are the usable targets of the *lowest* priority
that has any address (RFC 2782: higher priorities are only for when the
lower ones are all gone), each with an ``Instance.weight`` proportional to
its SRV weight (``weight * 100``, shared among a target's addresses).  The
gateway's weighted balancer then spreads requests in the proportion RFC 2782
asks for; ``gatekeep.discovery.select`` does the RFC's per-call draw for
those who want it verbatim.

The next refresh comes after the smallest TTL of the records used, clamped
to ``[min_ttl, max_ttl]``.  NXDOMAIN, an empty answer and a lone ``"."``
target are answers: the service has no instance (the gateway answers 503).
A failure -- timeout, SERVFAIL, refused, no nameserver -- is not: the last
known good instances stay, the failure is counted and logged once, and the
lookup is retried with a backoff from ``min_ttl`` doubling up to 30 s (never
above ``max_ttl``).  dnspython's errors are translated to ``DnsError`` here.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import anyio
import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from .._protocols import Instance
from ._config import DnsConfig
from ._consul import DiscoveryStats
from ._errors import DnsError
from ._srv import SrvRecord, by_priority
from ._watcher import Watcher

__all__ = ["DnsDiscovery", "SrvLookup"]

log = logging.getLogger("gatekeep.discovery")

# A lookup that is an answer, not a failure: the name (or that record type) does not exist.
_EMPTY = (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer)


class SrvLookup:
    """The result of one refresh: SRV records, their targets' addresses, the TTL to keep it."""

    __slots__ = ("addresses", "records", "ttl")

    def __init__(self, records: list[SrvRecord], addresses: dict[str, list[str]], ttl: float | None) -> None:
        self.records = records
        self.addresses = addresses
        self.ttl = ttl

    def instances(self, scheme: str) -> tuple[Instance, ...]:
        """The instances of the lowest priority that has an address."""
        for group in by_priority(self.records):
            out: list[Instance] = []
            for record in group:
                addrs = self.addresses.get(record.target, [])
                for ip in addrs:
                    share = record.weight * 100 // len(addrs)
                    out.append(
                        Instance(
                            host=ip,
                            port=record.port,
                            scheme=scheme,
                            weight=max(share, 1) if record.weight else 0,
                            id=f"{record.target}:{record.port}" + (f"/{ip}" if len(addrs) > 1 else ""),
                            meta={
                                "target": record.target,
                                "priority": str(record.priority),
                                "srv_weight": str(record.weight),
                            },
                        )
                    )
            if out:
                return tuple(sorted(out, key=lambda i: (i.id, i.host, i.port)))
        return ()


def _target(name: Any) -> str:
    text: str = name.to_text(omit_final_dot=True)
    return text or "."


class DnsDiscovery(Watcher):
    """One service's instances from DNS SRV records, refreshed by TTL.

    A ``Discovery``; start it with ``await discovery.start(task_group)`` and
    stop it with ``await discovery.stop()`` (the gateway does both).

    Args:
        config: the ``dns`` table of the service.
        service: the gatekeep service name.
        scheme: the scheme of the instances (the service's ``protocol``).
        resolver: a configured ``dns.asyncresolver.Resolver`` (default: built from ``config``).
    """

    source = "dns"

    def __init__(
        self,
        config: DnsConfig,
        *,
        service: str,
        scheme: str = "http",
        resolver: dns.asyncresolver.Resolver | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        retry_max: float = 30.0,
    ) -> None:
        self.config = config
        self.service = service
        self.scheme = scheme
        self.stats = DiscoveryStats(source=self.source, service=service)
        self.records: list[SrvRecord] = []
        self.next_refresh = 0.0
        super().__init__()
        self._rng = rng or random.Random()
        self._clock = clock
        self._retry_max = min(retry_max, config.max_ttl)
        self._failures = 0
        self.initial_timeout = config.initial_timeout
        self._qname = dns.name.from_text(config.name)
        self._resolver = resolver if resolver is not None else self._make_resolver(config)

    @staticmethod
    def _make_resolver(config: DnsConfig) -> dns.asyncresolver.Resolver:
        servers = config.all_nameservers
        try:
            resolver = dns.asyncresolver.Resolver(configure=not servers)
        except dns.exception.DNSException as exc:
            raise DnsError(f"cannot read the system's resolver configuration: {exc}") from exc
        if servers:
            resolver.nameservers = list(servers)
        resolver.port = config.port
        resolver.lifetime = config.timeout
        resolver.timeout = config.timeout
        return resolver

    # -- lifespan ---------------------------------------------------------------

    async def _loop(self, started: Callable[[], None]) -> None:
        ready = False
        while True:
            delay = await self.refresh()
            if not ready:
                ready = True
                started()
            await anyio.sleep(delay)

    # -- one refresh ------------------------------------------------------------

    async def refresh(self) -> float:
        """Look the service up once; return the seconds until the next lookup."""
        config = self.config
        self.stats.queries += 1
        try:
            found = await self.lookup()
        except DnsError as exc:
            self._failed(exc)
            delay: float = min(self._retry_max, config.min_ttl * 2.0 ** min(self._failures - 1, 30))
            delay = max(config.min_ttl, delay / 2 + self._rng.uniform(0, delay / 2))
        else:
            self._publish(found)
            ttl = found.ttl if found.ttl is not None else config.min_ttl
            delay = min(config.max_ttl, max(config.min_ttl, ttl))
        self.next_refresh = self._clock() + delay
        return delay

    async def lookup(self) -> SrvLookup:
        """The SRV records of the name and their targets' addresses.

        Raises:
            DnsError: the lookup failed (not: the name has no records).
        """
        resolver = self._resolver
        tcp = self.config.tcp
        try:
            answer = await resolver.resolve(
                self._qname, "SRV", tcp=tcp, search=False, raise_on_no_answer=False
            )
        except _EMPTY:
            return SrvLookup([], {}, None)
        except dns.exception.DNSException as exc:
            raise DnsError(f"SRV lookup of {self.config.name!r} failed: {exc}") from exc
        except OSError as exc:
            raise DnsError(f"SRV lookup of {self.config.name!r} failed: {exc}") from exc
        rrset = answer.rrset
        if rrset is None:
            return SrvLookup([], {}, None)
        ttls = [float(rrset.ttl)]
        records = [
            SrvRecord(rr.priority, rr.weight, rr.port, _target(rr.target))
            for rr in rrset
            if 0 < rr.port < 65536
        ]
        types = [dns.rdatatype.from_text(t) for t in self.config.address_types]
        additional: dict[str, list[str]] = {}
        for extra in answer.response.additional:
            if extra.rdtype in types:
                target = _target(extra.name)
                additional.setdefault(target, []).extend(rr.address for rr in extra)
                ttls.append(float(extra.ttl))
        addresses: dict[str, list[str]] = {}
        for record in records:
            target = record.target
            if target == "." or target in addresses:
                continue
            if target in additional:
                addresses[target] = additional[target]
                continue
            found: list[str] = []
            for rdtype in types:
                try:
                    reply = await resolver.resolve(
                        target + ".", rdtype, tcp=tcp, search=False, raise_on_no_answer=False
                    )
                except _EMPTY:
                    continue
                except (dns.exception.DNSException, OSError) as exc:
                    raise DnsError(f"address lookup of SRV target {target!r} failed: {exc}") from exc
                if reply.rrset is not None:
                    found.extend(rr.address for rr in reply.rrset)
                    ttls.append(float(reply.rrset.ttl))
            addresses[target] = found
        return SrvLookup(records, addresses, min(ttls))

    def _publish(self, found: SrvLookup) -> None:
        stats = self.stats
        if self._failures:
            log.warning(
                "dns discovery of %r works again after %d failed lookups", self.config.name, self._failures
            )
        self._failures = 0
        self.answered = True
        stats.healthy = True
        stats.last_success = self._clock()
        self.records = found.records
        instances = found.instances(self.scheme)
        if instances != self._instances:
            self._instances = instances
            stats.updates += 1
            stats.instances = len(instances)
            if not instances:
                log.warning("dns has no usable instance for %r", self.config.name)

    def _failed(self, exc: DnsError) -> None:
        stats = self.stats
        stats.errors += 1
        stats.healthy = False
        stats.last_error = str(exc)
        self._failures += 1
        if self._failures == 1:
            log.warning("%s; keeping the %d last known instances until it works", exc, len(self._instances))
