"""``tracing``: W3C Trace Context (``traceparent``/``tracestate``) through the gateway.

The gateway is one hop of a trace.  For each request it

* keeps the client's trace when its ``traceparent`` is valid (strictly, as
  the W3C Trace Context recommendation defines it: lower-case hex only,
  no all-zero ids, version ``ff`` refused, version ``00`` exactly 55
  characters, later versions parsed by their first four fields), and
  forwards ``tracestate`` unchanged with it;
* starts a new trace otherwise (absent, invalid, or repeated header; with
  ``trust_incoming = false`` always) and drops ``tracestate``, which must not
  outlive the ``traceparent`` it belongs to;
* sends the upstream a ``traceparent`` whose parent id is a new span id for
  this hop, so the upstream's spans hang under the gateway's.

The context is kept in ``request.state["trace"]`` (a ``TraceContext``) for
the access log and for other filters.
"""

from __future__ import annotations

import os
import random
from typing import Any, ClassVar

import attrs

from .._filter import BaseFilter
from .._http import Request, Response

__all__ = ["TraceContext", "TracingConfig", "TracingFilter", "format_traceparent", "parse_traceparent"]

TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"
_HEX = b"0123456789abcdef"
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16
SAMPLED = 0x01
# Longest tracestate passed on: 32 members of at most 256 characters, plus commas.
_TRACESTATE_MAX = 8192


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


def _ratio(_: object, attribute: Any, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be between 0 and 1, got {value}")


@attrs.frozen
class TracingConfig:
    # Share of traces started here marked sampled (the flag downstream tracers honour).
    sample_ratio: float = attrs.field(default=1.0, validator=_ratio)
    # False at an edge that should not let clients choose trace ids.
    trust_incoming: bool = True
    # Send the gateway's traceparent back to the client too.
    echo_downstream: bool = False


class TracingFilter(BaseFilter):
    """Propagates W3C trace context upstream; see the module docstring."""

    name: ClassVar[str] = "tracing"
    # Right after correlation-id, so even requests refused by auth carry a trace id.
    priority: ClassVar[int] = 100000
    Config = TracingConfig

    def __init__(self, config: TracingConfig | None = None) -> None:
        super().__init__(config)
        c: TracingConfig = self.config
        self._trust = c.trust_incoming
        self._ratio = c.sample_ratio
        self._echo = c.echo_downstream

    def context_for(self, request: Request) -> TraceContext:
        """The trace context of this hop (continuing the client's trace when valid)."""
        parsed = None
        tracestate = b""
        if self._trust:
            parent: bytes | None = None
            states: list[bytes] = []
            repeated = False
            for k, v in request.headers.raw:
                if k == TRACEPARENT:
                    repeated = parent is not None
                    parent = v
                elif k == TRACESTATE:
                    states.append(v)
            if parent is not None and not repeated:
                parsed = parse_traceparent(parent)
            if parsed is not None and states:
                tracestate = b",".join(states)
                if len(tracestate) > _TRACESTATE_MAX or not all(32 <= c < 127 for c in tracestate):
                    tracestate = b""
        if parsed is None:
            sampled = self._ratio >= 1.0 or random.random() < self._ratio
            return TraceContext(new_trace_id(), new_span_id(), "", SAMPLED if sampled else 0)
        trace_id, parent_id, flags = parsed
        return TraceContext(trace_id, new_span_id(), parent_id, flags & SAMPLED, tracestate)

    async def on_request(self, request: Request) -> Response | None:
        context = self.context_for(request)
        request.state["trace"] = context
        headers = request.headers
        headers.raw = [(k, v) for k, v in headers.raw if k != TRACEPARENT and k != TRACESTATE]
        headers.raw.append((TRACEPARENT, context.traceparent))
        if context.tracestate:
            headers.raw.append((TRACESTATE, context.tracestate))
        return None

    async def on_response(self, request: Request, response: Response) -> Response | None:
        if self._echo:
            context = request.state.get("trace")
            if isinstance(context, TraceContext):
                response.headers.raw.append((TRACEPARENT, context.traceparent))
        return None
