"""The declarative config: Kong's shape, as frozen attrs classes.

A config is TOML (read with ``tomllib``) or the same as a dict::

    [[services]]
    name = "orders"
    url = "http://127.0.0.1:9001"

      [[services.routes]]
      name = "orders"
      paths = ["/orders"]

    [[plugins]]
    name = "correlation-id"

Loading runs in three passes: the shape and types of every field (errors carry
their path); consumers' credentials (``jwt_secrets`` ...), each validated by
the installed plugin that declares the field (``BaseFilter.consumer_credentials``,
Kong's DAO schema: the core knows no credential field); then the cross-checks
that need the whole config (unique names, plugin references, each plugin's own
config validated against its filter's ``Config`` class).  Any error refuses
the whole config.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import attrs

from . import validators
from ._config_files import format_of, parse_config_bytes
from ._consumer import ConsumerConfig, PluginConfig
from ._errors import ConfigError
from ._front import ServerSettings
from ._http import DEFAULT_REQUEST_ID_HEADER
from ._kong_format import from_kong
from ._registry import INSTALLED, PluginRegistry
from ._router import check_host_pattern, check_path_pattern
from ._secrets import decrypt_values
from ._structure import EXTRA_FIELDS, Errors, join, structure, structure_or_raise
from ._websocket._settings import WebSocketSettings
from .admin._settings import AdminSettings, check_admin
from .discovery._config import DiscoveryConfig
from .resilience._config import BreakerConfig, HealthchecksConfig, RetryConfig

_log = logging.getLogger("gatekeep.config")

__all__ = [
    "ConsumerConfig",
    "GatewayConfig",
    "GatewaySettings",
    "PluginConfig",
    "PoolSettings",
    "RouteConfig",
    "ServiceConfig",
    "TLSConfig",
    "TargetConfig",
    "load_config",
]

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


def _name(_: Any, attribute: Any, value: Any) -> None:
    if value is None:
        return
    if not value or not all(c.isalnum() or c in "-_.~" for c in value):
        raise ValueError(f"must be a non-empty name of letters, digits, '-', '_', '.' or '~', got {value!r}")


def _networks(_: Any, attribute: Any, value: tuple[str, ...]) -> None:
    import ipaddress

    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"expected an IP address or CIDR, got {item!r}") from None


@attrs.frozen
class TLSConfig:
    """TLS to an upstream (``https`` services)."""

    verify: bool = True
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None


@attrs.frozen
class TargetConfig:
    """One static target of a service: ``host:port`` with a weight."""

    kong_names: ClassVar[Mapping[str, str]] = validators.kong_fields("target", "weight")
    target: str
    weight: int = attrs.field(default=100, validator=validators.non_negative)


@attrs.frozen
class RouteConfig:
    """Which requests go to a service.  Paths: ``/p`` prefix, ``=/p`` exact,
    ``/p/{id}`` template, ``~regex``."""

    kong_names: ClassVar[Mapping[str, str]] = validators.kong_fields(
        *"name paths methods hosts headers strip_path preserve_host request_buffering plugins".split()
    )
    name: str | None = attrs.field(default=None, validator=_name)
    paths: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    headers: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    strip_path: bool = True
    preserve_host: bool = False
    # Kong's route field: read the body (up to [gateway] request_buffer_size)
    # before an upstream connection is taken.  Unset: the service's setting.
    request_buffering: bool | None = None
    # WebSocket upgrades on this route are proxied (false: refused with a 403 problem).
    websocket: bool = True
    plugins: tuple[PluginConfig, ...] = ()


@attrs.frozen
class ServiceConfig:
    """An upstream service: a ``url``, or ``targets`` to balance over.

    ``url = "app://"`` targets the app gatekeep wraps in middleware mode.
    Timeouts are in milliseconds, as in Kong.
    """

    # Kong's service fields, and its upstream's (balancer, hashing, health checks, targets).
    kong_names: ClassVar[Mapping[str, str]] = validators.kong_fields(
        *"name url protocol path connect_timeout read_timeout write_timeout retries routes plugins".split(),
        *"hash_on hash_fallback hash_on_header hash_fallback_header hash_on_cookie healthchecks".split(),
        targets="upstream targets",
        balancer="upstream algorithm",
        tls="tls_verify, ca_certificates, client_certificate",
    )
    name: str = attrs.field(validator=_name)
    url: str | None = None
    targets: tuple[TargetConfig, ...] = ()
    # Instances from Consul or DNS SRV instead of url/targets (see docs/discovery.md).
    discovery: DiscoveryConfig | None = None
    protocol: Literal["http", "https"] = "http"
    path: str = ""
    # Kong's names: "least-connections" = "least-outstanding", "latency" = "p2c-ewma".
    balancer: Literal[
        "round-robin",
        "least-outstanding",
        "least-connections",
        "p2c-ewma",
        "latency",
        "consistent-hashing",
    ] = "round-robin"
    # Consistent hashing: what to hash on, and on what when that is missing (Kong's fields).
    hash_on: Literal["none", "consumer", "ip", "header", "cookie", "path"] = "none"
    hash_fallback: Literal["none", "consumer", "ip", "header", "cookie", "path"] = "none"
    hash_on_header: str | None = None
    hash_fallback_header: str | None = None
    hash_on_cookie: str | None = None
    connect_timeout: int = attrs.field(default=60_000, validator=validators.positive)
    read_timeout: int = attrs.field(default=60_000, validator=validators.positive)
    write_timeout: int = attrs.field(default=60_000, validator=validators.positive)
    # Extra tries after a failed one (Kong's field; Kong defaults to 5). See docs/resilience.md.
    retries: int = attrs.field(default=2, validator=validators.non_negative)
    retry_policy: RetryConfig = RetryConfig()
    breaker: BreakerConfig | None = None
    healthchecks: HealthchecksConfig = HealthchecksConfig()
    tls: TLSConfig = TLSConfig()
    # Buffer request bodies of this service's routes (see docs/configuration.md, "Request bodies").
    request_buffering: bool = True
    # Requests whose body streams (unbuffered) that may hold upstream connections
    # at once; default: half of [gateway.pool] max_connections.
    max_streaming_uploads: int | None = attrs.field(default=None, validator=validators.positive)
    routes: tuple[RouteConfig, ...] = ()
    plugins: tuple[PluginConfig, ...] = ()

    def __attrs_post_init__(self) -> None:
        for field, header in (("hash_on", self.hash_on_header), ("hash_fallback", self.hash_fallback_header)):
            if getattr(self, field) == "header" and not header:
                raise ValueError(f"{field} = 'header' needs {field}_header")
        if "cookie" in (self.hash_on, self.hash_fallback) and not self.hash_on_cookie:
            raise ValueError("hashing on 'cookie' needs hash_on_cookie")


@attrs.frozen
class PoolSettings:
    max_connections: int = attrs.field(default=100, validator=validators.positive)
    max_idle: int = attrs.field(default=100, validator=validators.non_negative)
    idle_timeout: float = attrs.field(default=4.0, validator=validators.positive)
    pool_timeout: float = attrs.field(default=5.0, validator=validators.positive)


@attrs.frozen
class GatewaySettings:
    """Gateway-wide settings (the ``[gateway]`` table)."""

    via: str = "gatekeep"
    request_id_header: str = DEFAULT_REQUEST_ID_HEADER.decode("latin-1")
    echo_request_id: bool = True
    # Peers (addresses or CIDRs) whose X-Forwarded-* / Forwarded headers are believed
    # (and from whose X-Forwarded-For the client address is taken); from others they are dropped.
    trusted_proxies: tuple[str, ...] = attrs.field(default=(), validator=_networks)
    # Client header names with "_" (which CGI/WSGI servers map to the same key as "-"):
    # dropped like nginx's underscores_in_headers off, refused (400), or passed on.
    # The "_" spelling of a header the gateway sets or reads is dropped whatever this says.
    headers_with_underscores: Literal["drop", "reject", "allow"] = "drop"
    # X-HTTP-Method-Override / X-HTTP-Method / X-Method-Override from clients: removed,
    # refused (400), or passed on (unsafe: authorization decided on the real method).
    method_override_headers: Literal["strip", "refuse", "forward"] = "strip"
    # Middleware mode: a request no route matches goes to the wrapped app.
    fallthrough: bool = True
    # HTTP/1.1 codec to upstreams: httptools when installed ("auto"), else h11.
    http_codec: Literal["auto", "h11", "httptools"] = "auto"
    # After the first gateway of a process started, move every object made so
    # far out of the cyclic GC's reach (gc.freeze): full collections then skip
    # the imported modules and config, which halves p99 latency under load.
    gc_freeze: bool = True
    # Once per process, when the first gateway starts: raise the cyclic GC's
    # young-generation threshold (gc.set_threshold's threshold0) to this, so
    # the in-flight requests' objects are not walked hundreds of times a
    # second; 0 leaves the interpreter's own.  A higher one is kept.
    gc_threshold: int = attrs.field(default=2_000, validator=validators.non_negative)
    # Upstream response headers not passed to the client (nginx's
    # proxy_hide_header): the ASGI/WSGI server adds its own Date and Server,
    # and two of each would break HTTP (Date is a singleton field).
    hide_upstream_headers: tuple[str, ...] = attrs.field(
        default=("date", "server"), validator=validators.header_names
    )
    # Slow clients (docs/configuration.md, "Request bodies"): seconds between two reads
    # of a request body, and optionally for the whole body; late -> 408.
    client_body_timeout: float = attrs.field(default=30.0, validator=validators.positive)
    client_body_total_timeout: float | None = attrs.field(default=None, validator=validators.positive)
    # Bodies up to this many bytes are read whole before an upstream connection
    # is taken (routes with request_buffering); all of them together hold at most
    # request_buffer_memory bytes, a body that does not fit streams.
    request_buffer_size: int = attrs.field(default=1024 * 1024, validator=validators.positive)
    request_buffer_memory: int = attrs.field(default=64 * 1024 * 1024, validator=validators.positive)
    pool: PoolSettings = PoolSettings()
    # Limits of proxied WebSockets (docs/serving.md, "WebSockets").
    websocket: WebSocketSettings = WebSocketSettings()


@attrs.frozen
class GatewayConfig:
    """A whole gateway config, checked."""

    format_version: str = attrs.field(default="3.0", alias="_format_version")
    gateway: GatewaySettings = GatewaySettings()
    # Limits of ``gatekeep serve``'s front server (docs/serving.md); embedders' own servers ignore it.
    server: ServerSettings = ServerSettings()
    # The Admin API's listener (docs/admin-api.md); none unless the table is there.
    admin: AdminSettings | None = None
    services: tuple[ServiceConfig, ...] = ()
    plugins: tuple[PluginConfig, ...] = ()
    consumers: tuple[ConsumerConfig, ...] = ()

    def service(self, name: str) -> ServiceConfig:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)


def _read(source: Mapping[str, Any] | str | Path) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    path = Path(source)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(_one("", f"cannot read config file {str(path)!r}: {exc.strerror}")) from exc
    # TOML, or JSON / YAML (a decK kong.yml) by the file's extension.
    return parse_config_bytes(raw, format_of(path.name), str(path))


def _one(path: str, message: str) -> Errors:
    errors = Errors()
    errors.add(path, message)
    return errors


def load_config(
    source: Mapping[str, Any] | str | Path | GatewayConfig,
    *,
    plugins: Iterable[type[Any]] | PluginRegistry = (),
) -> GatewayConfig:
    """Read and check a config (a dict, a TOML file path, or a ``GatewayConfig``).

    Args:
        plugins: plugin classes the config may name besides the installed
            ones (the same as ``Gateway(config, plugins=...)``).

    Raises:
        ConfigError: listing every problem with the path of its field.
    """
    if isinstance(source, GatewayConfig):
        data: Any = source
        errors = Errors()
        config = source
    else:
        errors = Errors()
        # {enc:v1:...} values, decrypted with their raw-document path bound (gatekeep/_secrets.py).
        data = decrypt_values(_read(source), errors)
        # Kong's declarative spellings (decK kong.yml, DB-less /config): gatekeep/_kong_format.py.
        notes: list[str] = []
        data = from_kong(data, errors, notes)
        for note in notes:
            _log.warning("%s", note)
        config = structure(GatewayConfig, data, "", errors)
    registry = plugins if isinstance(plugins, PluginRegistry) else PluginRegistry(plugins)
    if isinstance(config, GatewayConfig):
        config = _with_credentials(config, errors, registry)
        check(config, errors, registry)
    if errors:
        raise ConfigError(errors)
    assert isinstance(config, GatewayConfig)
    return config


def parse_target(target: str) -> tuple[str, int] | None:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    p = int(port)
    return (host, p) if 0 < p < 65536 else None


def _check_url(url: str, path: str, errors: Errors) -> None:
    if url == "app://":
        return
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        errors.add(path, f"invalid URL {url!r}: {exc}")
        return
    if parts.scheme not in ("http", "https"):
        errors.add(path, f"scheme must be http or https (or url = 'app://' for the wrapped app), got {url!r}")
    elif not parts.hostname:
        errors.add(path, f"URL has no host: {url!r}")
    elif port == 0:
        errors.add(path, f"invalid port in {url!r}")
    if parts.query or parts.fragment:
        errors.add(path, f"URL must not have a query or fragment: {url!r}")


_CONSUMER_FIELDS = tuple(
    sorted(f.name for f in attrs.fields(ConsumerConfig) if f.init and not f.metadata.get(EXTRA_FIELDS))
)


def _with_credentials(config: GatewayConfig, errors: Errors, registry: PluginRegistry) -> GatewayConfig:
    """The config with every consumer's credentials checked by the plugin that owns them.

    Plugins are loaded only when some consumer has a credential field.
    """
    if not any(c is not None and c.credentials for c in config.consumers):
        return config
    owners, broken = registry.credential_owners()
    consumers: list[ConsumerConfig] = []
    for ci, consumer in enumerate(config.consumers):
        if consumer is None or not consumer.credentials:
            consumers.append(consumer)
            continue
        checked: dict[str, tuple[Any, ...]] = {}
        for field, data in consumer.credentials.items():
            fpath = join(join("consumers", ci), field)
            found = owners.get(field, [])
            if not found:
                errors.add(fpath, _unknown_credential(owners, broken))
                continue
            if len(found) > 1:
                names = " and ".join(repr(o.filter) for o in found)
                errors.add(fpath, f"declared by more than one plugin ({names}); uninstall one")
                continue
            entries: Any = tuple[found[0].type, ...]  # type: ignore[misc]  # a type made at run time
            value = structure(entries, data, fpath, errors)
            if isinstance(value, tuple):
                checked[field] = tuple(v for v in value if v is not None)
        consumers.append(attrs.evolve(consumer, credentials=checked))
    return attrs.evolve(config, consumers=tuple(consumers))


def _unknown_credential(owners: Mapping[str, Any], broken: Mapping[str, str]) -> str:
    message = f"unknown field (expected one of: {', '.join(_CONSUMER_FIELDS)}"
    message += f"; credential fields of installed plugins: {', '.join(sorted(owners)) or 'none'})"
    if broken:
        failed = ", ".join(f"{name} ({error})" for name, error in sorted(broken.items()))
        message += f"; plugins that failed to load: {failed}"
    return message


def check(config: GatewayConfig, errors: Errors, registry: PluginRegistry = INSTALLED) -> None:
    """Cross-checks that need the whole config."""
    installed = registry
    service_names: dict[str, int] = {}
    route_names: dict[str, str] = {}
    for si, service in enumerate(config.services):
        spath = join("services", si)
        if service is None:
            continue
        if service.name in service_names:
            errors.add(join(spath, "name"), f"duplicate service name {service.name!r}")
        service_names[service.name] = si
        if service.url is None and not service.targets and service.discovery is None:
            errors.add(spath, "needs a 'url', 'targets' or 'discovery'")
        if service.discovery is not None and (service.url is not None or service.targets):
            errors.add(join(spath, "discovery"), "a service has 'discovery' or 'url'/'targets', not both")
        if service.url is not None and service.targets:
            errors.add(spath, "has both 'url' and 'targets'; keep one")
        if service.url is not None:
            _check_url(service.url, join(spath, "url"), errors)
        for ti, target in enumerate(service.targets):
            if target is not None and parse_target(target.target) is None:
                errors.add(
                    join(join(join(spath, "targets"), ti), "target"),
                    f"expected 'host:port', got {target.target!r}",
                )
        if service.path and not service.path.startswith("/"):
            errors.add(join(spath, "path"), f"must start with '/', got {service.path!r}")
        for ri, route in enumerate(service.routes):
            rpath = join(join(spath, "routes"), ri)
            if route is None:
                continue
            if route.name is not None:
                if route.name in route_names:
                    errors.add(join(rpath, "name"), f"duplicate route name {route.name!r}")
                route_names[route.name] = rpath
            for pi, p in enumerate(route.paths):
                problem = check_path_pattern(p) if p is not None else None  # None: a wrong type, reported
                if problem:
                    errors.add(join(join(rpath, "paths"), pi), problem)
            for mi, m in enumerate(route.methods):
                if m is not None and m.upper() not in _METHODS:
                    errors.add(join(join(rpath, "methods"), mi), f"unknown HTTP method {m!r}")
            for hi, h in enumerate(route.hosts):
                problem = check_host_pattern(h) if h is not None else None
                if problem:
                    errors.add(join(join(rpath, "hosts"), hi), problem)
            if not (route.paths or route.hosts or route.methods or route.headers):
                errors.add(rpath, "a route needs at least one of paths, hosts, methods or headers")
            _check_plugins(route.plugins, join(rpath, "plugins"), installed, errors, scoped=False)
        _check_plugins(service.plugins, join(spath, "plugins"), installed, errors, scoped=False)

    consumer_keys: set[str] = set()
    for ci, consumer in enumerate(config.consumers):
        cpath = join("consumers", ci)
        if consumer is None:
            continue
        if not (consumer.username or consumer.custom_id or consumer.id):
            errors.add(cpath, "a consumer needs a username, custom_id or id")
        for field in ("id", "username", "custom_id"):
            value = getattr(consumer, field)
            if value and value in consumer_keys and field != "custom_id":
                errors.add(join(cpath, field), f"duplicate consumer {field} {value!r}")
        consumer_keys.update(v for v in (consumer.id, consumer.username) if v)
        _check_plugins(consumer.plugins, join(cpath, "plugins"), installed, errors, scoped=False)

    _check_plugins(config.plugins, "plugins", installed, errors, scoped=True)
    check_admin(config.admin, "admin", errors)
    for pi, plugin in enumerate(config.plugins):
        ppath = join("plugins", pi)
        if plugin is None:
            continue
        if plugin.service is not None and plugin.service not in service_names:
            errors.add(join(ppath, "service"), f"no service named {plugin.service!r}")
        if plugin.route is not None and plugin.route not in route_names:
            errors.add(join(ppath, "route"), f"no route named {plugin.route!r}")
        if plugin.consumer is not None and plugin.consumer not in consumer_keys:
            errors.add(join(ppath, "consumer"), f"no consumer {plugin.consumer!r}")


def _check_plugins(
    plugins: tuple[PluginConfig, ...],
    path: str,
    installed: PluginRegistry,
    errors: Errors,
    *,
    scoped: bool,
) -> None:
    seen: set[tuple[str, str | None, str | None, str | None]] = set()
    for pi, plugin in enumerate(plugins):
        ppath = join(path, pi)
        if plugin is None:
            continue
        if not scoped and (plugin.service or plugin.route or plugin.consumer):
            errors.add(ppath, "'service', 'route' and 'consumer' are only for top-level plugins")
        scope = (plugin.name, plugin.service, plugin.route, plugin.consumer)
        if scope in seen:
            errors.add(join(ppath, "name"), f"plugin {plugin.name!r} is set twice in the same scope")
        seen.add(scope)
        if plugin.name not in installed:
            names = ", ".join(sorted(installed.names())) or "none"
            errors.add(join(ppath, "name"), f"unknown filter {plugin.name!r}; installed: {names}")
            continue
        try:
            cls = installed.load(plugin.name)
        except Exception as exc:  # a broken third-party package
            errors.add(join(ppath, "name"), f"filter {plugin.name!r} failed to load: {exc!r}")
            continue
        structure(getattr(cls, "Config", Any), dict(plugin.config), join(ppath, "config"), errors)


def plugin_config(plugin: PluginConfig, registry: PluginRegistry = INSTALLED) -> Any:
    """The validated ``Config`` object of a plugin (after ``load_config``)."""
    cls = registry.load(plugin.name)
    return structure_or_raise(getattr(cls, "Config", Any), dict(plugin.config), "config")
