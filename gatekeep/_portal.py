"""An event loop in a thread of its own, for blocking (WSGI) callers of async code.

WSGI servers call from threads that have no event loop; gatekeep's core is
async.  ``LifespanPortal`` starts one anyio blocking portal on first use and,
inside it, holds one async context open (the gateway's lifespan, a JWT
verifier's background refresh ...) until ``close()``.  The context must be
entered and left by one task, so it runs as a task of its own that waits for
a stop event; callers run coroutines through ``portal.call``.
"""

from __future__ import annotations

import atexit
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread

__all__ = ["LifespanPortal"]


class LifespanPortal:
    """A lazily started blocking portal that holds ``lifespan()`` open while it runs.

    Args:
        lifespan: makes the async context to hold (called once, in the portal's loop).
        close_at_exit: also ``close()`` at interpreter exit (a server that never calls it).
    """

    def __init__(
        self, lifespan: Callable[[], AbstractAsyncContextManager[Any]], *, close_at_exit: bool = False
    ) -> None:
        self._lifespan = lifespan
        self._close_at_exit = close_at_exit
        self._lock = threading.Lock()
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._portal_cm: AbstractContextManager[anyio.from_thread.BlockingPortal] | None = None
        self._held: Future[None] | None = None
        self._stop: anyio.Event | None = None

    @property
    def started(self) -> bool:
        return self._portal is not None

    @property
    def running(self) -> anyio.from_thread.BlockingPortal | None:
        """The portal if it runs now (never starts it): for clean-ups after ``close()``."""
        return self._portal

    @property
    def portal(self) -> anyio.from_thread.BlockingPortal:
        """The portal, started (and the lifespan entered) on first use."""
        portal = self._portal
        if portal is not None:
            return portal
        with self._lock:
            if self._portal is None:
                cm = anyio.from_thread.start_blocking_portal("asyncio")
                portal = cm.__enter__()
                try:
                    self._held, self._stop = portal.start_task(self._hold)
                except BaseException:
                    cm.__exit__(*sys.exc_info())
                    raise
                self._portal_cm = cm
                self._portal = portal
                if self._close_at_exit:
                    atexit.register(self.close)
            return self._portal

    def close(self) -> None:
        """Leave the lifespan and stop the event loop thread (if it was started)."""
        with self._lock:
            portal, cm = self._portal, self._portal_cm
            held, stop = self._held, self._stop
            self._portal = self._portal_cm = None
            self._held = self._stop = None
        if portal is None or cm is None or held is None or stop is None:
            return
        try:
            portal.call(stop.set)
            held.result()
        finally:
            cm.__exit__(None, None, None)
            if self._close_at_exit:
                atexit.unregister(self.close)

    async def _hold(self, *, task_status: anyio.abc.TaskStatus[anyio.Event]) -> None:
        stop = anyio.Event()
        async with self._lifespan():
            task_status.started(stop)
            await stop.wait()
