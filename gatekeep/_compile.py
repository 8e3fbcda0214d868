"""The compile step: a config becomes the objects a gateway runs requests over.

Theory of operation
-------------------

``compile_config(config, ...)`` does, once, everything that can be computed
from a config: each service's timeouts, TLS settings, base path and guard
(balancer, breakers, health checks, retries); each route's filter chain and
the router over all routes; the global chain; consumers by every key; the
edge settings and the body policy.  The result, ``Compiled``, is what
``Gateway`` runs requests over; nothing in it is rebuilt per request (the
one exception: chains for consumers with consumer-scoped plugins, built on
first use and cached on their route).

Runtime state that must outlive a config lives in the compiled objects too:
the upstream pool, each service's guard (breaker states, health, balancer
counters) and the discovery (its watchers).  ``compile_config(new,
previous=old)`` is what a reload compiles (``gatekeep/_reload.py`` starts,
swaps and retires): the pool is carried over when its settings are
unchanged; a service whose config is unchanged keeps its ``Service`` (and so
its guard) when the pool was kept (its health checks run on it); a service
whose discovery is unchanged keeps its running watcher; filters are always
new instances (bound afresh: nothing of a removed consumer lingers), and one
whose entry is unchanged gets its predecessor's state through its optional
``carry_over(previous)`` (rate-limiting's local buckets).

Protocol seams: ``router`` (a ``Router``, or a factory given the
``RouteRule``s), ``discovery``, ``balancer`` and ``breaker`` (factories, one
object per service or instance) replace the built-ins.  A router names the
route it matched by ``RouteMatch.rule.name``; the gateway finds its
``Route`` by that name, so a user router never builds an internal object.

Filters are instantiated here (from the gateway's ``PluginRegistry``); ``bind_filters`` is
the one place that hands them the gateway.
"""

from __future__ import annotations

import inspect
import ipaddress
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs

from ._balancer import make_balancer
from ._body import BodyPolicy
from ._config import (
    ConsumerConfig,
    GatewayConfig,
    PluginConfig,
    RouteConfig,
    ServiceConfig,
    parse_target,
    plugin_config,
)
from ._descriptions import RouteInfo, ServiceInfo
from ._discovery import StaticDiscovery
from ._edge import Edge
from ._errors import ConfigError, FieldError
from ._filter import Chain, _overrides
from ._forwarding import HOP_BY_HOP
from ._plugin_context import Endpoint, PluginContext, UpstreamState
from ._protocols import Authenticator, Authorizer, Balancer, Breaker, Discovery, Instance, RateLimiter, Router
from ._registry import INSTALLED, PluginRegistry
from ._router import CompiledRouter, RouteRule
from ._upstream import PoolLimits, Timeouts, TLSSettings, UpstreamPool, codec_for
from .discovery import CompositeDiscovery, build_discovery
from .resilience import UpstreamGuard

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

__all__ = [
    "APP_URL",
    "BalancerFactory",
    "BreakerFactory",
    "Compiled",
    "Route",
    "RouterFactory",
    "Service",
    "bind_filters",
    "compile_config",
]

# Warnings plugins give when they are bound (``PluginContext.warn``): the config works, but ...
_log = logging.getLogger("gatekeep.config")

# A service with this url is answered by the wrapped app (middleware mode): an upstream kind.
APP_URL = "app://"

RouterFactory = Callable[[Sequence[RouteRule]], Router]
BalancerFactory = Callable[[ServiceConfig], Balancer]
# Called with ``None`` for a service's own breaker (may return ``None``), else with an instance.
BreakerFactory = Callable[[ServiceConfig, Instance | None], Breaker | None]


@attrs.define(slots=True, eq=False)
class Service:
    """A service compiled from its config."""

    name: str
    config: ServiceConfig
    base_path: str
    timeouts: Timeouts
    tls: TLSSettings | None
    # The balancer with breakers, health checks and retries around it (gatekeep.resilience).
    guard: UpstreamGuard
    # Answered by the wrapped app (``url = "app://"``), not by a remote upstream.
    is_app: bool = False
    # What plugins see of it (``Request.service``, ``PluginContext.services``), built once.
    info: ServiceInfo = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.info = ServiceInfo(self.name, self.config.url, self.is_app)


@attrs.define(slots=True, eq=False)
class Route:
    """A route compiled from its config, with its precomputed filter chain."""

    name: str
    config: RouteConfig
    service: Service
    chain: Chain
    # Chains for consumers that have consumer-scoped plugins, built on first use.
    consumer_chains: dict[str, Chain] = attrs.field(factory=dict)
    strip_path: bool = True
    preserve_host: bool = False
    # What plugins see of it (``Request.route``, ``PluginContext.routes``), built once.
    info: RouteInfo = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        rc = self.config
        self.info = RouteInfo(
            name=self.name,
            service=self.service.info,
            paths=tuple(rc.paths),
            methods=frozenset(m.upper() for m in rc.methods),
            hosts=tuple(rc.hosts),
            plugins=tuple(str(getattr(f, "name", "")) for f in self.chain.filters),
            strip_path=self.strip_path,
            preserve_host=self.preserve_host,
        )


@attrs.frozen
class _Entry:
    """One configured plugin instance and the scope it was attached to."""

    filter: Any
    name: str
    enabled: bool
    service: str | None
    route: str | None
    consumer: str | None
    # Where the config sets it (``services[0].plugins[1]``); ``None`` for ``Gateway(filters=)``.
    path: str | None = None
    # Its config entry (``None`` for ``Gateway(filters=)``): a reload hands state over when it is unchanged.
    source: PluginConfig | None = None

    @property
    def rank(self) -> int:
        # Kong's precedence, most specific first.
        return _RANKS.get((self.route is not None, self.service is not None, self.consumer is not None), 1)


_RANKS = {
    (True, True, True): 8,
    (True, False, True): 7,
    (False, True, True): 6,
    (True, True, False): 5,
    (False, False, True): 4,
    (True, False, False): 3,
    (False, True, False): 2,
}


class _NoRouter:
    """The router of a ``Compiled`` under construction (replaced before it is used)."""

    def match(self, method: str, host: str, path: str, headers: Any = None) -> None:
        return None

    def allowed_methods(self, host: str, path: str, headers: Any = None) -> frozenset[str]:
        return frozenset()


@attrs.define(slots=True, eq=False)
class Compiled:
    """Everything a gateway runs requests over, compiled from one config.

    Only ``endpoints`` (filled by filters in ``bind``) and the routes'
    consumer-chain caches change after ``compile_config`` returns.
    """

    config: GatewayConfig
    via: bytes
    hide_upstream: frozenset[bytes]
    request_id_header: bytes
    echo_request_id: bool
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    edge: Edge
    fallthrough: bool
    pool: UpstreamPool
    bodies: BodyPolicy
    filters: list[Any]
    has_log_phase: bool
    services: dict[str, Service]
    discovery: Discovery
    consumers_with_plugins: frozenset[str]
    entries: list[_Entry]
    routes: list[Route] = attrs.field(factory=list)
    routes_by_name: dict[str, Route] = attrs.field(factory=dict)
    router: Router = attrs.field(factory=_NoRouter)
    global_chain: Chain = attrs.field(factory=lambda: Chain([]))
    consumers: dict[str, ConsumerConfig] = attrs.field(factory=dict)
    endpoints: dict[str, Endpoint] = attrs.field(factory=dict)
    # Named protocol objects a plugin selects in its config (``policy = "name"``,
    # ``authenticator = "name"``, ``authorizer = "name"``):
    # ``Gateway(rate_limiters=, authenticators=, authorizers=)``.
    rate_limiters: Mapping[str, RateLimiter] = attrs.field(factory=dict)
    authenticators: Mapping[str, Authenticator] = attrs.field(factory=dict)
    authorizers: Mapping[str, Authorizer] = attrs.field(factory=dict)

    def chain(self, route: str | None, service: str | None, consumer: str | None) -> Chain:
        """The chain for a scope: per filter name, the most specific entry (Kong's precedence)."""
        best: dict[str, _Entry] = {}
        for e in self.entries:
            if e.route is not None and e.route != route:
                continue
            if e.service is not None and e.service != service:
                continue
            if e.consumer is not None and e.consumer != consumer:
                continue
            current = best.get(e.name)
            if current is None or e.rank > current.rank:
                best[e.name] = e
        return Chain([e.filter for e in best.values() if e.enabled])

    def chain_for(self, route: Route, consumer: str | None) -> Chain:
        """The chain of ``route`` once ``consumer`` is known."""
        if consumer is None or consumer not in self.consumers_with_plugins:
            return route.chain
        chain = route.consumer_chains.get(consumer)
        if chain is None:
            chain = self.chain(route.name, route.service.name, consumer)
            route.consumer_chains[consumer] = chain
        return chain


def compile_config(
    config: GatewayConfig,
    *,
    filters: Sequence[Any] = (),
    discovery: Discovery | None = None,
    router: Router | RouterFactory | None = None,
    balancer: BalancerFactory | None = None,
    breaker: BreakerFactory | None = None,
    rate_limiters: Mapping[str, RateLimiter] | None = None,
    authenticators: Mapping[str, Authenticator] | None = None,
    authorizers: Mapping[str, Authorizer] | None = None,
    previous: Compiled | None = None,
    plugins: PluginRegistry = INSTALLED,
) -> Compiled:
    """Compile ``config`` (already loaded and validated) for a gateway.

    Args:
        filters: extra filter instances attached globally.
        discovery: where instances come from (default: the config's static
            ``url``/``targets``, Consul or DNS as configured).
        router: a ``Router``, or a factory called with the ``RouteRule``s
            (default: ``CompiledRouter``).
        balancer: ``balancer(service_config) -> Balancer`` per service.
        breaker: ``breaker(service_config, instance_or_None) -> Breaker``.
        rate_limiters: ``RateLimiter``s by name, for ``rate-limiting``'s ``policy``.
        authenticators: ``Authenticator``s by name, for the ``auth`` plugin.
        authorizers: ``Authorizer``s by name, for the ``authz`` plugin.
        previous: the compiled config this one replaces; unchanged services
            keep their state (see the module doc).
        plugins: where plugin names are looked up (the gateway's registry).

    Raises:
        ConfigError: something only found out here (a missing codec).
    """
    settings = config.gateway
    trusted = tuple(ipaddress.ip_network(n, strict=False) for n in settings.trusted_proxies)
    request_id_header = settings.request_id_header.lower().encode("latin-1")
    pool_settings = settings.pool
    if previous is not None and previous.config.gateway.pool == pool_settings:
        pool = previous.pool
    else:
        pool = _pool(config)
    entries = _build_entries(config, filters, plugins)
    if previous is not None:
        _carry_over_filters(entries, previous.entries)
    services: dict[str, Service] = {}
    static: dict[str, list[Instance]] = {}
    for sc in config.services:
        old = previous.services.get(sc.name) if previous is not None else None
        # Carried over with its guard (breakers, health, balancer state) unless the pool changed:
        # its health checks run on the pool.
        if (
            old is not None
            and old.config == sc
            and old.timeouts.pool == pool_settings.pool_timeout
            and previous is not None
            and pool is previous.pool
        ):
            services[sc.name] = old
        else:
            services[sc.name] = _compile_service(sc, pool_settings.pool_timeout, balancer, breaker)
        static[sc.name] = _static_instances(sc)
    compiled = Compiled(
        config=config,
        via=f"1.1 {settings.via}".encode(),
        hide_upstream=HOP_BY_HOP | {n.lower().encode("ascii") for n in settings.hide_upstream_headers},
        request_id_header=request_id_header,
        echo_request_id=settings.echo_request_id,
        trusted=trusted,
        edge=Edge(
            trusted_proxies=trusted,
            request_id_header=request_id_header,
            headers_with_underscores=settings.headers_with_underscores,
            method_override_headers=settings.method_override_headers,
        ),
        fallthrough=settings.fallthrough,
        pool=pool,
        # Client body timeouts, request buffering and each service's streaming cap (gatekeep._body).
        bodies=BodyPolicy(
            idle=settings.client_body_timeout,
            total=settings.client_body_total_timeout,
            buffer_size=settings.request_buffer_size,
            memory=settings.request_buffer_memory,
            uploads={
                sc.name: sc.max_streaming_uploads or max(1, pool_settings.max_connections // 2)
                for sc in config.services
            },
            wait=pool_settings.pool_timeout,
        ),
        filters=[e.filter for e in entries],
        # Whether any filter has a log phase (else requests skip ``log`` entirely).
        has_log_phase=any(_overrides(e.filter, "on_log") for e in entries),
        services=services,
        discovery=discovery or _discovery(config, static, previous),
        consumers_with_plugins=frozenset(e.consumer for e in entries if e.consumer is not None),
        entries=entries,
        rate_limiters=dict(rate_limiters or {}),
        authenticators=dict(authenticators or {}),
        authorizers=dict(authorizers or {}),
    )
    rules: list[RouteRule] = []
    for sc in config.services:
        for ri, rc in enumerate(sc.routes):
            name = rc.name or f"{sc.name}.{ri}"
            route = Route(
                name=name,
                config=rc,
                service=services[sc.name],
                chain=compiled.chain(name, sc.name, None),
                strip_path=rc.strip_path,
                preserve_host=rc.preserve_host,
            )
            compiled.routes.append(route)
            compiled.routes_by_name[name] = route
            rules.append(
                RouteRule(
                    name=name,
                    paths=tuple(rc.paths),
                    methods=frozenset(m.upper() for m in rc.methods),
                    hosts=tuple(h.lower() for h in rc.hosts),
                    headers={k.lower(): tuple(v) for k, v in rc.headers.items()},
                    target=route,
                )
            )
    compiled.router = _router(router, rules)
    compiled.global_chain = compiled.chain(None, None, None)
    for cc in config.consumers:
        for key in (cc.id, cc.username, cc.custom_id):
            if key:
                compiled.consumers.setdefault(key, cc)
    return compiled


def bind_filters(
    compiled: Compiled,
    gateway: object | None,
    *,
    task_group: Callable[[], TaskGroup | None],
    log_warnings: bool = True,
) -> PluginContext:
    """Hand each plugin with a ``bind`` method its ``PluginContext`` (the one place that binds).

    ``task_group`` returns the gateway lifespan's task group (``None`` outside
    it).  A plugin whose ``bind`` names its parameter ``gateway`` (the SDK of
    one release ago, accepted for one release) gets ``gateway`` itself
    (and is skipped when there is no gateway: ``gatekeep check``).

    Every plugin is bound, then the errors of all of them are raised as one
    ``ConfigError``: a path relative to the plugin (``config.consumer``)
    becomes the path of its entry (``services[0].plugins[1].config.consumer``),
    and anything else a ``bind`` raises is reported at the entry's path.
    The warnings plugins gave (``context.warn``) are logged on
    ``gatekeep.config`` unless ``log_warnings`` is false (they stay in
    ``context.warnings``).

    Raises:
        ConfigError: a plugin refused the config.
    """
    plugin_routes: dict[int, list[RouteInfo]] = {}
    for route in compiled.routes:
        for f in route.chain.filters:
            plugin_routes.setdefault(id(f), []).append(route.info)
    context = PluginContext(
        config=compiled.config,
        routes=[r.info for r in compiled.routes],
        plugin_routes=plugin_routes,
        consumers=compiled.consumers,
        plugins=compiled.filters,
        discovery=compiled.discovery,
        upstreams={
            name: UpstreamState(s.info, s.guard, compiled.discovery) for name, s in compiled.services.items()
        },
        rate_limiters=compiled.rate_limiters,
        authenticators=compiled.authenticators,
        authorizers=compiled.authorizers,
        endpoints=compiled.endpoints,
        task_group=task_group,
        websockets=getattr(gateway, "websockets", None),
    )
    paths = {id(e.filter): e.path or str(getattr(e.filter, "name", "")) for e in compiled.entries}
    errors: list[FieldError] = []
    cause: Exception | None = None
    for f in compiled.filters:
        bind = getattr(f, "bind", None)
        if bind is None:
            continue
        path = paths.get(id(f), str(getattr(f, "name", "")))
        name = str(getattr(f, "name", ""))
        context._binding = (path, name)
        try:
            if _names_gateway(bind):
                if gateway is not None:
                    bind(gateway)
            else:
                bind(context)
        except ConfigError as exc:
            errors.extend(FieldError(context.resolve(e.path), e.message) for e in exc.errors)
        except Exception as exc:  # a plugin's bug or refusal: its entry's path, the cause chained
            errors.append(FieldError(path, f"{name}: {exc!r}"))
            cause = cause or exc
        finally:
            context._binding = None
    if errors:
        raise ConfigError(_unique(errors)) from cause
    context.warnings[:] = _unique(context.warnings)
    if log_warnings:
        for warning in context.warnings:
            _log.warning("%s", warning)
    return context


def _unique(errors: Sequence[FieldError]) -> list[FieldError]:
    # Plugins that report for their peers (every missing ``anonymous`` consumer) may repeat one.
    seen: set[tuple[str, str]] = set()
    out = []
    for e in errors:
        if (e.path, e.message) not in seen:
            seen.add((e.path, e.message))
            out.append(e)
    return out


def _names_gateway(bind: Callable[..., Any]) -> bool:
    """Whether ``bind``'s parameter is called ``gateway`` (a plugin written for one release ago)."""
    try:
        parameters = list(inspect.signature(bind).parameters)
    except (TypeError, ValueError):
        return False
    return parameters[:1] == ["gateway"]


def _router(router: Router | RouterFactory | None, rules: Sequence[RouteRule]) -> Router:
    if router is None:
        return CompiledRouter(rules)
    # A class has ``match`` too (unbound): it is a factory, like any other callable.
    if isinstance(router, Router) and not isinstance(router, type):
        return router
    return router(rules)


def _pool(config: GatewayConfig) -> UpstreamPool:
    settings = config.gateway
    try:
        # "auto" leaves the choice to the pool's default (httptools when installed).
        codec = None if settings.http_codec == "auto" else codec_for(settings.http_codec)
    except ImportError as exc:
        raise ConfigError(
            [FieldError("gateway.http_codec", "httptools is not installed (pip install httptools)")]
        ) from exc
    pool = settings.pool
    return UpstreamPool(
        PoolLimits(
            max_connections=pool.max_connections, max_idle=pool.max_idle, idle_timeout=pool.idle_timeout
        ),
        codec_factory=codec,
    )


def _build_entries(config: GatewayConfig, extra: Sequence[Any], registry: PluginRegistry) -> list[_Entry]:
    entries: list[_Entry] = []

    def add(
        pc: PluginConfig, service: str | None, route: str | None, consumer: str | None, path: str
    ) -> None:
        cls = registry.load(pc.name)
        instance = cls(plugin_config(pc, registry))
        entries.append(_Entry(instance, pc.name, pc.enabled, service, route, consumer, path, pc))

    for pi, pc in enumerate(config.plugins):
        add(pc, pc.service, pc.route, pc.consumer, f"plugins[{pi}]")
    for si, sc in enumerate(config.services):
        for pi, pc in enumerate(sc.plugins):
            add(pc, sc.name, None, None, f"services[{si}].plugins[{pi}]")
        for ri, rc in enumerate(sc.routes):
            for pi, pc in enumerate(rc.plugins):
                rpath = f"services[{si}].routes[{ri}].plugins[{pi}]"
                add(pc, None, rc.name or f"{sc.name}.{ri}", None, rpath)
    for ci, cc in enumerate(config.consumers):
        for pi, pc in enumerate(cc.plugins):
            add(pc, None, None, cc.key, f"consumers[{ci}].plugins[{pi}]")
    entries.extend(_Entry(f, f.name, True, None, None, None) for f in extra)
    return entries


def _carry_over_filters(entries: Sequence[_Entry], previous: Sequence[_Entry]) -> None:
    """Hand each new filter whose entry is unchanged the state of its predecessor (a reload).

    A filter opts in with ``carry_over(previous_instance)`` (rate-limiting keeps
    its local buckets).  Instances are never reused: a reload binds fresh ones,
    so nothing of a removed consumer or route lingers in a filter.
    """
    # Plugin configs hold dicts (unhashable): compared, not looked up; only filters that opt in.
    before = [e for e in previous if e.source is not None and hasattr(e.filter, "carry_over")]
    for e in entries:
        carry = getattr(e.filter, "carry_over", None)
        if carry is None or e.source is None:
            continue
        scope = (e.source, e.service, e.route, e.consumer)
        for old in before:
            if (old.source, old.service, old.route, old.consumer) == scope:
                if type(old.filter) is type(e.filter):
                    carry(old.filter)
                break


def _discovery(
    config: GatewayConfig, static: Mapping[str, list[Instance]], previous: Compiled | None
) -> Discovery:
    """The default discovery; on a reload, the running watchers of services whose discovery is unchanged."""
    fresh = build_discovery(config, static)
    if previous is None or not isinstance(fresh, CompositeDiscovery):
        return fresh
    old = previous.discovery
    if not isinstance(old, CompositeDiscovery):
        return fresh
    before = {sc.name: sc for sc in previous.config.services}
    dynamic = dict(fresh.watchers)
    for sc in config.services:
        prior = before.get(sc.name)
        watcher = old.watchers.get(sc.name)
        if (
            sc.name in dynamic
            and watcher is not None
            and prior is not None
            and (prior.discovery, prior.protocol) == (sc.discovery, sc.protocol)
        ):
            dynamic[sc.name] = watcher
    return CompositeDiscovery(StaticDiscovery(static), dynamic)


def _compile_service(
    sc: ServiceConfig,
    pool_timeout: float,
    balancer: BalancerFactory | None,
    breaker: BreakerFactory | None,
) -> Service:
    base_path = sc.path
    is_app = sc.url == APP_URL
    scheme: str = sc.protocol
    if sc.url is not None and not is_app:
        parts = urlsplit(sc.url)
        base_path = parts.path or sc.path
        scheme = parts.scheme
    tls = None
    if scheme == "https":
        t = sc.tls
        tls = TLSSettings(
            verify=t.verify,
            ca_file=t.ca_file,
            cert_file=t.cert_file,
            key_file=t.key_file,
            server_name=t.server_name,
        )
    make_breaker: Callable[[Instance | None], Breaker | None] | None = None
    if breaker is not None:
        user_breaker = breaker

        def make_breaker(instance: Instance | None) -> Breaker | None:
            return user_breaker(sc, instance)

    guard = UpstreamGuard(
        sc.name,
        balancer(sc) if balancer is not None else make_balancer(sc),
        retries=sc.retries,
        retry=sc.retry_policy,
        breaker=sc.breaker,
        healthchecks=sc.healthchecks,
        scheme=scheme,
        tls=tls,
        make_breaker=make_breaker,
    )
    return Service(
        name=sc.name,
        config=sc,
        base_path=base_path.rstrip("/"),
        timeouts=Timeouts(
            connect=sc.connect_timeout / 1000,
            read=sc.read_timeout / 1000,
            write=sc.write_timeout / 1000,
            pool=pool_timeout,
        ),
        tls=tls,
        guard=guard,
        is_app=is_app,
    )


def _static_instances(sc: ServiceConfig) -> list[Instance]:
    if sc.url == APP_URL:
        return []
    if sc.url is not None:
        parts = urlsplit(sc.url)
        scheme = parts.scheme
        port = parts.port or (443 if scheme == "https" else 80)
        return [Instance(host=parts.hostname or "", port=port, scheme=scheme)]
    out = []
    for t in sc.targets:
        parsed = parse_target(t.target)
        assert parsed is not None  # checked by load_config
        out.append(Instance(host=parsed[0], port=parsed[1], scheme=sc.protocol, weight=t.weight))
    return out
