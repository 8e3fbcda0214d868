"""The filter SDK: what a plugin is, how it is found, and how chains run.

A filter is a class with a ``name``, a ``priority``, a ``Config`` attrs class
and any of three optional phases:

* ``on_request(request)`` runs before the upstream, highest priority first;
  returning a ``Response`` answers early and skips the upstream.
* ``on_response(request, response)`` runs in reverse order once the upstream
  (or an early filter) answered; it may change status and headers, wrap the
  body stream, or return a whole new response.
* ``on_log(exchange)`` runs after the last byte reached the client, so it
  never delays the answer.

``bind(context)`` runs once when the gateway is built, with a
``PluginContext`` (consumers, routes, services, settings ...);
``start(task_group)``/``stop()`` run with the gateway's lifespan, for
background work.  ``consumer_credentials`` declares the consumer
credential fields a filter owns (Kong's DAO schema): the config loader
validates ``consumers[].<field>`` with the declared class.

Plugins are found by name through the gateway's ``PluginRegistry``
(gatekeep/_registry.py: entry points of ``gatekeep.plugins``, plus classes
given to ``Gateway(plugins=...)``); nothing here imports a plugin.  A route's chain is computed
once when the config is loaded; at request time the gateway only walks
precomputed lists of bound methods.  Consumer-scoped filters are resolved
when authentication names the consumer: the run switches to the chain
computed for (route, consumer) at the same priority position.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Generic,
    Protocol,
    TypeVar,
    get_args,
    get_origin,
    runtime_checkable,
)

import attrs

from ._http import Request, Response

# The registry lived here one release ago (gatekeep._registry now); re-exported for those imports.
from ._registry import (
    CredentialOwner,
    available_filters,
    available_plugins,
    credential_owners,
    load_filter_class,
    register_filter,
)

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from ._plugin_context import PluginContext
    from ._protocols import Instance

__all__ = [
    "BaseFilter",
    "BasePlugin",
    "Chain",
    "CredentialOwner",
    "Exchange",
    "Filter",
    "NoConfig",
    "Plugin",
    "available_filters",
    "available_plugins",
    "credential_owners",
    "load_filter_class",
    "register_filter",
]


@attrs.frozen
class NoConfig:
    """The config of a filter that takes none."""


ConfigT = TypeVar("ConfigT")


class BasePlugin(Generic[ConfigT]):
    """Base class for plugins, generic over the attrs class of their config.

    ``class CorsPlugin(BasePlugin[CorsConfig])`` types ``self.config`` as
    ``CorsConfig`` and makes ``CorsConfig`` the class the config loader checks
    the plugin's ``config`` table against (``Config``, derived from the type
    argument; set it yourself only for a plugin that is not parametrised).
    Subclasses set ``name`` and ``priority`` and override the phases they
    need; phases left alone cost nothing at request time.  ``start``/``stop``
    run with the gateway's lifespan; ``start`` receives the gateway's task
    group for background work (JWKS refresh ...).
    """

    name: ClassVar[str] = ""
    priority: ClassVar[int] = 0
    # The attrs class of ``config`` (a ClassVar cannot name ``ConfigT``: see ``__init_subclass__``).
    Config: ClassVar[type[Any]] = NoConfig
    # Consumer credential fields this filter owns and the attrs class of one entry
    # (Kong's DAO schema): ``{"jwt_secrets": JWTSecret}`` makes ``consumers[].jwt_secrets``
    # a list of ``JWTSecret``, checked when the config loads and read with
    # ``consumer.credentials.get("jwt_secrets", ())``.
    consumer_credentials: ClassVar[Mapping[str, type[Any]]] = {}
    # True for an auth plugin whose ``anonymous`` config option names a consumer (Kong's meaning):
    # a missing consumer is then reported for every such plugin of the config at once.
    anonymous_option: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Config" in cls.__dict__:
            return
        # ``BasePlugin[XConfig]`` among the bases: derive ``Config`` from it, once, at class creation.
        for base in cls.__dict__.get("__orig_bases__", ()):
            if get_origin(base) is BasePlugin:
                (argument,) = get_args(base)
                if isinstance(argument, type):
                    cls.Config = argument
                return

    def __init__(self, config: ConfigT | None = None) -> None:
        self.config: ConfigT = config if config is not None else self.Config()

    async def on_request(self, request: Request) -> Response | None:
        return None

    async def on_response(self, request: Request, response: Response) -> Response | None:
        return None

    async def on_log(self, exchange: Exchange) -> None:
        return None

    def bind(self, context: PluginContext) -> None:
        """Called once when the gateway is built from its config, before any request.

        ``context`` is what a plugin may read of its gateway: the routes and
        services (public descriptions), the consumers and their credentials,
        the other plugins, settings, upstream state, the protocol objects
        given to the gateway, ``add_endpoint`` and the lifespan's task group
        (``gatekeep.PluginContext``).  A plugin whose ``bind`` names its
        parameter ``gateway`` gets the ``Gateway`` itself, for one release.
        """
        return None

    async def start(self, task_group: TaskGroup) -> None:
        return None

    async def stop(self) -> None:
        return None


# The name of one release before "plugin" became the one word (config, code, docs, entry points).
BaseFilter = BasePlugin


@attrs.define(slots=True, eq=False)
class Exchange:
    """What happened to one request, for log-phase filters.

    Times are ``time.perf_counter()`` readings; durations are in seconds.
    ``upstream_start``/``upstream_end`` stay 0 when no upstream was called.
    """

    request: Request
    status: int = 0
    response_headers: Any = None
    source: str = "gateway"
    start: float = attrs.field(factory=time.perf_counter)
    upstream_start: float = 0.0
    upstream_head: float = 0.0
    upstream_end: float = 0.0
    end: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    instance: Instance | None = None
    error: BaseException | None = None

    @property
    def duration(self) -> float:
        return max(0.0, self.end - self.start)

    @property
    def upstream_duration(self) -> float:
        if not self.upstream_start:
            return 0.0
        return max(0.0, (self.upstream_end or self.end) - self.upstream_start)


def _overrides(obj: object, phase: str) -> bool:
    """Whether ``obj`` really implements ``phase`` (not BaseFilter's no-op)."""
    fn = getattr(type(obj), phase, None)
    if fn is None:
        return False
    return fn is not getattr(BasePlugin, phase, None)


def _phase(f: Any, name: str, fast_name: str) -> Callable[..., Any]:
    """What the chain calls for ``f``'s phase ``name``: the method, or the plugin's own faster
    equivalent (``f.<fast_name>()``: a plain function that answers at once when it can and
    hands back an awaitable only when it must wait; built-in plugins only).  The gateway
    awaits a phase's answer only when it is neither ``None`` nor a ``Response``."""
    fast = getattr(f, fast_name, None)
    phase: Callable[..., Any] | None = fast() if fast is not None else None
    if phase is None:
        phase = getattr(f, name)
        assert phase is not None
    return phase


def sort_key(f: Any) -> tuple[int, str]:
    return (-int(getattr(f, "priority", 0)), str(getattr(f, "name", "")))


class Chain:
    """The filters of one route (and possibly one consumer), in run order.

    Holds three precomputed lists of bound methods so that the request path
    does no attribute lookups or empty calls.
    """

    __slots__ = ("filters", "keys", "log", "request", "response")

    def __init__(self, filters: Sequence[Any]) -> None:
        self.filters = sorted(filters, key=sort_key)
        self.keys = [sort_key(f) for f in self.filters]
        self.request: list[tuple[int, Callable[..., Any]]] = [
            (i, _phase(f, "on_request", "_fast_request_phase"))
            for i, f in enumerate(self.filters)
            if _overrides(f, "on_request")
        ]
        self.response: list[Callable[..., Any]] = [
            _phase(f, "on_response", "_fast_response_phase")
            for f in reversed(self.filters)
            if _overrides(f, "on_response")
        ]
        self.log: list[Callable[..., Any]] = [
            _phase(f, "on_log", "_fast_log_phase") for f in self.filters if _overrides(f, "on_log")
        ]

    def resume_index(self, after: tuple[int, str]) -> int:
        """Index into ``self.request`` of the first phase that sorts after ``after``."""
        for n, (i, _) in enumerate(self.request):
            if self.keys[i] > after:
                return n
        return len(self.request)

    def __len__(self) -> int:
        return len(self.filters)

    def __repr__(self) -> str:
        return "Chain(" + ", ".join(f"{f.name}:{f.priority}" for f in self.filters) + ")"


@runtime_checkable
class Filter(Protocol):
    """A plugin unit.  See ``gatekeep.BaseFilter`` for the optional phases:

    ``on_request(request) -> Response | None`` (may answer early),
    ``on_response(request, response) -> Response | None``,
    ``on_log(exchange)`` (after the last byte was sent).
    """

    name: str
    priority: int


# "Plugin" is the one word for the concept (config, code, docs, entry points); ``Filter`` is
# its name of one release ago, kept as the same protocol.
Plugin = Filter
