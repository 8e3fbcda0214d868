"""The small protocols gatekeep is composed of.

Each protocol is a one-line contract.  Built-in implementations are plain
classes that satisfy them; a user may pass any object of the right shape
wherever one is expected (``Gateway(router=, discovery=, balancer=,
breaker=, rate_limiters=, authenticators=, authorizers=)``; ``docs/composing.md``), and
gatekeep calls only what the protocol declares.

Where the built-ins can do more than the contract (a balancer that wants
latencies, a breaker that can tell its state without taking a probe slot),
the extra is an *optional* protocol of its own (``ObservingBalancer``,
``CountingBalancer``, ``ObservableBreaker``).  The guard checks for it once,
when it makes the object, never per request; an object without it still
works, with a documented default.  The value types the protocols exchange
(``Instance``, ``Identity``, ``Decision``) live here too.  The filter
protocol (``Filter``) lives with the rest of the plugin SDK in ``_filter.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

# Identity lives below the request (``Request.identity`` is typed with it); re-exported here.
from ._identity import Identity

if TYPE_CHECKING:
    from ._http import Request

__all__ = [
    "Authenticator",
    "Authorizer",
    "Balancer",
    "Breaker",
    "BreakerChange",
    "CountingBalancer",
    "Decision",
    "Discovery",
    "Identity",
    "Instance",
    "Limit",
    "ObservableBreaker",
    "ObservingBalancer",
    "RateLimiter",
    "Router",
]


@attrs.frozen
class Instance:
    """One reachable copy of a service."""

    host: str
    port: int
    scheme: str = "http"
    weight: int = 100
    id: str = ""
    meta: Mapping[str, str] = attrs.field(factory=dict, hash=False, eq=False)

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@attrs.frozen
class Limit:
    """``rate`` tokens per ``period`` seconds, holding at most ``burst`` tokens."""

    rate: int
    period: float
    burst: int | None = None
    name: str = ""

    @property
    def capacity(self) -> int:
        return self.burst if self.burst is not None else self.rate


@attrs.frozen
class Decision:
    """The answer of a rate limiter for all limits of one request."""

    allowed: bool
    # Per limit, in the order given: tokens left after this request.
    remaining: tuple[int, ...] = ()
    # Seconds until a rejected request could succeed (0 when allowed).
    retry_after: float = 0.0
    # Per limit: seconds until the bucket is full again.
    reset: tuple[float, ...] = ()


@runtime_checkable
class Router(Protocol):
    """Finds the route of a request.

    ``Gateway(router=...)`` takes a ``Router`` or a factory called once with
    the compiled ``RouteRule``s.  A match is any object with ``rule`` (one of
    those rules: the gateway reads ``rule.name``), ``params`` (a mapping,
    copied to ``request.params``) and ``matched`` (the part of the path the
    pattern consumed, cut off when the route strips its path) -- e.g. a
    ``gatekeep.RouteMatch``.
    """

    def match(self, method: str, host: str, path: str, headers: Any = None) -> Any:
        """The best match for a normalised path, or ``None``."""

    def allowed_methods(self, host: str, path: str, headers: Any = None) -> frozenset[str]:
        """Methods some route accepts at this path (for a 405 ``Allow``; empty: 404)."""


@runtime_checkable
class Authenticator(Protocol):
    """Establishes who made a request.

    The ``jwt``, ``key-auth`` and ``mtls-auth`` plugins are thin filters
    around one; ``Gateway(authenticators={"name": obj})`` plus the ``auth``
    plugin (``config.authenticator = "name"``) runs any other.
    """

    async def authenticate(self, request: Request) -> Identity | None:
        """The identity the request proves, ``None`` when it carries no credential.

        ``Identity.consumer`` names the consumer (id, username or custom_id)
        when the credential belongs to one.

        Raises:
            AuthError: credentials are present but invalid.
        """


@runtime_checkable
class Authorizer(Protocol):
    """Decides whether an identity may make a request (``rbac``, ``gatekeep.service``).

    ``Gateway(authorizers={"name": obj})`` plus the ``authz`` plugin
    (``config.authorizer = "name"``) asks any other.
    """

    def authorize(self, identity: Identity | None, method: str, path: str) -> None:
        """Return when ``identity`` may call ``method path`` (the normalised path).

        Raises:
            AuthError: denied, and the request is not authenticated (401).
            Forbidden: the identity may not do this (403).
        """


@runtime_checkable
class RateLimiter(Protocol):
    """Token buckets: ``Gateway(rate_limiters={"name": obj})``, selected by ``policy = "name"``."""

    async def acquire(self, key: str, limits: Sequence[Limit], cost: int = 1) -> Decision:
        """Take ``cost`` tokens from every limit's bucket, all or none, atomically.

        Raises:
            RateLimiterUnavailable: the store cannot decide now (the
                ``rate-limiting`` plugin then applies ``fault_tolerant``).
        """


@runtime_checkable
class Discovery(Protocol):
    def instances(self, service: str) -> Sequence[Instance]:
        """The current instances of ``service`` (kept fresh in the background)."""


@runtime_checkable
class Balancer(Protocol):
    """Chooses an instance: ``Gateway(balancer=lambda service_config: obj)``, one per service."""

    def pick(self, instances: Sequence[Instance], request: Request) -> Instance:
        """Choose one of ``instances`` (never empty) for ``request``."""


@runtime_checkable
class ObservingBalancer(Balancer, Protocol):
    """Optional: a balancer told every try's latency (to the response head) and outcome."""

    def observe(self, instance: Instance, seconds: float, ok: bool) -> None: ...


@runtime_checkable
class CountingBalancer(Balancer, Protocol):
    """Optional: a balancer told when a picked instance is done with (counts requests in flight).

    ``release`` runs once per ``pick``: when the response body is closed, or
    at once for a try that failed or is retried.
    """

    def release(self, instance: Instance) -> None: ...


@runtime_checkable
class Breaker(Protocol):
    """Guards a service or an instance: ``Gateway(breaker=lambda service_config, instance: obj)``.

    Every ``allow()`` that returned ``True`` is followed by exactly one
    ``on_success()`` or ``on_failure()`` -- or, for an ``ObservableBreaker``,
    ``on_cancel()`` when the call ended without an outcome.
    """

    def allow(self) -> bool:
        """May a call go through now?"""

    def on_success(self) -> None: ...

    def on_failure(self) -> None: ...


BreakerChange = Callable[[Any, Any, Any], None]


@runtime_checkable
class ObservableBreaker(Breaker, Protocol):
    """Optional: a breaker that tells its state (``CircuitBreaker`` is one).

    Without it the guard asks only ``allow`` (an instance whose breaker says
    no is skipped for another), a refused request gets ``Retry-After: 1``,
    and the metrics show no state for it.
    """

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"``."""

    def available(self) -> bool:
        """Would ``allow`` say yes, without taking a probe slot?"""

    def retry_after(self) -> float:
        """Seconds until a probe may go through (0 unless open)."""

    def on_cancel(self) -> None:
        """An allowed call ended without an outcome: give its probe slot back."""

    def on_change(self, callback: BreakerChange) -> None:
        """Call ``callback(breaker, old_state, new_state)`` on every state change."""
