"""Export finished spans in batches from the gateway's task group.

The SDK's own ``BatchSpanProcessor`` runs a thread of its own; gatekeep
keeps background work in the task group the gateway's lifespan owns.
``TaskGroupBatcher`` queues spans as they end (on the event loop, an
append) and one task exports them every ``delay`` seconds, or as soon as a
full batch is waiting (the SDK's ``OTEL_BSP_*`` variables set both).
Exporters block (the OTLP/HTTP one posts with ``requests`` and retries with
backoff), so each export runs in a worker thread and the event loop never
waits for a collector.  The queue is bounded: when the collector cannot keep
up, new spans are dropped and counted, never buffered without limit.
``stop`` exports what is left, within a time limit.
"""

from __future__ import annotations

import logging
from collections import deque

import anyio
from anyio.abc import TaskGroup, TaskStatus
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["TaskGroupBatcher"]

log = logging.getLogger("gatekeep_otel")


class TaskGroupBatcher(SpanProcessor):
    """A span processor whose exports run in a task of the gateway's task group.

    Args:
        exporter: where batches go (its ``export`` may block; it runs in a thread).
        max_queue: spans waiting at most; more are dropped (``dropped`` counts them).
        max_batch: spans per ``export`` call.
        delay: seconds between exports when no full batch is waiting.
        flush_timeout: seconds ``stop`` may spend exporting what is left.
    """

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        max_queue: int = 2048,
        max_batch: int = 512,
        delay: float = 5.0,
        flush_timeout: float = 30.0,
    ) -> None:
        self.exporter = exporter
        self.dropped = 0
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._delay = delay
        self._flush_timeout = flush_timeout
        self._queue: deque[ReadableSpan] = deque()
        self._wake: anyio.Event | None = None
        self._scope: anyio.CancelScope | None = None
        self._done: anyio.Event | None = None

    @property
    def queued(self) -> int:
        """Spans ended but not exported yet."""
        return len(self._queue)

    def on_end(self, span: ReadableSpan) -> None:
        if len(self._queue) >= self._max_queue:
            self.dropped += 1
            return
        self._queue.append(span)
        if len(self._queue) >= self._max_batch and self._wake is not None:
            self._wake.set()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        # Synchronous callers cannot wait for the task; ``flush`` is the async way.
        return not self._queue

    async def start(self, task_group: TaskGroup) -> None:
        await task_group.start(self._run)

    async def _run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._done = done = anyio.Event()
        try:
            with anyio.CancelScope() as self._scope:
                task_status.started()
                while True:
                    self._wake = wake = anyio.Event()
                    with anyio.move_on_after(self._delay):
                        await wake.wait()
                    await self.flush()
        finally:
            self._wake = None
            done.set()

    async def flush(self) -> None:
        """Export every span queued so far."""
        while self._queue:
            count = min(len(self._queue), self._max_batch)
            batch = [self._queue.popleft() for _ in range(count)]
            try:
                # Not abandoned on cancellation: the batch is either sent or failed.
                await anyio.to_thread.run_sync(self.exporter.export, batch)
            except Exception:
                log.exception("exporting %d spans failed", len(batch))

    async def stop(self) -> None:
        """Stop the export task, export what is left (bounded), shut the exporter down."""
        if self._scope is not None:
            self._scope.cancel()
            if self._done is not None:
                await self._done.wait()
            self._scope = None
        with anyio.move_on_after(self._flush_timeout, shield=True) as scope:
            await self.flush()
        if scope.cancelled_caught:
            log.warning("%d spans were not exported within %.1f s", len(self._queue), self._flush_timeout)
        await anyio.to_thread.run_sync(self.exporter.shutdown)
