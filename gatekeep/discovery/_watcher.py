"""What the Consul and DNS watchers share: the published instance set and a
background loop on the gateway's lifespan task group that ``stop`` ends."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import anyio
from anyio.abc import TaskGroup, TaskStatus

from .._protocols import Instance

__all__ = ["Watcher"]


class Watcher:
    """Base of a discovery watcher: subclasses implement ``_loop``."""

    def __init__(self) -> None:
        self._instances: tuple[Instance, ...] = ()
        self._scope: anyio.CancelScope | None = None
        self._stopped: anyio.Event | None = None

    def instances(self, service: str) -> Sequence[Instance]:
        return self._instances

    async def start(self, task_group: TaskGroup) -> None:
        """Start watching; returns after the first answer (or the first failure)."""
        await task_group.start(self._run)

    async def stop(self) -> None:
        """Stop watching.  Idempotent."""
        if self._scope is not None:
            self._scope.cancel()
            if self._stopped is not None:
                await self._stopped.wait()
            self._scope = None

    async def _run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._stopped = anyio.Event()
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                await self._loop(task_status.started)
        finally:
            self._stopped.set()

    async def _loop(self, started: Callable[[], None]) -> None:
        """Watch until cancelled; call ``started`` once after the first attempt."""
        raise NotImplementedError
