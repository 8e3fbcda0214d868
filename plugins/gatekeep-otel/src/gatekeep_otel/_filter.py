"""The ``otel`` filter: OpenTelemetry spans for the requests gatekeep serves.

Theory of operation
-------------------

Request phase (priority 99 999, right after ``tracing``):

1. The parent context is the caller's W3C ``traceparent``/``tracestate``,
   read with OpenTelemetry's own propagator, or, when the ``tracing`` filter
   ran first, the context it settled on (so its ``trust_incoming = false``
   is honoured and the access log's trace id is the span's).
2. The ids of both spans (SERVER for the request, CLIENT ``upstream`` for
   the call to the instance) and the sampling decision are fixed now
   (parent-based, ``sample_ratio`` for traces that start here).
3. The upstream request gets a ``traceparent`` naming the ``upstream`` span
   as parent: the upstream's own spans hang under the gateway's call to it,
   as with any instrumented HTTP client.  Unsampled requests propagate too
   (sampled flag off), so a trace stays one trace across services.

Log phase (after the last byte): the spans are created with the SDK and
ended with the exact ``Exchange`` timings (``start``/``end`` and
``upstream_start``/``upstream_end``, ``perf_counter`` readings converted
to epoch nanoseconds with one offset per request, so durations are
exact), then handed to the exporter.  Nothing of the SDK's span machinery
runs on the request path, and an unsampled request costs one dict lookup
in the log phase.

Requests that never reached the request phase (404/405 from the router, or
an answer by a filter that runs earlier) still get a SERVER span in the log
phase, without ``http.route``.  The gateway's own endpoints that skip global
filters (a ``/metrics`` scrape) get none.

Attributes follow OpenTelemetry's HTTP semantic conventions: span status
ERROR for 5xx on the SERVER span (4xx stay unset there, as the conventions
require), for 4xx/5xx answers and connection failures or timeouts on the
``upstream`` CLIENT span; ``error.type`` is the status code, or the
exception (``gatekeep.UpstreamTimeout`` ...) when the gateway made the answer.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TYPE_CHECKING, ClassVar

import attrs
import gatekeep
from gatekeep import BasePlugin, Exchange, Headers, Request, Response, UpstreamError
from gatekeep.observability import TraceContext
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, TraceIdRatioBased
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import AttributeValue

from ._config import OtelConfig
from ._export import TaskGroupBatcher
from ._pinning import Pin, PinnedIds, PinnedSampler, pinned

if TYPE_CHECKING:
    from anyio.abc import TaskGroup
    from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["OtelFilter"]

log = logging.getLogger("gatekeep_otel")

# request.state key of the request phase's decisions.
STATE_KEY = "gatekeep_otel"
_TRACEPARENT = b"traceparent"
_TRACESTATE = b"tracestate"
_SAMPLED = int(TraceFlags.SAMPLED)
# The methods the HTTP conventions name; any other is reported as "_OTHER".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
UPSTREAM_SPAN = "upstream"


class _HeadersGetter(Getter[Headers]):
    """Reads gatekeep's byte headers for OpenTelemetry's propagators."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        values = carrier.get_all(key.encode("latin-1"))
        return [v.decode("latin-1") for v in values] if values else None

    def keys(self, carrier: Headers) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier.raw]


_GETTER = _HeadersGetter()


@attrs.define(slots=True)
class Plan:
    """What the request phase decided, for the log phase."""

    name: str
    route: str | None
    parent: Context | None
    trace_id: int
    span_id: int
    upstream_span_id: int
    flags: int
    trace_state: TraceState | None

    @property
    def sampled(self) -> bool:
        return bool(self.flags & _SAMPLED)


class OtelFilter(BasePlugin[OtelConfig]):
    """One SERVER span per request and an ``upstream`` CLIENT span; see the module docstring.

    Args:
        config: the plugin's config.
        exporter: export to this ``SpanExporter`` instead of the configured one
            (for exporters the config does not name: gRPC, Zipkin ...).
    """

    name: ClassVar[str] = "otel"
    # Just below ``tracing`` (100 000), so it sees the context that filter chose.
    priority: ClassVar[int] = 99999
    config: OtelConfig

    def __init__(self, config: OtelConfig | None = None, *, exporter: SpanExporter | None = None) -> None:
        super().__init__(config)
        c = self.config
        self._propagator = TraceContextTextMapPropagator()
        self._ids = PinnedIds()
        self._sampler = ParentBased(TraceIdRatioBased(c.sample_ratio))
        self.batcher: TaskGroupBatcher | None = None
        processor: SpanProcessor
        if exporter is None and c.exporter == "none":
            self.exporter: SpanExporter = InMemorySpanExporter()
            processor = SimpleSpanProcessor(self.exporter)
        else:
            self.exporter = exporter if exporter is not None else _configured_exporter(c)
            processor = self.batcher = TaskGroupBatcher(
                self.exporter,
                # The batch span processor's standard variables, with the spec's defaults.
                max_queue=_env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048),
                max_batch=_env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512),
                delay=_env_int("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000,
                flush_timeout=_env_int("OTEL_BSP_EXPORT_TIMEOUT", 30000) / 1000,
            )
        self.provider = TracerProvider(
            sampler=PinnedSampler(self._sampler),
            resource=Resource.create({"service.name": c.service_name}),
            shutdown_on_exit=False,
            id_generator=self._ids,
        )
        self.provider.add_span_processor(processor)
        self._tracer = self.provider.get_tracer("gatekeep_otel", _version())
        self._context: gatekeep.PluginContext | None = None

    def finished_spans(self) -> tuple[ReadableSpan, ...]:
        """The spans kept by ``exporter = "none"`` (for tests)."""
        if not isinstance(self.exporter, InMemorySpanExporter):
            raise TypeError(f"spans are kept in memory only with exporter = 'none', not {self.exporter!r}")
        return self.exporter.get_finished_spans()

    # -- lifespan ---------------------------------------------------------------

    def bind(self, context: gatekeep.PluginContext) -> None:
        self._context = context

    async def start(self, task_group: TaskGroup) -> None:
        if self.batcher is not None:
            await self.batcher.start(task_group)

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()

    # -- request phase ------------------------------------------------------------

    def plan(self, request: Request) -> Plan:
        """Span name, parent, ids and sampling decision for ``request``."""
        method = request.method
        label = method if method in _METHODS else "HTTP"
        route = request.route
        template: str | None = None
        if route is not None:
            paths = route.paths
            template = paths[0] if len(paths) == 1 else None
            name = f"{label} {template or route.name}"
        else:
            name = label
        parent, trace_id, parent_flags = self._parent(request)
        result = self._sampler.should_sample(parent, trace_id, name, SpanKind.SERVER)
        # Flags other than "sampled" (W3C level 2's random-trace-id) go on with the trace id.
        flags = (parent_flags & ~_SAMPLED) | (
            _SAMPLED if result.decision is Decision.RECORD_AND_SAMPLE else 0
        )
        ids = self._ids
        return Plan(
            name,
            template,
            parent,
            trace_id,
            ids.generate_span_id(),
            ids.generate_span_id(),
            flags,
            result.trace_state,
        )

    def _parent(self, request: Request) -> tuple[Context | None, int, int]:
        trace = request.state.get("trace")
        if isinstance(trace, TraceContext):
            # The tracing filter already chose: continue the caller's trace or its new one.
            trace_id = int(trace.trace_id, 16)
            if not trace.parent_id:
                return None, trace_id, 0
            state = TraceState.from_header([trace.tracestate.decode("latin-1")]) if trace.tracestate else None
            remote = SpanContext(
                trace_id,
                int(trace.parent_id, 16),
                is_remote=True,
                trace_flags=TraceFlags(trace.flags),
                trace_state=state,
            )
            return set_span_in_context(NonRecordingSpan(remote)), trace_id, trace.flags
        context = self._propagator.extract(request.headers, getter=_GETTER)
        remote = get_current_span(context).get_span_context()
        if remote.is_valid:
            return context, remote.trace_id, int(remote.trace_flags)
        return None, self._ids.generate_trace_id(), 0

    async def on_request(self, request: Request) -> Response | None:
        plan = self.plan(request)
        request.state[STATE_KEY] = plan
        # What TraceContextTextMapPropagator.inject writes, without building a
        # span and a context for it on the request path.
        carrier = [
            (_TRACEPARENT, b"00-%032x-%016x-%02x" % (plan.trace_id, plan.upstream_span_id, plan.flags))
        ]
        if plan.trace_state:
            carrier.append((_TRACESTATE, plan.trace_state.to_header().encode("latin-1")))
        headers = request.headers
        raw = [(k, v) for k, v in headers.raw if k != _TRACEPARENT and k != _TRACESTATE]
        raw += carrier
        headers.raw = raw
        trace = request.state.get("trace")
        if isinstance(trace, TraceContext):
            # Keep the tracing filter's view (access log, echo_downstream) in step.
            request.state["trace"] = attrs.evolve(
                trace, span_id=f"{plan.span_id:016x}", flags=plan.flags & _SAMPLED
            )
        return None

    # -- log phase ----------------------------------------------------------------

    def _skipped(self, request: Request) -> bool:
        """A gateway endpoint that runs without global filters (a /metrics scrape)."""
        context = self._context
        if context is None or request.route is not None:
            return False
        endpoint = context.endpoints.get(request.path)
        return endpoint is not None and not endpoint.run_global_filters

    async def on_log(self, exchange: Exchange) -> None:
        request = exchange.request
        plan: Plan | None = request.state.get(STATE_KEY)
        if plan is None:
            if self._skipped(request):
                return
            plan = self.plan(request)
        if not plan.sampled:
            return
        # One offset per request: durations are exactly the perf_counter ones.
        offset = time.time_ns() - time.perf_counter_ns()
        end = exchange.end or time.perf_counter()
        status = exchange.status
        error = exchange.error
        upstream_failed = isinstance(error, UpstreamError)

        attributes = self._server_attributes(request, exchange, plan)
        token = pinned.set(Pin(plan.trace_id, plan.span_id, plan.trace_state))
        try:
            span = self._tracer.start_span(
                plan.name,
                context=plan.parent,
                kind=SpanKind.SERVER,
                attributes=attributes,
                start_time=offset + int(exchange.start * 1e9),
            )
        finally:
            pinned.reset(token)
        if status >= 500 or (error is not None and not status):
            error_type = _error_type(error) if error is not None else str(status)
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR))
            if error is not None and not upstream_failed:
                span.record_exception(error, timestamp=offset + int(end * 1e9))

        if exchange.upstream_start:
            self._upstream_span(exchange, plan, span, offset, end)
        span.end(end_time=offset + int(end * 1e9))

    def _upstream_span(self, exchange: Exchange, plan: Plan, server: Span, offset: int, end: float) -> None:
        request = exchange.request
        instance = exchange.instance
        attributes: dict[str, AttributeValue] = {"http.request.method": _method(request.method)}
        if request.method not in _METHODS:
            attributes["http.request.method_original"] = request.method
        if instance is not None:
            attributes["server.address"] = instance.host
            attributes["server.port"] = instance.port
            attributes["url.scheme"] = instance.scheme
            if instance.id:
                attributes["gatekeep.instance"] = instance.id
        status = exchange.status
        answered = exchange.source == "service"
        if answered and status:
            attributes["http.response.status_code"] = status
        token = pinned.set(Pin(plan.trace_id, plan.upstream_span_id, plan.trace_state))
        try:
            span = self._tracer.start_span(
                UPSTREAM_SPAN,
                context=set_span_in_context(server),
                kind=SpanKind.CLIENT,
                attributes=attributes,
                start_time=offset + int(exchange.upstream_start * 1e9),
            )
        finally:
            pinned.reset(token)
        # The upstream body is released just after the last byte went out; a child
        # span does not outlast its parent.
        upstream_end = min(exchange.upstream_end or end, end)
        error = exchange.error
        if answered and status >= 400:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))
        elif isinstance(error, UpstreamError):
            span.set_attribute("error.type", _error_type(error))
            span.set_status(Status(StatusCode.ERROR, str(error) or None))
            span.record_exception(error, timestamp=offset + int(upstream_end * 1e9))
        span.end(end_time=offset + int(upstream_end * 1e9))

    def _server_attributes(
        self, request: Request, exchange: Exchange, plan: Plan
    ) -> dict[str, AttributeValue]:
        method = request.method
        attributes: dict[str, AttributeValue] = {
            "http.request.method": _method(method),
            "url.path": request.path or request.raw_path.decode("latin-1"),
            "url.scheme": request.scheme,
            "network.protocol.version": request.http_version,
        }
        if method not in _METHODS:
            attributes["http.request.method_original"] = method
        if plan.route is not None:
            attributes["http.route"] = plan.route
        if exchange.status:
            attributes["http.response.status_code"] = exchange.status
        if request.host:
            attributes["server.address"] = request.host
        if request.server is not None and request.server[1] is not None:
            attributes["server.port"] = request.server[1]
        if request.client is not None:
            attributes["client.address"] = request.client[0]
        agent = request.headers.get(b"user-agent")
        if agent is not None:
            attributes["user_agent.original"] = agent.decode("latin-1")
        if exchange.bytes_in:
            attributes["http.request.body.size"] = exchange.bytes_in
        attributes["http.response.body.size"] = exchange.bytes_out
        route = request.route
        if route is not None:
            attributes["gatekeep.route"] = route.name
        service = request.service
        if service is not None:
            attributes["gatekeep.service"] = service.name
        consumer = request.consumer_name
        if consumer is not None:
            attributes["gatekeep.consumer"] = consumer
        attributes["gatekeep.source"] = exchange.source
        if request.request_id:
            attributes["gatekeep.request_id"] = request.request_id
        return attributes


def _configured_exporter(config: OtelConfig) -> SpanExporter:
    if config.exporter == "console":
        # sys.stdout as it is now (the SDK's default is the one at its import).
        return ConsoleSpanExporter(service_name=config.service_name, out=sys.stdout)
    # Imported here: the protobuf/requests stack loads only when it is used.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=config.endpoint, headers=dict(config.headers) or None)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        log.warning("%s=%r is not a positive integer; using %d", name, text, default)
        return default
    return value


def _method(method: str) -> str:
    return method if method in _METHODS else "_OTHER"


_error_types: dict[type[BaseException], str] = {}


def _error_type(error: BaseException) -> str:
    """The exception's canonical name: ``gatekeep.UpstreamTimeout``, ``builtins.ValueError`` ..."""
    cls = type(error)
    found = _error_types.get(cls)
    if found is None:
        name = cls.__qualname__
        if cls.__module__.startswith("gatekeep.") and getattr(gatekeep, name, None) is cls:
            found = f"gatekeep.{name}"  # the public name, not the private module
        else:
            found = f"{cls.__module__}.{name}"
        _error_types[cls] = found
    return found


def _version() -> str:
    from . import __version__

    return __version__
