"""Observability: Prometheus metrics, the access log and W3C trace context.

* ``prometheus`` (``PrometheusFilter``): per-request metrics recorded after
  the last byte, component state read at scrape time, ``/metrics`` for ASGI
  and WSGI, multiprocess mode.
* ``access-log`` (``AccessLogFilter``): one JSON line per request on the
  ``gatekeep.access`` logger.
* ``tracing`` (``TracingFilter``): W3C ``traceparent``/``tracestate``
  propagated upstream, started when absent, a new span id per hop.
"""

from __future__ import annotations

from .access_log import AccessLogConfig, AccessLogFilter
from .prometheus import PrometheusConfig, PrometheusFilter
from .tracing import TraceContext, TracingConfig, TracingFilter, format_traceparent, parse_traceparent

__all__ = [
    "AccessLogConfig",
    "AccessLogFilter",
    "PrometheusConfig",
    "PrometheusFilter",
    "TraceContext",
    "TracingConfig",
    "TracingFilter",
    "format_traceparent",
    "parse_traceparent",
]
