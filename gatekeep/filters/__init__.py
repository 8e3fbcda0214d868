"""Built-in filters.  They use the same SDK as third-party plugins and are
registered through the same entry-point group (``gatekeep.filters``)."""

from __future__ import annotations

from typing import Any

from ..auth import JWTFilter, KeyAuthFilter
from ..authz.mtls import MTLSAuthFilter
from ..authz.rbac import RbacFilter
from ..observability import AccessLogFilter, PrometheusFilter, TracingFilter
from .correlation_id import CorrelationIdFilter
from .rate_limiting import RateLimitingFilter
from .request_size_limiting import RequestSizeLimitingFilter

__all__ = [
    "BUILTIN_FILTERS",
    "AccessLogFilter",
    "CorrelationIdFilter",
    "JWTFilter",
    "KeyAuthFilter",
    "MTLSAuthFilter",
    "PrometheusFilter",
    "RateLimitingFilter",
    "RbacFilter",
    "RequestSizeLimitingFilter",
    "TracingFilter",
]

BUILTIN_FILTERS: dict[str, Any] = {
    CorrelationIdFilter.name: CorrelationIdFilter,
    RequestSizeLimitingFilter.name: RequestSizeLimitingFilter,
    RateLimitingFilter.name: RateLimitingFilter,
    PrometheusFilter.name: PrometheusFilter,
    AccessLogFilter.name: AccessLogFilter,
    TracingFilter.name: TracingFilter,
    RbacFilter.name: RbacFilter,
    MTLSAuthFilter.name: MTLSAuthFilter,
    JWTFilter.name: JWTFilter,
    KeyAuthFilter.name: KeyAuthFilter,
}
