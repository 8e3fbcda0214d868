"""Static instances for some services, watchers for the others.

``build_discovery`` is what the gateway uses by default: a service with a
``discovery`` table gets a Consul or DNS watcher, every other one keeps the
static ``url``/``targets`` of its config.  ``CompositeDiscovery`` starts and
stops the watchers with the gateway's lifespan -- all at once, so that a hung
Consul costs the start one ``initial_timeout``, not one per service.
``no_instances`` is the error for a service without instances: 503
``DiscoveryPending`` (with ``Retry-After``) while its discovery has not answered
yet, else 503 ``NoHealthyUpstream``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup

from .._discovery import StaticDiscovery
from .._errors import NoHealthyUpstream, ServiceUnavailable
from .._protocols import Discovery, Instance
from ._config import DiscoveryConfig
from ._consul import ConsulDiscovery, DiscoveryStats
from ._dns import DnsDiscovery
from ._errors import DiscoveryPending

__all__ = ["CompositeDiscovery", "build_discovery", "no_instances"]


class CompositeDiscovery:
    """``dynamic[service]`` for the services it names, ``static`` for the rest.

    ``start``/``stop`` start and stop every dynamic discovery that has them.
    """

    __slots__ = ("_dynamic", "_started", "_static")

    def __init__(self, static: Discovery, dynamic: Mapping[str, Discovery]) -> None:
        self._static = static
        self._dynamic = dict(dynamic)
        self._started: list[Any] = []

    def instances(self, service: str) -> Sequence[Instance]:
        watcher = self._dynamic.get(service)
        if watcher is None:
            return self._static.instances(service)
        return watcher.instances(service)

    @property
    def watchers(self) -> Mapping[str, Discovery]:
        """The dynamic discovery of each service that has one."""
        return self._dynamic

    def stats(self) -> dict[str, DiscoveryStats]:
        """Per service, the ``stats`` of its watcher (for ``gatekeep_discovery_*`` metrics)."""
        out: dict[str, DiscoveryStats] = {}
        for name, watcher in self._dynamic.items():
            stats = getattr(watcher, "stats", None)
            if isinstance(stats, DiscoveryStats):
                out[name] = stats
        return out

    def pending(self, service: str) -> bool:
        """Whether the discovery of ``service`` has not answered yet."""
        watcher = self._dynamic.get(service)
        pending = getattr(watcher, "pending", None)
        return bool(pending is not None and pending(service))

    async def start(self, task_group: TaskGroup) -> None:
        """Start every watcher at once; each returns after its first lookup or its ``initial_timeout``."""

        async def start_one(watcher: Any, start: Any) -> None:
            await start(task_group)
            self._started.append(watcher)

        async with anyio.create_task_group() as starting:
            for watcher in (self._static, *self._dynamic.values()):
                start = getattr(watcher, "start", None)
                if start is not None and not any(w is watcher for w in self._started):
                    starting.start_soon(start_one, watcher, start)

    def adopt(self, previous: CompositeDiscovery) -> None:
        """A reload: take over the started watchers this one shares with ``previous``.

        ``start`` then starts only the new ones, and ``previous.stop()`` stops
        only those this one dropped.
        """
        mine = [w for w in previous._started if any(w is d for d in self._dynamic.values())]
        previous._started = [w for w in previous._started if not any(w is m for m in mine)]
        self._started.extend(mine)

    async def stop(self) -> None:
        started, self._started = self._started, []
        for watcher in reversed(started):
            await watcher.stop()


def no_instances(discovery: Discovery, service: str) -> ServiceUnavailable:
    """The 503 for a service with no instance: pending discovery, or none healthy."""
    pending = getattr(discovery, "pending", None)
    if pending is not None and pending(service):
        return DiscoveryPending(
            f"the instances of service {service!r} are not known yet; discovery is starting"
        )
    return NoHealthyUpstream(f"service {service!r} has no available instance")


class _Service(Protocol):
    # What ``build_discovery`` reads of a ``ServiceConfig`` (the config module imports
    # this package for ``DiscoveryConfig``: naming its classes here would be a cycle).
    @property
    def name(self) -> str: ...

    @property
    def protocol(self) -> str: ...

    @property
    def discovery(self) -> DiscoveryConfig | None: ...


class _Config(Protocol):
    @property
    def services(self) -> Sequence[_Service]: ...


def build_discovery(config: _Config, static: Mapping[str, Sequence[Instance]]) -> Discovery:
    """The gateway's default discovery for ``config`` (a ``GatewayConfig``): static unless
    a service has ``discovery``."""
    fixed = StaticDiscovery(static)
    dynamic: dict[str, Discovery] = {}
    for sc in config.services:
        dc = sc.discovery
        if dc is None:
            continue
        if dc.consul is not None:
            dynamic[sc.name] = ConsulDiscovery(dc.consul, service=sc.name, scheme=sc.protocol)
        elif dc.dns is not None:
            dynamic[sc.name] = DnsDiscovery(dc.dns, service=sc.name, scheme=sc.protocol)
    if not dynamic:
        return fixed
    return CompositeDiscovery(fixed, dynamic)
