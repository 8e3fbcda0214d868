"""The resilience settings of a service, as frozen attrs classes.

They sit under a service in the declarative config::

    [[services]]
    name = "orders"
    targets = [{ target = "10.0.0.1:8080" }, { target = "10.0.0.2:8080" }]
    balancer = "p2c-ewma"
    retries = 2

      [services.breaker]
      consecutive_failures = 5
      failure_rate = 0.5
      window = 10
      minimum_calls = 20
      open_for = 30
      half_open_probes = 3

      [services.healthchecks.active]
      http_path = "/health"
      healthy = { interval = 5, successes = 2 }
      unhealthy = { interval = 2, http_failures = 2, tcp_failures = 2, timeouts = 2 }

      [services.healthchecks.passive]
      unhealthy = { http_failures = 5, tcp_failures = 5, timeouts = 5 }

Times in these tables are seconds (as in Kong's ``healthchecks``); the
service's own ``connect_timeout``/``read_timeout``/``write_timeout`` stay in
milliseconds, as in Kong.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from .. import validators

__all__ = [
    "ActiveHealthcheck",
    "ActiveHealthy",
    "ActiveUnhealthy",
    "CONNECT_EJECTION",
    "BreakerConfig",
    "HealthchecksConfig",
    "PassiveHealthcheck",
    "PassiveUnhealthy",
    "RetryConfig",
]


def _fraction(_: Any, attribute: Any, value: float) -> None:
    if not 0 < value <= 1:
        raise ValueError(f"must be a share in (0, 1], got {value}")


def _percent(_: Any, attribute: Any, value: float) -> None:
    if not 0 <= value <= 100:
        raise ValueError(f"must be a percentage from 0 to 100, got {value}")


def _statuses(_: Any, attribute: Any, value: tuple[int, ...]) -> None:
    for status in value:
        if not 100 <= status <= 599:
            raise ValueError(f"must hold HTTP statuses (100-599), got {status}")


def _absolute_path(_: Any, attribute: Any, value: str) -> None:
    if not value.startswith("/"):
        raise ValueError(f"must start with '/', got {value!r}")


@attrs.frozen
class BreakerConfig:
    """A circuit breaker per service and per instance.

    It opens after ``consecutive_failures`` failures in a row, or when at
    least ``minimum_calls`` calls in the last ``window`` seconds failed at a
    rate of ``failure_rate`` or more.  It stays open ``open_for`` seconds,
    then lets ``half_open_probes`` calls through; all of them must succeed
    to close it, any failure opens it again.  ``failure_rate = 1`` with a
    huge ``minimum_calls`` effectively turns the rate rule off; so does
    ``consecutive_failures = 0`` for the streak rule.
    """

    consecutive_failures: int = attrs.field(default=5, validator=validators.non_negative)
    failure_rate: float = attrs.field(default=0.5, validator=_fraction)
    window: float = attrs.field(default=10.0, validator=validators.positive)
    minimum_calls: int = attrs.field(default=20, validator=validators.positive)
    open_for: float = attrs.field(default=30.0, validator=validators.positive)
    half_open_probes: int = attrs.field(default=3, validator=validators.positive)
    # Upstream answers that count as failures (errors and timeouts always do).
    failure_statuses: tuple[int, ...] = attrs.field(default=(500, 502, 503, 504), validator=_statuses)
    # Breakers per instance (removing an open one from the pick set) and/or per service.
    per_instance: bool = True
    per_service: bool = True


@attrs.frozen
class RetryConfig:
    """How retries are spaced, bounded and budgeted (``retries`` on the service says how many)."""

    # Answers retried (for idempotent requests).
    statuses: tuple[int, ...] = attrs.field(default=(502, 503, 504), validator=_statuses)
    # Full-jitter exponential backoff: a random delay in [0, min(max_backoff, backoff * 2**n)].
    backoff: float = attrs.field(default=0.025, validator=validators.non_negative)
    max_backoff: float = attrs.field(default=0.25, validator=validators.non_negative)
    # Seconds one try may take until the response head; None: the service timeouts only.
    per_try_timeout: float | None = attrs.field(default=None, validator=validators.positive)
    # Seconds all tries together may take until a response head; None: no bound.
    timeout: float | None = attrs.field(default=None, validator=validators.positive)
    # Retries may add at most this share of the requests seen in the last 10 s ...
    budget_percent: float = attrs.field(default=20.0, validator=_percent)
    # ... plus this many per second, so that a quiet service can still retry.
    min_retries_per_second: float = attrs.field(default=3.0, validator=validators.non_negative)
    # A request body up to this size is read ahead into memory so that it can be re-sent.
    body_limit: int = attrs.field(default=64 * 1024, validator=validators.non_negative)
    # After a connect failure (refused, unreachable, connect timeout, TLS handshake: the
    # instance never saw the request) try this many other instances, for any method.
    # Not a retry of a delivered request: neither ``retries`` nor the budget limit it.
    failovers: int = attrs.field(default=3, validator=validators.non_negative)


@attrs.frozen
class ActiveHealthy:
    interval: float = attrs.field(default=5.0, validator=validators.positive)
    http_statuses: tuple[int, ...] = attrs.field(
        default=(200, 201, 202, 204, 301, 302, 303, 304, 307, 308), validator=_statuses
    )
    successes: int = attrs.field(default=2, validator=validators.positive)


@attrs.frozen
class ActiveUnhealthy:
    interval: float = attrs.field(default=5.0, validator=validators.positive)
    http_statuses: tuple[int, ...] = attrs.field(
        default=(429, 404, 500, 501, 502, 503, 504, 505), validator=_statuses
    )
    http_failures: int = attrs.field(default=2, validator=validators.positive)
    tcp_failures: int = attrs.field(default=2, validator=validators.positive)
    timeouts: int = attrs.field(default=2, validator=validators.positive)


@attrs.frozen
class ActiveHealthcheck:
    """Kong's ``healthchecks.active``: probe every instance with an HTTP GET."""

    type: Literal["http", "https"] | None = None  # default: the service's protocol
    http_path: str = attrs.field(default="/", validator=_absolute_path)
    timeout: float = attrs.field(default=1.0, validator=validators.positive)
    concurrency: int = attrs.field(default=10, validator=validators.positive)
    https_verify_certificate: bool = True
    healthy: ActiveHealthy = ActiveHealthy()
    unhealthy: ActiveUnhealthy = ActiveUnhealthy()


@attrs.frozen
class PassiveUnhealthy:
    """Consecutive failures of a kind that eject an instance; 0 turns a kind off (Kong).

    A failed connect counts as a ``connect_failures`` and as a ``tcp_failures``
    (or ``timeouts``) failure; any answer resets every count.
    """

    http_statuses: tuple[int, ...] = attrs.field(default=(500, 502, 503, 504), validator=_statuses)
    http_failures: int = attrs.field(default=5, validator=validators.non_negative)
    tcp_failures: int = attrs.field(default=5, validator=validators.non_negative)
    timeouts: int = attrs.field(default=5, validator=validators.non_negative)
    # nginx's max_fails=1 for a connect error: nobody listens there (or it is unreachable).
    connect_failures: int = attrs.field(default=1, validator=validators.non_negative)


@attrs.frozen
class PassiveHealthcheck:
    """Outlier ejection from live traffic (Kong's ``healthchecks.passive``, Envoy's ejection timing).

    An instance is ejected after ``unhealthy.*`` consecutive failures of a
    kind; it comes back after ``base_ejection_time`` × (times ejected),
    at most ``max_ejection_time``.  At most ``max_ejection_percent`` of a
    service's instances are ejected at once, and never all of them.
    """

    unhealthy: PassiveUnhealthy = PassiveUnhealthy()
    base_ejection_time: float = attrs.field(default=30.0, validator=validators.positive)
    max_ejection_time: float = attrs.field(default=300.0, validator=validators.positive)
    max_ejection_percent: float = attrs.field(default=50.0, validator=_percent)


# Without a ``healthchecks.passive`` table: eject an instance only for a failed connect.
CONNECT_EJECTION = PassiveHealthcheck(unhealthy=PassiveUnhealthy(http_failures=0, tcp_failures=0, timeouts=0))


@attrs.frozen
class HealthchecksConfig:
    """Kong's ``healthchecks`` table.

    Active checks are off unless given.  Passive ejection is on by default for
    connect failures only (``CONNECT_EJECTION``); a ``passive`` table gives the
    full set (Kong's counters), ``passive = None`` (from Python) turns it off.
    """

    active: ActiveHealthcheck | None = None
    passive: PassiveHealthcheck | None = CONNECT_EJECTION
