"""``otel``: OpenTelemetry traces for gatekeep.

One SERVER span per request (``GET /orders/{id}``) with the HTTP semantic
conventions' attributes, an ``upstream`` CLIENT span for the call to the
instance, W3C trace context continued from the caller and passed on to the
upstream, exported over OTLP/HTTP from the gateway's task group.  See
``_filter.py`` for the theory of operation and the README for the config.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._config import OtelConfig  # noqa: E402
from ._export import TaskGroupBatcher  # noqa: E402
from ._filter import STATE_KEY, UPSTREAM_SPAN, OtelFilter, Plan  # noqa: E402

__all__ = ["STATE_KEY", "UPSTREAM_SPAN", "OtelConfig", "OtelFilter", "Plan", "TaskGroupBatcher"]
