"""``tracing``: W3C Trace Context (``traceparent``/``tracestate``) through the gateway.

The gateway is one hop of a trace.  For each request it

* keeps the client's trace when its ``traceparent`` is valid (strictly: see
  ``gatekeep.observability.parse_traceparent``), and forwards ``tracestate``
  unchanged with it;
* starts a new trace otherwise (absent, invalid, or repeated header; with
  ``trust_incoming = false`` always) and drops ``tracestate``, which must not
  outlive the ``traceparent`` it belongs to;
* sends the upstream a ``traceparent`` whose parent id is a new span id for
  this hop, so the upstream's spans hang under the gateway's.

The context is kept in ``request.state["trace"]`` (a ``TraceContext``) for
the access log and for other filters.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar

import attrs

from gatekeep import BasePlugin, Request, Response
from gatekeep.observability import (
    SAMPLED,
    TRACEPARENT,
    TRACESTATE,
    TRACESTATE_MAX,
    TraceContext,
    new_span_id,
    new_trace_id,
    parse_traceparent,
)

__all__ = ["TracingConfig", "TracingFilter"]


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


class TracingFilter(BasePlugin[TracingConfig]):
    """Propagates W3C trace context upstream; see the module docstring."""

    name: ClassVar[str] = "tracing"
    # Right after correlation-id, so even requests refused by auth carry a trace id.
    priority: ClassVar[int] = 100000

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
                if len(tracestate) > TRACESTATE_MAX or not all(32 <= c < 127 for c in tracestate):
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
