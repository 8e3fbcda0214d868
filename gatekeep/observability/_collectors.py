"""Metrics read from the gateway's components at scrape time.

Rate limiters, breakers, health checks, discovery watchers and JWKS caches
keep their own counters (``stats``) and states; this collector reads them
when Prometheus scrapes, so the request path pays nothing and nothing is
counted twice.  Components are found through the ``PluginContext`` the
prometheus plugin was bound with (``plugins``, ``upstreams``, ``discovery``);
plugin stats are duck-typed: a component that does not exist
or does not expose what is looked for is skipped, and one that fails while
being read is logged and left out of that scrape instead of failing it.

In multiprocess mode these values are the scraped worker's own (breaker
states, health and discovery are per process anyway); per-request counters
are the ones added up across workers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .._plugin_context import PluginContext

__all__ = ["GatewayCollector"]

log = logging.getLogger("gatekeep.observability")

# "unavailable": answered 503 because the store was down and fault_tolerant is off.
RATELIMIT_RESULTS = ("allowed", "rejected", "fallback", "unavailable")
BREAKER_STATES = ("closed", "half-open", "open")
# The proxy-cache plugin's lookup counters (stats fields), named by X-Cache-Status.
CACHE_RESULTS = {"hits": "hit", "misses": "miss", "refreshes": "refresh", "bypasses": "bypass"}
# Kong's target states, plus "ejected" (passive health checks took it out for a while).
HEALTH_STATES = ("healthy", "unhealthy", "ejected", "healthchecks_off")


def stat(stats: Any, name: str, default: Any = 0) -> Any:
    """``stats.name`` or ``stats[name]``: components expose attrs objects or dicts."""
    if isinstance(stats, Mapping):
        return stats.get(name, default)
    return getattr(stats, name, default)


def has_stat(stats: Any, name: str) -> bool:
    if isinstance(stats, Mapping):
        return name in stats
    return hasattr(stats, name)


def stats_of(obj: Any) -> Any:
    """``obj.stats``, or what ``obj.stats()`` returns; ``None`` when absent or failing."""
    try:
        stats = getattr(obj, "stats", None)
        if callable(stats):
            stats = stats()
    except Exception:  # a property or method that fails (or needs arguments): treat as absent
        return None
    return stats


def _records(stats: Any) -> Iterator[Any]:
    """One stats object, or each value of a mapping of them (per issuer, per service ...)."""
    if stats is None:
        return
    if (
        isinstance(stats, Mapping)
        and stats
        and not any(isinstance(v, int | float | str | bool) or v is None for v in stats.values())
    ):
        yield from stats.values()
    else:
        yield stats


def stat_records(filters: Iterable[Any]) -> Iterator[Any]:
    """Every stats record of the filters and of the objects they hold (one level deep).

    A rate-limiting filter has ``stats`` itself; a JWT filter holds a
    verifier whose ``stats()`` maps each issuer to its JWKS cache's stats.
    """
    seen: set[int] = set()

    def visit(obj: Any) -> Iterator[Any]:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        yield from _records(stats_of(obj))

    for f in filters:
        yield from visit(f)
        try:
            members = vars(f)
        except TypeError:
            continue
        for value in list(members.values()):
            if isinstance(value, str | bytes | int | float | bool) or value is None:
                continue
            if isinstance(value, Mapping):
                items: Iterable[Any] = list(value.values())
            elif isinstance(value, list | tuple):
                items = value
            else:
                items = (value,)
            for item in items:
                yield from visit(item)


class GatewayCollector(Collector):
    """A prometheus-client custom collector for one gateway's components."""

    def __init__(self, context: PluginContext, *, upstream_health: bool = False, version: str = "") -> None:
        self.context = context
        self.upstream_health = upstream_health
        if not version:
            from .. import __version__ as version
        self.version = version

    def describe(self) -> list[Metric]:
        # Nothing fixed to declare: the families present depend on the components.
        return []

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("gatekeep_info", "gatekeep's version (always 1).", labels=["version"])
        info.add_metric([self.version], 1.0)
        yield info
        parts: tuple[Callable[[], Iterable[Metric]], ...] = (
            self._ratelimit,
            self._jwks,
            self._cache,
            self._breakers,
            self._discovery,
            self._websockets,
        )
        for part in parts:
            try:
                yield from list(part())
            except Exception:
                log.exception("metrics: reading %s failed; left out of this scrape", part.__name__)
        if self.upstream_health:
            try:
                yield from list(self._health())
            except Exception:
                log.exception("metrics: reading upstream health failed; left out of this scrape")

    # -- proxied WebSockets: the gateway's WebSocketStats ----------------------

    def _websockets(self) -> Iterable[Metric]:
        stats = getattr(self.context, "websockets", None)
        routes = dict(getattr(stats, "routes", None) or {})
        if not routes:
            return []
        labels = ["service", "route"]
        connections = GaugeMetricFamily(
            "gatekeep_websocket_connections", "Proxied WebSocket connections open now.", labels=labels
        )
        opened = CounterMetricFamily(
            "gatekeep_websocket_connections_opened", "Proxied WebSocket connections accepted.", labels=labels
        )
        messages = CounterMetricFamily(
            "gatekeep_websocket_messages",
            "WebSocket messages relayed: ingress from clients, egress to them.",
            labels=[*labels, "direction"],
        )
        size = CounterMetricFamily(
            "gatekeep_websocket_message_bytes",
            "Payload bytes of relayed WebSocket messages: ingress from clients, egress to them.",
            labels=[*labels, "direction"],
        )
        closes = CounterMetricFamily(
            "gatekeep_websocket_closes",
            "Proxied WebSockets ended, by close code and by who closed first (client, upstream, gateway).",
            labels=[*labels, "code", "by"],
        )
        for (service, route), c in sorted(routes.items()):
            connections.add_metric([service, route], float(c.open))
            opened.add_metric([service, route], float(c.opened))
            messages.add_metric([service, route, "ingress"], float(c.messages_in))
            messages.add_metric([service, route, "egress"], float(c.messages_out))
            size.add_metric([service, route, "ingress"], float(c.bytes_in))
            size.add_metric([service, route, "egress"], float(c.bytes_out))
            for (code, by), count in sorted(dict(c.closes).items()):
                closes.add_metric([service, route, str(code), by], float(count))
        return [connections, opened, messages, size, closes]

    # -- rate limiting: filters whose stats count allowed/rejected/fallback ----

    def _ratelimit(self) -> Iterable[Metric]:
        totals = dict.fromkeys(RATELIMIT_RESULTS, 0.0)
        found = False
        for stats in stat_records(self.context.plugins):
            if not (has_stat(stats, "allowed") and has_stat(stats, "rejected")):
                continue
            found = True
            for result in RATELIMIT_RESULTS:
                totals[result] += float(stat(stats, result, 0) or 0)
        if not found:
            return []
        family = CounterMetricFamily(
            "gatekeep_ratelimit_decisions",
            "Rate-limit decisions: allowed, rejected (429), fallback (decided per process while the store"
            " was down), unavailable (503: store down, not fault tolerant).",
            labels=["result"],
        )
        for result, value in totals.items():
            family.add_metric([result], value)
        return [family]

    # -- JWKS caches: stats.fetches = {result: count} --------------------------

    def _jwks(self) -> Iterable[Metric]:
        totals: dict[str, float] = {}
        found = False
        for stats in stat_records(self.context.plugins):
            fetches = stat(stats, "fetches", None)
            if not isinstance(fetches, Mapping):
                continue
            found = True
            for result, count in fetches.items():
                totals[str(result)] = totals.get(str(result), 0.0) + float(count)
        if not found:
            return []
        family = CounterMetricFamily(
            "gatekeep_jwks_fetches", "Fetches of remote key sets (JWKS), by result.", labels=["result"]
        )
        for result, value in sorted(totals.items()):
            family.add_metric([result], value)
        return [family]

    # -- response caches: stats.hits/misses/... (the proxy-cache plugin) -------

    def _cache(self) -> Iterable[Metric]:
        lookups = dict.fromkeys(CACHE_RESULTS, 0.0)
        moved = dict.fromkeys(("stored", "served"), 0.0)
        memory = [0.0, 0.0]
        found = has_memory = False
        for stats in stat_records(self.context.plugins):
            if not (has_stat(stats, "hits") and has_stat(stats, "misses") and has_stat(stats, "bypasses")):
                continue
            found = True
            for result in CACHE_RESULTS:
                lookups[result] += float(stat(stats, result, 0) or 0)
            for direction in moved:
                moved[direction] += float(stat(stats, f"{direction}_bytes", 0) or 0)
            if has_stat(stats, "memory_bytes"):
                has_memory = True
                memory[0] += float(stat(stats, "memory_bytes", 0) or 0)
                memory[1] += float(stat(stats, "entries", 0) or 0)
        if not found:
            return []
        requests = CounterMetricFamily(
            "gatekeep_proxy_cache_requests",
            "Requests the response cache saw, by X-Cache-Status (hit, miss, refresh, bypass).",
            labels=["status"],
        )
        for result, value in lookups.items():
            requests.add_metric([CACHE_RESULTS[result]], value)
        volume = CounterMetricFamily(
            "gatekeep_proxy_cache_bytes",
            "Body bytes the response cache stored, and served from its entries.",
            labels=["direction"],
        )
        for direction, value in moved.items():
            volume.add_metric([direction], value)
        families: list[Metric] = [requests, volume]
        if has_memory:
            held = "Bytes held by in-memory response caches."
            families.append(GaugeMetricFamily("gatekeep_proxy_cache_memory_bytes", held, value=memory[0]))
            entries = "Entries held by in-memory response caches."
            families.append(GaugeMetricFamily("gatekeep_proxy_cache_entries", entries, value=memory[1]))
        return families

    # -- breakers: per service and per instance --------------------------------

    def _breakers(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "gatekeep_breaker_state",
            "Circuit breaker state: 1 for the current one of closed, half-open, open.",
            labels=["service", "instance", "state"],
        )
        found = False
        for name, instance, state in self._each_breaker():
            found = True
            for candidate in BREAKER_STATES:
                family.add_metric([name, instance, candidate], 1.0 if state == candidate else 0.0)
        return [family] if found else []

    def _each_breaker(self) -> Iterator[tuple[str, str, str]]:
        """``(service, instance address or "", state)`` of each breaker, the service's own first."""
        for name, upstream in self.context.upstreams.items():
            state = upstream.breaker_state
            if state is not None:
                yield name, "", state
            for address, instance_state in upstream.instance_breaker_states().items():
                yield name, address, instance_state

    # -- discovery: instances per service --------------------------------------

    def _discovery(self) -> Iterable[Metric]:
        discovery = self.context.discovery
        family = GaugeMetricFamily(
            "gatekeep_discovery_instances",
            "Instances the discovery currently knows for a service.",
            labels=["service"],
        )
        for name, service in self.context.services.items():
            if service.is_app:
                continue
            family.add_metric([name], float(len(discovery.instances(name))))
        out: list[Metric] = [family]
        watchers = stats_of(discovery)  # {service: DiscoveryStats} for Consul/DNS watchers
        if isinstance(watchers, Mapping) and watchers:
            errors = CounterMetricFamily(
                "gatekeep_discovery_errors",
                "Failed discovery lookups (the last known instances stay in use).",
                labels=["service", "source"],
            )
            up = GaugeMetricFamily(
                "gatekeep_discovery_up",
                "1 when the last discovery lookup of a service succeeded, else 0.",
                labels=["service", "source"],
            )
            for service_name, record in sorted(watchers.items()):
                source = str(stat(record, "source", ""))
                errors.add_metric([str(service_name), source], float(stat(record, "errors", 0)))
                up.add_metric([str(service_name), source], 1.0 if stat(record, "healthy", False) else 0.0)
            out += [errors, up]
        return out

    # -- upstream target health (upstream_health_metrics) ----------------------

    def _health(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "gatekeep_upstream_target_health",
            "Health of each upstream target: 1 for its current state.",
            labels=["service", "target", "state"],
        )
        for name, upstream in self.context.upstreams.items():
            for instance in upstream.instances():
                state = upstream.target_health(instance)
                if state not in HEALTH_STATES:
                    state = "unhealthy"
                for candidate in HEALTH_STATES:
                    family.add_metric([name, instance.address, candidate], 1.0 if state == candidate else 0.0)
        return [family]
