"""``prometheus``: request metrics in Prometheus' format, as Kong's plugin does.

Theory of operation
-------------------
Two kinds of metrics live in one ``CollectorRegistry`` that the gateway owns
(created in ``bind``; prometheus-client's global one only with
``use_global_registry``):

* **Per-request metrics** (requests, latencies, bandwidth, filter errors) are
  prometheus-client ``Counter``/``Histogram`` objects, recorded in
  ``on_log`` after the last byte left.  In multiprocess mode (with
  ``PROMETHEUS_MULTIPROC_DIR`` set) their values are the library's, written to
  per-process mmap files that the exposition adds up.
* **Component state** (rate-limit decisions, breaker states, upstream health,
  discovery instances, JWKS fetches, ``gatekeep_info``) is read from the
  components themselves at scrape time by the custom collector
  (``gatekeep.observability.GatewayCollector``); nothing is counted twice and
  the request path pays nothing for it.

The hot path: the labelled children of every metric are looked up once per
distinct ``(route, method, status, source, consumer)`` and cached in a dict,
so ``on_log`` does one dict lookup, a few float subtractions and the
additions; no label strings are formatted per request.  The additions are made
in place: each child's values live in one plain list that the child reads
at scrape time (``gatekeep.observability.histogram_values``), so a histogram observation is one bisection
and two ``+=``, without a call or a lock.  Multiprocess mode and the global
registry (which gateways on other threads may share) keep the library's own
methods.

Cardinality budget: ``route`` is the route's configured name (never the
path); a request no gateway route matched has the wrapped app's route
template in middleware mode (``/items/{item_id}``, at most 1000 of them),
else ``route=""``; the method is one of the
standard methods or ``OTHER``, and the consumer label (the consumer's name,
else the authenticated subject) holds at most
``consumer_label_limit`` distinct values (first seen first served); the
rest share ``other``.  The child cache itself is bounded too.
"""

from __future__ import annotations

import copy
import ipaddress
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from gatekeep import BasePlugin, Exchange, FilterError, validators
from gatekeep.observability import (
    BREAKER_STATES,
    GatewayCollector,
    MetricsEndpoint,
    counter_values,
    histogram_values,
)

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from gatekeep import PluginContext

__all__ = ["PrometheusConfig", "PrometheusFilter"]

# Whole requests, and time spent waiting for upstreams: 1 ms .. 60 s (the
# default read timeout), denser where API latencies usually are.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Time spent in gatekeep itself: 100 µs .. 1 s.
GATEWAY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

DEFAULT_ALLOW = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
# More distinct label combinations than this are still counted, just not cached.
_CACHE_LIMIT = 5_000
# Middleware mode: the request-state key where the adapter leaves the wrapped app's
# route template (``gatekeep.adapters``' ROUTE_TEMPLATE), and at most this many
# distinct templates (an app's route table; more share "other").
ROUTE_TEMPLATE = "gatekeep.route_template"
_TEMPLATE_LIMIT = 1_000
OTHER = "other"


def _buckets(_: object, attribute: Any, value: Sequence[float]) -> None:
    if not value:
        raise ValueError("must list at least one bucket")
    if any(b <= 0 for b in value):
        raise ValueError("bucket bounds must be greater than 0")
    if list(value) != sorted(set(value)):
        raise ValueError("bucket bounds must be strictly increasing")


def _networks(_: object, attribute: Any, value: Sequence[str]) -> None:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError as exc:
            raise ValueError(f"{item!r} is not an IP network ({exc})") from None


def _path(_: object, attribute: Any, value: str) -> None:
    if not value.startswith("/") or "?" in value or "#" in value:
        raise ValueError(f"must be an absolute path, got {value!r}")


@attrs.frozen
class PrometheusConfig:
    """Config of the ``prometheus`` filter.

    The five flags are Kong's.  Unlike Kong (where they default to off for
    the sake of nginx's shared dict), status, latency and bandwidth metrics
    default to on here: they cost a few microseconds per request.
    """

    kong_names: ClassVar[Mapping[str, str]] = validators.kong_fields(
        "per_consumer",
        "status_code_metrics",
        "latency_metrics",
        "bandwidth_metrics",
        "upstream_health_metrics",
    )

    per_consumer: bool = False
    status_code_metrics: bool = True
    latency_metrics: bool = True
    bandwidth_metrics: bool = True
    upstream_health_metrics: bool = False
    # At most this many distinct consumer label values; later ones count as "other".
    consumer_label_limit: int = attrs.field(default=100, validator=validators.non_negative)
    latency_buckets: tuple[float, ...] = attrs.field(default=LATENCY_BUCKETS, validator=_buckets)
    gateway_latency_buckets: tuple[float, ...] = attrs.field(default=GATEWAY_BUCKETS, validator=_buckets)
    # Exposition.
    path: str = attrs.field(default="/metrics", validator=_path)
    metrics_allow: tuple[str, ...] = attrs.field(default=DEFAULT_ALLOW, validator=_networks)
    metrics_port: int | None = attrs.field(default=None, validator=validators.tcp_port)
    metrics_host: str = "127.0.0.1"
    use_global_registry: bool = False


class _Series:
    """The values of one label combination: lists the log phase adds to in place.

    ``requests``, ``ingress`` and ``egress`` are ``[count]``; ``total``, ``upstream``
    and ``gateway`` are ``[sum, bucket 0, ..., bucket +Inf]`` with their bounds in
    ``latency_bounds`` and ``gateway_bounds`` (``histogram_values``).  ``None`` when off.
    ``library`` is set instead when the values cannot be lists (multiprocess mode,
    the global registry): then the library's own methods record.
    """

    __slots__ = (
        "egress",
        "gateway",
        "gateway_bounds",
        "ingress",
        "latency_bounds",
        "library",
        "requests",
        "total",
        "upstream",
    )

    def __init__(self) -> None:
        self.requests: list[float] | None = None
        self.total: list[float] | None = None
        self.upstream: list[float] = []
        self.gateway: list[float] = []
        self.latency_bounds: Sequence[float] = ()
        self.gateway_bounds: Sequence[float] = ()
        self.ingress: list[float] = []
        self.egress: list[float] | None = None
        self.library: _LibrarySeries | None = None


class _LibrarySeries:
    """The children of one label combination, recorded through the library's methods."""

    __slots__ = ("egress", "gateway", "ingress", "requests", "total", "upstream")

    def __init__(self) -> None:
        self.requests: Any = None
        self.total: Any = None
        self.upstream: Any = None
        self.gateway: Any = None
        self.ingress: Any = None
        self.egress: Any = None

    def record(self, total: float, upstream: float, started: bool, bytes_out: int, bytes_in: int) -> None:
        if self.requests is not None:
            self.requests.inc()
        if self.total is not None:
            self.total.observe(total)
            if started:
                self.upstream.observe(upstream)
            self.gateway.observe(total - upstream if total > upstream else 0.0)
        if self.egress is not None:
            self.egress.inc(bytes_out)
            if bytes_in:
                self.ingress.inc(bytes_in)


@attrs.frozen
class _Shape:
    """What decides the metric objects' names, labels and buckets."""

    consumer_label: bool
    latency_buckets: tuple[float, ...]
    gateway_buckets: tuple[float, ...]


class Metrics:
    """The per-request metric objects of one registry."""

    def __init__(self, registry: CollectorRegistry, shape: _Shape) -> None:
        self.registry = registry
        self.shape = shape
        base = ["service", "route"]
        request_labels = [*base, "method", "code", "source"]
        bandwidth_labels = [*base, "direction"]
        if shape.consumer_label:
            request_labels.append("consumer")
            bandwidth_labels.append("consumer")
        self.requests = Counter(
            "gatekeep_http_requests",
            "HTTP requests answered, by who answered (source=service|gateway).",
            request_labels,
            registry=registry,
        )
        self.request_duration = Histogram(
            "gatekeep_request_duration_seconds",
            "Time from the first byte of a request to the last byte of its answer.",
            base,
            buckets=shape.latency_buckets,
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "gatekeep_upstream_duration_seconds",
            "Time from sending a request upstream to the last byte of the upstream's answer.",
            base,
            buckets=shape.latency_buckets,
            registry=registry,
        )
        self.gateway_duration = Histogram(
            "gatekeep_gateway_duration_seconds",
            "Time spent in gatekeep itself (request duration minus upstream duration).",
            base,
            buckets=shape.gateway_buckets,
            registry=registry,
        )
        self.bandwidth = Counter(
            "gatekeep_bandwidth_bytes",
            "Body bytes received from clients (ingress) and sent to them (egress).",
            bandwidth_labels,
            registry=registry,
        )
        self.filter_errors = Counter(
            "gatekeep_filter_errors",
            "Requests on which a filter raised an unexpected error (answered 500).",
            ["filter"],
            registry=registry,
        )
        self.breaker_transitions = Counter(
            "gatekeep_breaker_transitions",
            "Circuit breaker state changes, by the state entered (closed, half-open, open).",
            ["service", "state"],
            registry=registry,
        )

        # Per service: which binding's breaker callbacks count (see ``_watch_breakers``).
        self.breaker_watch: dict[str, object] = {}

    def _all(self) -> tuple[Any, ...]:
        return (
            self.requests,
            self.request_duration,
            self.upstream_duration,
            self.gateway_duration,
            self.bandwidth,
            self.filter_errors,
            self.breaker_transitions,
        )

    def unregister(self) -> None:
        for metric in self._all():
            self.registry.unregister(metric)

    def moved_to(self, registry: CollectorRegistry) -> Metrics:
        """The same metric objects, their counts going on, registered in ``registry`` (a reload's).

        The running config's registry is left as it is: a reload that is refused later
        changes nothing it serves.
        """
        moved = copy.copy(self)
        moved.registry = registry
        for metric in self._all():
            registry.register(metric)
        return moved


# The metric objects and collector registered in prometheus-client's global
# registry (``use_global_registry``): one set per process, the last bound
# gateway's collector wins.
_global_metrics: Metrics | None = None
_global_collector: GatewayCollector | None = None


class PrometheusFilter(BasePlugin[PrometheusConfig]):
    """Records every request in Prometheus metrics and serves ``/metrics``."""

    name: ClassVar[str] = "prometheus"
    priority: ClassVar[int] = 13

    def __init__(self, config: PrometheusConfig | None = None) -> None:
        super().__init__(config)
        c: PrometheusConfig = self.config
        self.registry: CollectorRegistry | None = None
        self.metrics: Metrics | None = None
        self.collector: GatewayCollector | None = None
        self.endpoint: MetricsEndpoint | None = None
        # The port of the separate metrics listener once started (``metrics_port``; 0 picks one).
        self.bound_port: int | None = None
        self._owner = True
        self._path = c.path
        self._per_consumer = c.per_consumer
        self._status = c.status_code_metrics
        self._latency = c.latency_metrics
        self._bandwidth = c.bandwidth_metrics
        self._consumer_limit = c.consumer_label_limit
        self._cache: dict[tuple[Any, ...], _Series] = {}
        # Values kept in plain lists (``counter_values``, ``histogram_values``): not in the global
        # registry, which other gateways of this process, on other threads, may record into too.
        self._in_place = not c.use_global_registry
        self._consumer_labels: dict[str, str] = {}
        self._template_labels: dict[str, str] = {}
        self._error_children: dict[str, Any] = {}
        # What a reload hands over when this entry is unchanged (``carry_over``), used by ``bind``.
        self._carried: tuple[Metrics, dict[str, str], dict[str, str]] | None = None
        # This binding's breaker callbacks, and whose counted before it started (``_watch_breakers``).
        self._token = object()
        self._watched: list[str] = []
        self._unwatch: list[Callable[[], None]] = []  # what stops this binding's breaker callbacks
        self._took: dict[str, object | None] = {}

    # -- config time ----------------------------------------------------------

    def carry_over(self, previous: PrometheusFilter) -> None:
        """A reload left this entry unchanged: keep counting in its predecessor's metrics.

        ``bind`` takes them when the metrics' shape (labels, buckets) is unchanged; the
        consumer and template labels go on too, so the cardinality budget spans reloads.
        """
        if previous._owner and previous.metrics is not None and not previous.config.use_global_registry:
            self._carried = (previous.metrics, previous._consumer_labels, previous._template_labels)

    def bind(self, context: PluginContext) -> None:
        """Create (or join) the gateway's registry, metrics and ``/metrics`` endpoint.

        Every ``prometheus`` instance of one gateway (a global one and, say, a
        per-service one with ``per_consumer``) shares one set of metrics; the
        first one bound owns it and the endpoint.
        """
        peers = [f for f in context.plugins if isinstance(f, PrometheusFilter)]
        first = peers[0] if peers else self
        if first is not self and first.metrics is not None:
            self._owner = False
            self.registry, self.metrics, self.collector = first.registry, first.metrics, first.collector
            self._in_place = first._in_place
            self.endpoint = first.endpoint
            self._path = first._path
            return
        c: PrometheusConfig = self.config
        shape = _Shape(
            consumer_label=any(p.config.per_consumer for p in peers) or c.per_consumer,
            latency_buckets=c.latency_buckets,
            gateway_buckets=c.gateway_latency_buckets,
        )
        upstream_health = any(p.config.upstream_health_metrics for p in peers) or c.upstream_health_metrics
        collector = GatewayCollector(context, upstream_health=upstream_health)
        carried, self._carried = self._carried, None
        if c.use_global_registry:
            self.metrics = _global(shape, collector)
        else:
            registry = CollectorRegistry(auto_describe=False)
            if carried is not None and carried[0].shape == shape:
                # A reload: the counts go on (Prometheus sees no counter reset).
                self.metrics = carried[0].moved_to(registry)
                self._consumer_labels, self._template_labels = carried[1], carried[2]
            else:
                self.metrics = Metrics(registry, shape)
            registry.register(collector)
        self.registry = self.metrics.registry
        self.collector = collector
        self.endpoint = MetricsEndpoint(
            self.registry,
            collector,
            allow=[ipaddress.ip_network(n, strict=False) for n in c.metrics_allow],
        )
        if c.metrics_port is None:
            context.add_endpoint(c.path, self.endpoint, run_global_filters=False)
        self._watched = _watch_breakers(context, self.metrics, self._token, self._unwatch)
        if c.per_consumer and not context.authenticating_plugins and not context.can_name_consumers:
            context.warn(
                "config.per_consumer",
                "per_consumer, but nothing in this config authenticates a caller: "
                "the consumer label is always empty",
            )

    async def start(self, task_group: TaskGroup) -> None:
        c: PrometheusConfig = self.config
        if self._owner and self.metrics is not None:
            # Running now: this binding's breaker callbacks count from here on.
            watch = self.metrics.breaker_watch
            self._took = {name: watch.get(name) for name in self._watched}
            for name in self._watched:
                watch[name] = self._token
        if self._owner and c.metrics_port is not None and self.endpoint is not None:
            self.bound_port = await self.endpoint.serve(task_group, c.metrics_host, c.metrics_port, c.path)

    async def stop(self) -> None:
        """Retired (or its config refused): hand the metrics listener and breaker counting back
        if this binding still has them."""
        if self._owner and self.endpoint is not None and self.config.metrics_port is not None:
            self.endpoint.close()
        if self.metrics is not None:
            watch = self.metrics.breaker_watch
            for name, before in self._took.items():
                if watch.get(name) is self._token and before is not None:
                    watch[name] = before
        self._took = {}
        # A service kept across the reload keeps its breakers: they must not call us any more.
        for stop in self._unwatch:
            stop()
        self._unwatch = []

    # -- the log phase --------------------------------------------------------

    async def on_log(self, exchange: Exchange) -> None:
        self._observe(exchange)

    def _fast_log_phase(self) -> Callable[[Exchange], None] | None:
        """``_observe`` itself for the chain (no coroutine), unless a subclass changed ``on_log``."""
        return self._observe if type(self).on_log is PrometheusFilter.on_log else None

    def _observe(self, exchange: Exchange) -> None:
        """The log phase: count and time the exchange; it never waits."""
        request = exchange.request
        route: Any = request.route
        if route is None:
            if request.path == self._path:
                return  # scrapes of /metrics itself are not traffic
            # Middleware mode: the wrapped app's route template, if it noted one.
            route = self._template_label(request.state.get(ROUTE_TEMPLATE))
        consumer = ""
        if self._per_consumer:
            # Who is calling: the consumer's name, else the authenticated subject (one budget).
            if request.consumer is not None:
                consumer = self._consumer_label(request.consumer_name or OTHER)
            elif request.identity is not None and not request.identity.anonymous and request.identity.subject:
                consumer = self._consumer_label(request.identity.subject)
        method = request.method
        if method not in _METHODS:
            method = "OTHER"  # any token is a valid method: never a label value of its own
        key = (route, method, exchange.status, exchange.source, consumer)
        series = self._cache.get(key)
        if series is None:
            series = self._series(key)
        library = series.library
        if library is not None:
            total = exchange.end - exchange.start
            library.record(
                total if total > 0.0 else 0.0,
                exchange.upstream_duration,
                bool(exchange.upstream_start),
                exchange.bytes_out,
                exchange.bytes_in or _content_length(request.headers.raw),
            )
        else:
            # In place (``histogram_values``): a histogram's amount goes into its sum and into
            # the first bucket whose bound is at least the amount.
            values = series.requests
            if values is not None:
                values[0] += 1
            values = series.total
            if values is not None:
                total = exchange.end - exchange.start
                if total < 0.0:
                    total = 0.0
                bounds = series.latency_bounds
                values[0] += total
                values[1 + bisect_left(bounds, total)] += 1
                upstream = exchange.upstream_duration
                if exchange.upstream_start:
                    values = series.upstream
                    values[0] += upstream
                    values[1 + bisect_left(bounds, upstream)] += 1
                gateway = total - upstream if total > upstream else 0.0
                values = series.gateway
                values[0] += gateway
                values[1 + bisect_left(series.gateway_bounds, gateway)] += 1
            values = series.egress
            if values is not None:
                values[0] += exchange.bytes_out
                bytes_in = exchange.bytes_in or _content_length(request.headers.raw)
                if bytes_in:
                    series.ingress[0] += bytes_in
        error = exchange.error
        if error is not None and isinstance(error, FilterError):
            self._filter_error(error)

    def _template_label(self, template: Any) -> str:
        if not isinstance(template, str):
            return ""
        label = self._template_labels.get(template)
        if label is not None:
            return label
        if len(self._template_labels) < _TEMPLATE_LIMIT:
            self._template_labels[template] = template
            return template
        return OTHER

    def _consumer_label(self, name: str) -> str:
        label = self._consumer_labels.get(name)
        if label is not None:
            return label
        if len(self._consumer_labels) < self._consumer_limit:
            self._consumer_labels[name] = name
            return name
        return OTHER

    def _series(self, key: tuple[Any, ...]) -> _Series:
        """Look up the children of one label combination (off the hot path: once per key)."""
        route, method, status, source, consumer = key
        metrics = self.metrics
        series = _Series()
        if metrics is None:  # not bound: nothing to record into
            return series
        if isinstance(route, str):  # no gateway route: "" or the app's route template
            service_label, route_label = "", route
        else:
            service_label, route_label = route.service.name, route.name
        children = _LibrarySeries()
        if self._status:
            labels = [service_label, route_label, method, str(status), source]
            if metrics.shape.consumer_label:
                labels.append(consumer)
            children.requests = metrics.requests.labels(*labels)
        if self._latency:
            children.total = metrics.request_duration.labels(service_label, route_label)
            children.upstream = metrics.upstream_duration.labels(service_label, route_label)
            children.gateway = metrics.gateway_duration.labels(service_label, route_label)
        if self._bandwidth:
            extra = [consumer] if metrics.shape.consumer_label else []
            children.ingress = metrics.bandwidth.labels(service_label, route_label, "ingress", *extra)
            children.egress = metrics.bandwidth.labels(service_label, route_label, "egress", *extra)
        if not self._in_place or not _in_lists(series, children):
            series = _Series()
            series.library = children
        if len(self._cache) < _CACHE_LIMIT:
            self._cache[key] = series
        return series

    def _filter_error(self, error: FilterError) -> None:
        if self.metrics is None:
            return
        name = getattr(error, "filter", None)
        label = name if isinstance(name, str) and name else "unknown"
        child = self._error_children.get(label)
        if child is None:
            child = self.metrics.filter_errors.labels(label)
            if len(self._error_children) < 1000:
                self._error_children[label] = child
        child.inc()


def _watch_breakers(
    context: PluginContext, metrics: Metrics, token: object, stops: list[Callable[[], None]]
) -> list[str]:
    """Count breaker transitions as they happen (a scrape could miss a short open).

    A service kept across a reload keeps its breakers, and with them the callbacks of every
    binding before; with the metrics carried over too, each transition must still count
    once.  So one binding per service counts (``metrics.breaker_watch``): the first, until a
    newer one starts (``PrometheusFilter.start``); a refused reload gives it back (``stop``).
    Returns the services watched.
    """
    watch = metrics.breaker_watch
    for name, upstream in context.upstreams.items():
        children = {state: metrics.breaker_transitions.labels(name, state) for state in BREAKER_STATES}
        watch.setdefault(name, token)

        def changed(old: str, new: str, children: dict[str, Any] = children, name: str = name) -> None:
            child = children.get(new)
            if child is not None and watch.get(name) is token:
                child.inc()

        stops.append(upstream.on_breaker_change(changed))
    return list(context.upstreams)


def _in_lists(series: _Series, children: _LibrarySeries) -> bool:
    """Keep the children's values in ``series``' lists (``counter_values``...); False if one cannot be."""
    if children.requests is not None:
        series.requests = counter_values(children.requests)
        if series.requests is None:
            return False
    if children.total is not None:
        total = histogram_values(children.total)
        upstream = histogram_values(children.upstream)
        gateway = histogram_values(children.gateway)
        if total is None or upstream is None or gateway is None:
            return False
        series.total, series.upstream, series.gateway = total, upstream, gateway
        series.latency_bounds = children.total._upper_bounds
        series.gateway_bounds = children.gateway._upper_bounds
    if children.egress is not None:
        ingress = counter_values(children.ingress)
        egress = counter_values(children.egress)
        if ingress is None or egress is None:
            return False
        series.ingress, series.egress = ingress, egress
    return True


def _content_length(raw: list[tuple[bytes, bytes]]) -> int:
    for k, v in raw:
        if k == b"content-length":
            return int(v) if v.isdigit() else 0
    return 0


def _global(shape: _Shape, collector: GatewayCollector) -> Metrics:
    """The metrics in prometheus-client's global registry (one set per process)."""
    global _global_metrics, _global_collector
    if _global_collector is not None:
        REGISTRY.unregister(_global_collector)
        _global_collector = None
    if _global_metrics is not None and _global_metrics.shape != shape:
        _global_metrics.unregister()
        _global_metrics = None
    if _global_metrics is None:
        _global_metrics = Metrics(REGISTRY, shape)
    REGISTRY.register(collector)
    _global_collector = collector
    return _global_metrics
