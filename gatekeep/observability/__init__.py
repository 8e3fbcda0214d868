"""Observability libraries the built-in plugins build on.

* Prometheus: ``GatewayCollector`` reads component state (rate limits,
  breakers, health, discovery, JWKS) at scrape time; ``MetricsEndpoint``
  serves the exposition for ASGI and WSGI, multiprocess mode included.  The
  ``prometheus`` plugin (``gatekeep.plugins.prometheus``) records per-request
  metrics and attaches both; ``counter_values`` and ``histogram_values`` let it
  (or any plugin) add to a child's values in place, without a call or a lock.
* W3C Trace Context: ``TraceContext``, ``parse_traceparent`` and
  ``format_traceparent``, used by the ``tracing`` plugin
  (``gatekeep.plugins.tracing``) and third-party tracers.

The ``access-log`` plugin (``gatekeep.plugins.access_log``) needs no library.
"""

from __future__ import annotations

from ._cells import counter_values, histogram_values
from ._collectors import BREAKER_STATES, GatewayCollector
from ._exposition import MetricsEndpoint, multiprocess_dir
from ._trace_context import (
    SAMPLED,
    TRACEPARENT,
    TRACESTATE,
    TRACESTATE_MAX,
    TraceContext,
    format_traceparent,
    new_span_id,
    new_trace_id,
    parse_traceparent,
)

__all__ = [
    "BREAKER_STATES",
    "SAMPLED",
    "TRACEPARENT",
    "TRACESTATE",
    "TRACESTATE_MAX",
    "GatewayCollector",
    "MetricsEndpoint",
    "TraceContext",
    "counter_values",
    "format_traceparent",
    "histogram_values",
    "multiprocess_dir",
    "new_span_id",
    "new_trace_id",
    "parse_traceparent",
]
