"""What a plugin may read of its gateway: the narrow, typed view ``bind(context)`` receives.

A plugin's ``bind`` runs once, when the gateway is built from its config.
It gets a ``PluginContext``, not the gateway: public descriptions of the
routes and services, the consumers and their credentials, the other plugins,
the gateway settings a plugin needs, read-only upstream state (breakers,
target health) for metrics, the protocol objects given to the gateway
(``rate_limiters``, ``authenticators``, ``authorizers``,
``discovery``), and two verbs:
``add_endpoint`` (a gateway-answered path such as ``/metrics``) and the
lifespan's ``task_group``.  Everything else of the gateway is the core's to
change without notice.

Errors and warnings name config paths.  A plugin raises ``ConfigError`` from
``bind`` (or calls ``warn``) with a path relative to its own entry
(``config.consumer``) or an absolute one (``consumers[0].jwt_secrets[1]``);
``resolve`` turns the first into the entry's path
(``services[0].plugins[1].config.consumer``).  ``gatekeep check`` binds every
plugin, so what ``bind`` refuses is refused before ``serve``.

The compile step builds one context per compiled config
(``gatekeep._compile.bind_filters``); nothing in it is read per request.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

from ._config import ConsumerConfig, GatewayConfig, GatewaySettings
from ._descriptions import RouteInfo, ServiceInfo
from ._errors import ConfigError, FieldError
from ._http import Request, Response
from ._protocols import Authenticator, Authorizer, Discovery, Instance, RateLimiter

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from ._websocket import WebSocketStats
    from .resilience import UpstreamGuard

__all__ = ["Endpoint", "EndpointHandler", "PluginContext", "UpstreamState", "named_part"]

_T = TypeVar("_T")

EndpointHandler = Callable[[Request], Awaitable[Response]]
# A breaker state change: ``(old, new)`` state names ("closed", "open", "half-open").
BreakerChange = Callable[[str, str], None]


class Endpoint(NamedTuple):
    """A path the gateway answers itself, before routing (``/metrics`` ...)."""

    handler: EndpointHandler
    run_global_filters: bool


class UpstreamState:
    """Read-only upstream state of one service: its breakers and its targets' health.

    For metrics and admin views; reading it changes nothing.
    """

    __slots__ = ("_discovery", "_guard", "service")

    def __init__(self, service: ServiceInfo, guard: UpstreamGuard, discovery: Discovery) -> None:
        self.service = service
        self._guard = guard
        self._discovery = discovery

    def instances(self) -> Sequence[Instance]:
        """The instances discovery knows now (none for a service answered by the wrapped app)."""
        if self.service.is_app:
            return ()
        return self._discovery.instances(self.service.name)

    @property
    def breaker_state(self) -> str | None:
        """The service breaker's state, ``None`` without one."""
        breaker = getattr(self._guard, "breaker", None)
        state = getattr(breaker, "state", None)
        return None if state is None else str(state)

    def instance_breaker_states(self) -> dict[str, str]:
        """The state of each per-instance breaker made so far, by ``host:port`` address."""
        states: dict[str, str] = {}
        breakers = getattr(self._guard, "instance_breakers", None)
        if isinstance(breakers, Mapping):
            for key, breaker in list(breakers.items()):
                state = getattr(breaker, "state", None)
                if state is not None:
                    states[_address(key)] = str(state)
        return states

    def target_health(self, instance: Instance) -> str:
        """``"healthy"``, ``"unhealthy"`` (or another state of the health tracker),
        or ``"healthchecks_off"`` when the service has no health checks."""
        health = getattr(self._guard, "health", None)
        if health is None:
            return "healthchecks_off"
        verdict = getattr(health, "health", None)
        if callable(verdict):
            return str(verdict(instance))
        return "healthchecks_off"

    def on_breaker_change(self, callback: BreakerChange) -> Callable[[], None]:
        """Call ``callback(old, new)`` whenever one of this service's breakers changes state.

        Returns what stops it (call it from the plugin's ``stop``: a service kept across a
        reload keeps its breakers, and would keep calling a retired plugin otherwise).
        """
        on_change = getattr(self._guard, "on_change", None)
        if callable(on_change):
            off = on_change(lambda breaker, old, new: callback(str(old), str(new)))
            if callable(off):
                return cast("Callable[[], None]", off)
        return _nothing


def _nothing() -> None:
    return None


def _address(key: Any) -> str:
    # Instance breakers are keyed by (scheme, host, port, id).
    if isinstance(key, tuple) and len(key) >= 3:
        host, port = str(key[1]), key[2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    address = getattr(key, "address", None)
    return address if isinstance(address, str) else str(key)


class PluginContext:
    """What ``bind(context)`` hands a plugin: a read-only view of its gateway, plus two verbs.

    Attributes:
        config: the whole (validated) config.
        routes: every route, in config order.
        services: every service, by name.
        consumers: every consumer, by each of its id, username and custom_id.
        plugins: every plugin instance of the gateway (all scopes).
        discovery: where service instances come from.
        upstreams: read-only breaker and health state, by service name.
        rate_limiters: the ``RateLimiter``s given to ``Gateway(rate_limiters=...)``.
        authenticators: the ``Authenticator``s given to ``Gateway(authenticators=...)``.
        authorizers: the ``Authorizer``s given to ``Gateway(authorizers=...)``.
        endpoints: the gateway-answered paths (see ``add_endpoint``).
        websockets: counters of proxied WebSockets (open, messages, bytes, closes), for metrics.
    """

    def __init__(
        self,
        *,
        config: GatewayConfig,
        routes: Sequence[RouteInfo],
        plugin_routes: Mapping[int, Sequence[RouteInfo]],
        consumers: Mapping[str, ConsumerConfig],
        plugins: Sequence[object],
        discovery: Discovery,
        upstreams: Mapping[str, UpstreamState],
        rate_limiters: Mapping[str, RateLimiter],
        authenticators: Mapping[str, Authenticator],
        authorizers: Mapping[str, Authorizer] | None = None,
        endpoints: dict[str, Endpoint],
        task_group: Callable[[], TaskGroup | None],
        websockets: WebSocketStats | None = None,
    ) -> None:
        self.config = config
        self.routes: tuple[RouteInfo, ...] = tuple(routes)
        self.services: Mapping[str, ServiceInfo] = MappingProxyType(
            {r.service.name: r.service for r in self.routes} | {n: u.service for n, u in upstreams.items()}
        )
        self.consumers: Mapping[str, ConsumerConfig] = MappingProxyType(dict(consumers))
        self.plugins: tuple[object, ...] = tuple(plugins)
        self.discovery = discovery
        self.upstreams: Mapping[str, UpstreamState] = MappingProxyType(dict(upstreams))
        self.rate_limiters: Mapping[str, RateLimiter] = MappingProxyType(dict(rate_limiters))
        self.authenticators: Mapping[str, Authenticator] = MappingProxyType(dict(authenticators))
        self.authorizers: Mapping[str, Authorizer] = MappingProxyType(dict(authorizers or {}))
        self._endpoints = endpoints
        self.endpoints: Mapping[str, Endpoint] = MappingProxyType(endpoints)
        self._plugin_routes = plugin_routes
        self._task_group = task_group
        self.websockets = websockets
        # Things that work but are likely not what the operator meant (``warn``).
        self.warnings: list[FieldError] = []
        # (entry path, plugin name) of the plugin being bound, for relative paths.
        self._binding: tuple[str, str] | None = None

    @property
    def settings(self) -> GatewaySettings:
        """The ``[gateway]`` table."""
        return self.config.gateway

    @property
    def request_id_header(self) -> str:
        """The request-id header's name, lower case (``[gateway] request_id_header``)."""
        return self.config.gateway.request_id_header.lower()

    @property
    def trusted_proxies(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The peers whose forwarding headers the gateway believes."""
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.config.gateway.trusted_proxies)

    @property
    def task_group(self) -> TaskGroup | None:
        """The gateway lifespan's task group; ``None`` before ``async with gateway`` (use ``start``)."""
        return self._task_group()

    @property
    def authenticating_plugins(self) -> tuple[str, ...]:
        """The names of the plugins that establish an identity (``anonymous_option``: jwt, key-auth ...)."""
        names = (str(getattr(p, "name", "")) for p in self.plugins if getattr(p, "anonymous_option", False))
        return tuple(dict.fromkeys(names))

    @property
    def can_name_consumers(self) -> bool:
        """Whether a request can ever carry a consumer: the config has consumers, or the
        gateway was given ``authenticators`` (whose identities may name any).  Without,
        a consumer-keyed setting (``limit_by = "consumer"``, ``per_consumer``) sees none."""
        return bool(self.config.consumers) or bool(self.authenticators)

    def routes_of(self, plugin: object) -> tuple[RouteInfo, ...]:
        """The routes whose chain holds ``plugin`` (this very instance), for consumers
        without consumer-scoped plugins; none for a plugin attached to a consumer only."""
        return tuple(self._plugin_routes.get(id(plugin), ()))

    def resolve(self, path: str) -> str:
        """The config path of ``path`` as the plugin being bound wrote it.

        ``""``, ``config`` and ``config.<field>`` (or the old spelling
        ``<plugin name>.config.<field>``) are relative to the plugin's entry
        (``plugins[0]``, ``services[1].routes[0].plugins[2]``); any other path
        is already absolute.  Outside ``bind``, paths are returned as they are.
        """
        binding = self._binding
        if binding is None:
            return path
        entry, name = binding
        if path.startswith(name + ".config") and name:
            path = path[len(name) + 1 :]
        if not path:
            return entry
        if path == "config" or path.startswith(("config.", "config[")):
            return f"{entry}.{path}"
        return path

    def warn(self, path: str, message: str) -> None:
        """Report a config that works but likely not as meant (``gatekeep check`` prints it).

        ``path`` as for ``resolve``: ``"config.limit_by"`` is this plugin's field.
        The gateway logs each warning once when it is built (logger ``gatekeep.config``).
        """
        self.warnings.append(FieldError(self.resolve(path), message))

    def add_endpoint(self, path: str, handler: EndpointHandler, *, run_global_filters: bool = True) -> None:
        """Answer ``path`` (exact, normalised) with ``handler`` before routing.

        Global request plugins run first unless ``run_global_filters`` is
        false (a metrics scrape should not need a token or count against a
        rate limit).
        """
        self._endpoints[path] = Endpoint(handler, run_global_filters)


def named_part(
    parts: Mapping[str, _T], name: str, *, path: str, what: str, argument: str, also: str = ""
) -> _T:
    """The part a plugin's config names among those given to ``Gateway(<argument>=...)``.

    Args:
        parts: what the gateway was given (``context.authenticators`` …).
        name: the name the config holds.
        path: the config field, for the error (``auth.config.authenticator``).
        what: the kind of part, for the error ("authenticator").
        argument: the ``Gateway`` argument that gives such parts.
        also: built-in names the field accepts too, for the error ("'local', 'redis'").

    Raises:
        ConfigError: the gateway was given no part of that name.
    """
    found = parts.get(name)
    if found is None:
        given = ", ".join(repr(n) for n in sorted(parts)) or "none"
        where = f"expected {also} or one given to" if also else "in"
        message = f"no {what} {name!r}: {where} Gateway({argument}=...) (given: {given})"
        raise ConfigError([FieldError(path, message)])
    return found
