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

``bind(gateway)`` runs once when the gateway is built (to look up consumers,
services ...); ``start(task_group)``/``stop()`` run with the gateway's
lifespan, for background work.  ``consumer_credentials`` declares the consumer
credential fields a filter owns (Kong's DAO schema): the config loader
validates ``consumers[].<field>`` with the declared class.

Plugins are found through the entry-point group ``gatekeep.plugins`` only
(``gatekeep.filters``, the name of one release ago, is still read); the
built-in ones (package ``gatekeep.plugins``) register through the same
group, and nothing here imports them.  A route's chain is computed
once when the config is loaded; at request time the gateway only walks
precomputed lists of bound methods.  Consumer-scoped filters are resolved
when authentication names the consumer: the run switches to the chain
computed for (route, consumer) at the same priority position.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
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

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from ._protocols import Instance

__all__ = [
    "BaseFilter",
    "BasePlugin",
    "Chain",
    "CredentialOwner",
    "Exchange",
    "Filter",
    "NoConfig",
    "available_filters",
    "credential_owners",
    "load_filter_class",
    "register_filter",
]

ENTRY_POINT_GROUP = "gatekeep.plugins"
# Read too, for one release: the group's name before "plugin" became the one word.
OLD_ENTRY_POINT_GROUP = "gatekeep.filters"


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

    def bind(self, gateway: Any) -> None:
        """Called once with the ``gatekeep.Gateway`` when it is built from its config.

        Gives a filter what it needs from the whole config (consumers and
        their credentials, services, other filters) before any request.
        (Typed ``Any`` so that the SDK does not import the gateway, which runs
        the filters: filters annotate it as ``gatekeep.Gateway`` themselves.)
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
            (i, f.on_request) for i, f in enumerate(self.filters) if _overrides(f, "on_request")
        ]
        self.response: list[Callable[..., Any]] = [
            f.on_response for f in reversed(self.filters) if _overrides(f, "on_response")
        ]
        self.log: list[Callable[..., Any]] = [f.on_log for f in self.filters if _overrides(f, "on_log")]

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


_registry_cache: dict[str, Any] | None = None
# Filters registered in code (``register_filter``); they survive a refresh.
_registered: dict[str, Any] = {}


def _entry_points() -> Sequence[EntryPoint]:
    """The one place that reads the entry points: ``gatekeep.plugins``, then ``gatekeep.filters``."""
    return (*entry_points(group=ENTRY_POINT_GROUP), *entry_points(group=OLD_ENTRY_POINT_GROUP))


def available_filters(refresh: bool = False) -> Mapping[str, Any]:
    """Installed plugins by name: entry points of ``gatekeep.plugins`` (or the old ``gatekeep.filters``).

    Built-in filters are registered through the same group by gatekeep's own
    package metadata, so a source checkout must be installed (``pip install
    -e .``) for them to be found.  Filters registered in code with
    ``register_filter`` come last and win.
    """
    global _registry_cache
    if _registry_cache is not None and not refresh:
        return _registry_cache
    found: dict[str, Any] = {}
    for ep in _entry_points():
        found.setdefault(ep.name, ep)
    found.update(_registered)
    _registry_cache = found
    return found


def load_filter_class(name: str) -> Any:
    """The filter class registered as ``name``.

    Raises:
        KeyError: no such filter is installed.
    """
    registry = available_filters()
    obj = registry[name]
    if hasattr(obj, "load") and not isinstance(obj, type):
        cls = obj.load()
        registry[name] = cls  # type: ignore[index]
        return cls
    return obj


def register_filter(cls: Any, name: str | None = None) -> None:
    """Register a filter class without an entry point (tests, embedding)."""
    global _registry_cache
    _registered[name or cls.name] = cls
    _registry_cache = None


@attrs.frozen
class CredentialOwner:
    """A filter that declares a consumer credential field, and the class of one entry."""

    filter: str
    type: type[Any]


def credential_owners() -> tuple[dict[str, list[CredentialOwner]], dict[str, str]]:
    """Consumer credential fields declared by installed filters (``consumer_credentials``).

    Returns ``(owners by field, load errors by filter name)``: every installed
    filter class is loaded to read its declaration, and one that fails to load
    is reported instead of failing the lookup (so that a broken package that
    owns no field the config uses costs nothing).  A field may have several
    owners when two filters declare it; the config loader refuses that when
    the field is used.
    """
    owners: dict[str, list[CredentialOwner]] = {}
    broken: dict[str, str] = {}
    for name in sorted(available_filters()):
        try:
            cls = load_filter_class(name)
        except Exception as exc:  # a broken third-party package
            broken[name] = repr(exc)
            continue
        declared = getattr(cls, "consumer_credentials", None)
        if not isinstance(declared, Mapping):
            continue
        for field, tp in declared.items():
            found = owners.setdefault(str(field), [])
            if all(o.type is not tp for o in found):
                found.append(CredentialOwner(name, tp))
    return owners, broken


@runtime_checkable
class Filter(Protocol):
    """A plugin unit.  See ``gatekeep.BaseFilter`` for the optional phases:

    ``on_request(request) -> Response | None`` (may answer early),
    ``on_response(request, response) -> Response | None``,
    ``on_log(exchange)`` (after the last byte was sent).
    """

    name: str
    priority: int


# Phases, for type checkers of filter authors.
class RequestPhase(Protocol):
    async def __call__(self, request: Request) -> Response | None: ...


class ResponsePhase(Protocol):
    async def __call__(self, request: Request, response: Response) -> Response | None: ...


class LogPhase(Protocol):
    async def __call__(self, exchange: Exchange) -> None: ...
