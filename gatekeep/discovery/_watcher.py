"""What the Consul and DNS watchers share: the published instance set and a
background loop on the gateway's lifespan task group that ``stop`` ends.

``start`` returns after the first lookup, or after ``initial_timeout`` seconds
when the source hangs: a gateway must not wait on a stuck Consul or
nameserver.  Until the first lookup succeeds the watcher is ``pending``, and
the gateway answers 503 with ``Retry-After`` for its service.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import anyio
from anyio.abc import TaskGroup, TaskStatus

from .._protocols import Instance

__all__ = ["Watcher"]

log = logging.getLogger("gatekeep.discovery")


class Watcher:
    """Base of a discovery watcher: subclasses implement ``_loop`` and set ``answered``."""

    source = "discovery"
    service = ""
    # Seconds ``start`` waits for the first lookup; ``None``: until it ends, however long.
    initial_timeout: float | None = None

    def __init__(self) -> None:
        self._instances: tuple[Instance, ...] = ()
        self._scope: anyio.CancelScope | None = None
        self._stopped: anyio.Event | None = None
        self.answered = False

    def instances(self, service: str) -> Sequence[Instance]:
        return self._instances

    def pending(self, service: str) -> bool:
        """Whether no lookup has succeeded yet (so an empty set means "not known yet")."""
        return not self.answered

    async def start(self, task_group: TaskGroup) -> None:
        """Start watching; return after the first lookup (or its failure), at most ``initial_timeout``."""
        tried = anyio.Event()
        await task_group.start(self._run, tried)
        with anyio.move_on_after(self.initial_timeout):
            await tried.wait()
        if not tried.is_set():
            log.warning(
                "%s discovery for %r: no answer within %g s; starting without it, "
                "answering 503 for the service until it answers",
                self.source,
                self.service,
                self.initial_timeout,
            )

    async def stop(self) -> None:
        """Stop watching.  Idempotent."""
        if self._scope is not None:
            self._scope.cancel()
            if self._stopped is not None:
                await self._stopped.wait()
            self._scope = None

    async def _run(
        self, tried: anyio.Event, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self._stopped = anyio.Event()
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                task_status.started()
                await self._loop(tried.set)
        finally:
            self._stopped.set()

    async def _loop(self, started: Callable[[], None]) -> None:
        """Watch until cancelled; call ``started`` once after the first attempt."""
        raise NotImplementedError
