"""Resilience in the upstream stage: circuit breakers, health checks, retries.

Sans-IO cores (``CircuitBreaker``, ``HealthTracker``, ``RetryPolicy``,
``RetryBudget``) with an injected monotonic clock, composed per service by
``UpstreamGuard``; their config classes sit under a service in the
declarative config (see ``docs/resilience.md``).
"""

from __future__ import annotations

from ._breaker import CLOSED, HALF_OPEN, OPEN, TRANSITIONS, BreakerState, CircuitBreaker, circuit_open
from ._config import (
    ActiveHealthcheck,
    ActiveHealthy,
    ActiveUnhealthy,
    BreakerConfig,
    HealthchecksConfig,
    PassiveHealthcheck,
    PassiveUnhealthy,
    RetryConfig,
)
from ._guard import UpstreamGuard
from ._health import ActiveChecker, HealthTracker
from ._retry import IDEMPOTENT_METHODS, RetryBudget, RetryPolicy, is_idempotent, prepare_body

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "IDEMPOTENT_METHODS",
    "OPEN",
    "TRANSITIONS",
    "ActiveChecker",
    "ActiveHealthcheck",
    "ActiveHealthy",
    "ActiveUnhealthy",
    "BreakerConfig",
    "BreakerState",
    "CircuitBreaker",
    "HealthTracker",
    "HealthchecksConfig",
    "PassiveHealthcheck",
    "PassiveUnhealthy",
    "RetryBudget",
    "RetryConfig",
    "RetryPolicy",
    "UpstreamGuard",
    "circuit_open",
    "is_idempotent",
    "prepare_body",
]
