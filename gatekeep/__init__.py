"""gatekeep: an embeddable API gateway for Python, with a plugin SDK.

import gatekeep

gateway = gatekeep.Gateway("gateway.toml")
app = gatekeep.asgi(gateway)          # any ASGI server
app = gatekeep.wsgi(gateway)          # any WSGI server
app = gatekeep.asgi(gateway, app=my_fastapi_app)   # middleware mode
"""

from __future__ import annotations

from ._balancer import ConsistentHash, LeastOutstanding, PowerOfTwoEWMA, RoundRobin
from ._check import CheckReport, check_config
from ._config import (
    ConsumerConfig,
    GatewayConfig,
    GatewaySettings,
    PluginConfig,
    RouteConfig,
    ServiceConfig,
    TargetConfig,
    TLSConfig,
    load_config,
)
from ._descriptions import RouteInfo, ServiceInfo
from ._discovery import StaticDiscovery
from ._errors import (
    AuthError,
    BadRequest,
    CircuitOpen,
    ClientClosedRequest,
    ConfigError,
    FieldError,
    FilterError,
    Forbidden,
    GatekeepError,
    HeaderFieldsTooLarge,
    MethodNotAllowed,
    NoHealthyUpstream,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from ._filter import (
    BaseFilter,
    BasePlugin,
    Chain,
    Exchange,
    Filter,
    NoConfig,
    Plugin,
    available_filters,
    available_plugins,
    register_filter,
)
from ._gateway import Gateway
from ._http import Body, Headers, Request, Response, problem_response, replayable
from ._normalise import normalise_path
from ._plugin_context import Endpoint, PluginContext, UpstreamState, named_part
from ._protocols import (
    Authenticator,
    Authorizer,
    Balancer,
    Breaker,
    CountingBalancer,
    Decision,
    Discovery,
    Identity,
    Instance,
    Limit,
    ObservableBreaker,
    ObservingBalancer,
    RateLimiter,
    Router,
)
from ._registry import PluginRegistry
from ._router import CompiledRouter, RouteMatch, RouteRule
from ._secrets import Keyring, Secret, SecretError, SecretKey
from ._websocket import WebSocketRefused, WebSocketSettings
from .adapters import ASGIApp, Middleware, WSGIApp, asgi, wsgi
from .admin import AdminSettings
from .admin._app import AdminAPI
from .admin._server import serve_admin
from .auth import JWTVerifier
from .cache import CacheStore, MemoryCacheStore, RedisCacheStore, purge_caches
from .configsource import (
    ConfigDocument,
    ConfigSourceError,
    ConfigStore,
    ConsulKVStore,
    FileStore,
    MemoryStore,
    VersionConflict,
)
from .discovery import CompositeDiscovery, ConsulDiscovery, DnsDiscovery
from .ratelimit import MemoryRateLimiter, RateLimiterUnavailable, RedisRateLimiter
from .resilience import CircuitBreaker

__version__ = "0.1.0"

__all__ = [
    "ASGIApp",
    "AdminAPI",
    "AdminSettings",
    "AuthError",
    "Authenticator",
    "Authorizer",
    "BadRequest",
    "Balancer",
    "BaseFilter",
    "BasePlugin",
    "Body",
    "Breaker",
    "CountingBalancer",
    "CacheStore",
    "Chain",
    "CheckReport",
    "CircuitBreaker",
    "CircuitOpen",
    "ClientClosedRequest",
    "CompiledRouter",
    "CompositeDiscovery",
    "ConfigDocument",
    "ConfigError",
    "ConfigSourceError",
    "ConfigStore",
    "ConsistentHash",
    "ConsulDiscovery",
    "ConsulKVStore",
    "ConsumerConfig",
    "Decision",
    "Discovery",
    "DnsDiscovery",
    "Endpoint",
    "Exchange",
    "FieldError",
    "FileStore",
    "Filter",
    "FilterError",
    "Forbidden",
    "GatekeepError",
    "Gateway",
    "GatewayConfig",
    "GatewaySettings",
    "Headers",
    "Identity",
    "Instance",
    "JWTVerifier",
    "Keyring",
    "LeastOutstanding",
    "Limit",
    "ObservableBreaker",
    "ObservingBalancer",
    "MemoryCacheStore",
    "MemoryRateLimiter",
    "MemoryStore",
    "MethodNotAllowed",
    "Middleware",
    "NoConfig",
    "NoHealthyUpstream",
    "NotFound",
    "HeaderFieldsTooLarge",
    "PayloadTooLarge",
    "Plugin",
    "PluginConfig",
    "PluginContext",
    "PluginRegistry",
    "PowerOfTwoEWMA",
    "RateLimited",
    "RateLimiter",
    "RateLimiterUnavailable",
    "RedisCacheStore",
    "RedisRateLimiter",
    "Request",
    "Response",
    "RoundRobin",
    "RouteConfig",
    "RouteInfo",
    "RouteMatch",
    "RouteRule",
    "Router",
    "ServiceConfig",
    "Secret",
    "SecretError",
    "SecretKey",
    "ServiceInfo",
    "ServiceUnavailable",
    "StaticDiscovery",
    "TLSConfig",
    "TargetConfig",
    "UpstreamConnectError",
    "UpstreamState",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamTimeout",
    "VersionConflict",
    "WSGIApp",
    "WebSocketRefused",
    "WebSocketSettings",
    "__version__",
    "asgi",
    "available_filters",
    "available_plugins",
    "purge_caches",
    "check_config",
    "load_config",
    "normalise_path",
    "problem_response",
    "register_filter",
    "replayable",
    "serve_admin",
    "wsgi",
    "named_part",
]
