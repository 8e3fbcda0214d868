"""Static instances for some services, watchers for the others.

``build_discovery`` is what the gateway uses by default: a service with a
``discovery`` table gets a Consul or DNS watcher, every other one keeps the
static ``url``/``targets`` of its config.  ``CompositeDiscovery`` starts and
stops the watchers with the gateway's lifespan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from anyio.abc import TaskGroup

from .._discovery import StaticDiscovery
from .._protocols import Discovery, Instance
from ._consul import ConsulDiscovery, DiscoveryStats
from ._dns import DnsDiscovery

if TYPE_CHECKING:
    from .._config import GatewayConfig

__all__ = ["CompositeDiscovery", "build_discovery"]


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

    async def start(self, task_group: TaskGroup) -> None:
        """Start every watcher; each returns after its first lookup, so none is empty by mistake."""
        for watcher in (self._static, *self._dynamic.values()):
            start = getattr(watcher, "start", None)
            if start is not None:
                await start(task_group)
                self._started.append(watcher)

    async def stop(self) -> None:
        started, self._started = self._started, []
        for watcher in reversed(started):
            await watcher.stop()


def build_discovery(config: GatewayConfig, static: Mapping[str, Sequence[Instance]]) -> Discovery:
    """The gateway's default discovery for ``config``: static unless a service has ``discovery``."""
    fixed = StaticDiscovery(static)
    dynamic: dict[str, Discovery] = {}
    for sc in config.services:
        dc = getattr(sc, "discovery", None)
        if dc is None:
            continue
        if dc.consul is not None:
            dynamic[sc.name] = ConsulDiscovery(dc.consul, service=sc.name, scheme=sc.protocol)
        elif dc.dns is not None:
            dynamic[sc.name] = DnsDiscovery(dc.dns, service=sc.name, scheme=sc.protocol)
    if not dynamic:
        return fixed
    return CompositeDiscovery(fixed, dynamic)
