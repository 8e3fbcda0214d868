"""The small protocols gatekeep is composed of.

Each protocol is a one-line contract.  Built-in implementations are attrs
classes that satisfy them; a user may pass any object of the right shape
wherever one is expected.  The value types they exchange (``Instance``,
``Identity``, ``Decision``) live here too.  The filter protocols (``Filter``
and its phases) live with the rest of the filter SDK in ``_filter.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

if TYPE_CHECKING:
    from ._http import Request

__all__ = [
    "Authenticator",
    "Authorizer",
    "Balancer",
    "Breaker",
    "Decision",
    "Discovery",
    "Identity",
    "Instance",
    "Limit",
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
class Identity:
    """Who made a request, as established by an authenticator."""

    subject: str
    consumer: str | None = None
    credential: str | None = None
    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = attrs.field(factory=dict)
    anonymous: bool = False


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
    def match(self, method: str, host: str, path: str, headers: Any = None) -> Any:
        """The best ``RouteMatch`` for a normalised path, or ``None``."""

    def allowed_methods(self, host: str, path: str, headers: Any = None) -> frozenset[str]:
        """Methods some route accepts at this path (for a 405 ``Allow``)."""


@runtime_checkable
class Authenticator(Protocol):
    async def authenticate(self, request: Request) -> Identity | None:
        """The identity the request proves, ``None`` when it carries no credential.

        Raises:
            AuthError: credentials are present but invalid.
        """


@runtime_checkable
class Authorizer(Protocol):
    def authorize(self, identity: Identity | None, route: Any, method: str) -> None:
        """Return when allowed.

        Raises:
            Forbidden: the identity may not do this.
        """


@runtime_checkable
class RateLimiter(Protocol):
    async def acquire(self, key: str, limits: Sequence[Limit], cost: int = 1) -> Decision:
        """Take ``cost`` tokens from every limit's bucket, all or none, atomically."""


@runtime_checkable
class Discovery(Protocol):
    def instances(self, service: str) -> Sequence[Instance]:
        """The current instances of ``service`` (kept fresh in the background)."""


@runtime_checkable
class Balancer(Protocol):
    def pick(self, instances: Sequence[Instance], request: Request) -> Instance:
        """Choose one of ``instances`` (never empty) for ``request``."""


@runtime_checkable
class Breaker(Protocol):
    def allow(self) -> bool:
        """May a call go through now?"""

    def on_success(self) -> None: ...

    def on_failure(self) -> None: ...

    @property
    def state(self) -> str: ...
