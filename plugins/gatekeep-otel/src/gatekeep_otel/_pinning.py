"""Span ids and sampling decided in the request phase, used in the log phase.

The gateway learns a request's exact start and end only in the log phase
(``Exchange.start``/``end``), but the upstream must be told the trace
context (``traceparent``) in the request phase, before the spans exist.  So
the filter decides the ids and the sampling decision early, sends them
upstream, and creates the spans with the SDK afterwards, with their real
timestamps.  These two SDK extension points make the SDK use the decided
values: while a ``Pin`` is set (only around a synchronous ``start_span``
call) the id generator returns its ids and the sampler its decision;
otherwise they behave like the SDK's defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar

import attrs
from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

__all__ = ["Pin", "PinnedIds", "PinnedSampler", "pinned"]


@attrs.frozen(slots=True)
class Pin:
    """The ids of the next span (``trace_id`` is used only for a root span)."""

    trace_id: int
    span_id: int
    trace_state: TraceState | None


pinned: ContextVar[Pin | None] = ContextVar("gatekeep_otel_pinned", default=None)


class PinnedIds(IdGenerator):
    """Random ids, except for the span being created under a ``Pin``."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        pin = pinned.get()
        return pin.span_id if pin is not None else self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        pin = pinned.get()
        return pin.trace_id if pin is not None else self._random.generate_trace_id()

    def is_trace_id_random(self) -> bool:
        # Trace ids come from the random generator or from a caller's (or the
        # tracing filter's) traceparent, which are random too.
        return True


class PinnedSampler(Sampler):
    """``delegate``'s decisions, except "record and sample" under a ``Pin``.

    Spans are only created under a pin for requests that were sampled in
    the request phase, so a pin always means "sampled".
    """

    def __init__(self, delegate: Sampler) -> None:
        self.delegate = delegate

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        pin = pinned.get()
        if pin is None:
            return self.delegate.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, pin.trace_state)

    def get_description(self) -> str:
        return f"Pinned{{{self.delegate.get_description()}}}"
