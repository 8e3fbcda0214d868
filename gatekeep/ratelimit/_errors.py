"""The error a rate limiter raises when it cannot decide."""

from __future__ import annotations

from .._errors import ServiceUnavailable

__all__ = ["RateLimiterUnavailable"]


class RateLimiterUnavailable(ServiceUnavailable):
    """The limiter's store is unreachable, too slow, or answered an error.

    The caller chooses what this means: let the request through (Kong's
    ``fault_tolerant``) or answer 503, which is this error's own status.
    The store's own exception is the ``__cause__``.
    """

    title = "Rate Limiter Unavailable"
    slug = "rate-limiter-unavailable"
