"""``access-log``: one structured JSON line per request, on stdlib ``logging``.

The line is logged on the ``gatekeep.access`` logger (configurable) after the
last byte was sent, so it never delays an answer.  Where it goes and how it
is shaped around the JSON (a file, stdout, a JSON log shipper) is the
application's logging config; the fields are also attached to the record as
``record.access`` (a dict) for handlers that build their own documents.

When the logger is not enabled for the level, the log phase is one
``isEnabledFor`` call and nothing is formatted.

Fields: ``time`` (RFC 3339, UTC), ``request_id``, ``trace_id`` (with the
``tracing`` filter), ``client_ip``, ``method``, ``path`` (normalised, without
the query string, which may carry secrets), ``status``, ``source``
(``service`` or ``gateway``), ``route``, ``service``, ``upstream`` (the
instance's address), ``consumer``, ``bytes_in``, ``bytes_out``,
``latency_ms`` (``request``, ``gateway``, ``upstream``) and ``error``.  A
WebSocket handshake gets one line when its connection ends (status 101, the
message bytes each way) with ``websocket``: ``{"code", "by"}`` of the close.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, ClassVar, Literal

import attrs

from gatekeep import BasePlugin, Exchange

__all__ = ["AccessLogConfig", "AccessLogFilter"]

_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING}


def _logger_name(_: object, attribute: Any, value: str) -> None:
    if not value or value.strip() != value:
        raise ValueError(f"must be a logger name, got {value!r}")


@attrs.frozen
class AccessLogConfig:
    logger: str = attrs.field(default="gatekeep.access", validator=_logger_name)
    level: Literal["DEBUG", "INFO", "WARNING"] = "INFO"


class AccessLogFilter(BasePlugin[AccessLogConfig]):
    """Logs one JSON line per request after its last byte."""

    name: ClassVar[str] = "access-log"
    # Kong's file-log priority: after every filter that shapes the request.
    priority: ClassVar[int] = 9

    def __init__(self, config: AccessLogConfig | None = None) -> None:
        super().__init__(config)
        c: AccessLogConfig = self.config
        self.logger = logging.getLogger(c.logger)
        self.level = _LEVELS[c.level]

    async def on_log(self, exchange: Exchange) -> None:
        if not self.logger.isEnabledFor(self.level):
            return
        fields = access_fields(exchange)
        self.logger.log(self.level, json.dumps(fields, separators=(",", ":")), extra={"access": fields})


def access_fields(exchange: Exchange) -> dict[str, Any]:
    """The access-log fields of one finished exchange."""
    request = exchange.request
    route = request.route
    service = request.service
    trace = request.state.get("trace")
    instance = exchange.instance
    total = max(0.0, exchange.end - exchange.start)
    upstream = exchange.upstream_duration
    error = exchange.error
    bytes_in = exchange.bytes_in
    if not bytes_in:
        length = request.headers.get(b"content-length")
        bytes_in = int(length) if length is not None and length.isdigit() else 0
    fields = {
        "time": _rfc3339(time.time()),
        "request_id": request.request_id,
        "trace_id": getattr(trace, "trace_id", None),
        "client_ip": request.client_ip,
        "method": request.method,
        "path": request.path,
        "status": exchange.status,
        "source": exchange.source,
        "route": getattr(route, "name", None),
        "service": getattr(service, "name", None),
        "upstream": instance.address if instance is not None else None,
        "consumer": request.consumer_name,
        "bytes_in": bytes_in,
        "bytes_out": exchange.bytes_out,
        "latency_ms": {
            "request": round(total * 1000, 3),
            "gateway": round(max(0.0, total - upstream) * 1000, 3),
            "upstream": round(upstream * 1000, 3) if exchange.upstream_start else None,
        },
        "error": type(error).__name__ if error is not None else None,
    }
    if request.websocket:
        # One line per connection, when it ended: how it closed ({"code", "by"}), or null if never opened.
        fields["websocket"] = request.state.get("websocket")
    return fields


def _rfc3339(ts: float) -> str:
    seconds = int(ts)
    millis = int((ts - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"
