"""W3C Trace Context: ``traceparent`` parsed and formatted, ids made.

The ``tracing`` plugin (``gatekeep.plugins.tracing``) keeps one
``TraceContext`` per request in ``request.state["trace"]``; third-party
plugins (the OpenTelemetry one) read it from there.  Parsing is strict, as
the W3C Trace Context recommendation defines it: lower-case hex only, no
all-zero ids, version ``ff`` refused, version ``00`` exactly 55 characters,
later versions parsed by their first four fields.
"""

from __future__ import annotations

import os

import attrs

__all__ = [
    "SAMPLED",
    "TRACEPARENT",
    "TRACESTATE",
    "TRACESTATE_MAX",
    "TraceContext",
    "format_traceparent",
    "new_span_id",
    "new_trace_id",
    "parse_traceparent",
]

TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"
_HEX = b"0123456789abcdef"
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16
SAMPLED = 0x01
# Longest tracestate passed on: 32 members of at most 256 characters, plus commas.
TRACESTATE_MAX = 8192


@attrs.frozen(slots=True)
class TraceContext:
    """One hop of a trace.

    ``parent_id`` is the caller's span id (empty when the trace starts at the
    gateway); ``span_id`` is the gateway's own span, the parent of the
    upstream's.
    """

    trace_id: str
    span_id: str
    parent_id: str = ""
    flags: int = SAMPLED
    tracestate: bytes = b""

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    @property
    def traceparent(self) -> bytes:
        """The ``traceparent`` to send on (version 00, the gateway's span as the parent)."""
        return format_traceparent(self.trace_id, self.span_id, self.flags)


def _is_hex(value: bytes) -> bool:
    # Deleting every lower-case hex digit leaves nothing: C speed, no regex.
    return not value.translate(None, _HEX)


def parse_traceparent(value: bytes) -> tuple[str, str, int] | None:
    """``(trace_id, parent_id, flags)`` of a valid ``traceparent``, else ``None``."""
    if len(value) < 55:
        return None
    version = value[:2]
    if not _is_hex(version) or version == b"ff":
        return None
    if version == b"00":
        if len(value) != 55:
            return None
    elif len(value) > 55 and value[55:56] != b"-":
        return None
    if value[2:3] != b"-" or value[35:36] != b"-" or value[52:53] != b"-":
        return None
    trace_id, parent_id, flags = value[3:35], value[36:52], value[53:55]
    if not (_is_hex(trace_id) and _is_hex(parent_id) and _is_hex(flags)):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id.decode("ascii"), parent_id.decode("ascii"), int(flags, 16)


def format_traceparent(trace_id: str, span_id: str, flags: int) -> bytes:
    return f"00-{trace_id}-{span_id}-{flags & 0xFF:02x}".encode("ascii")


def new_trace_id() -> str:
    while True:
        value = os.urandom(16)
        if any(value):
            return value.hex()


def new_span_id() -> str:
    while True:
        value = os.urandom(8)
        if any(value):
            return value.hex()
