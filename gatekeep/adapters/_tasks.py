"""A request's task and its cancellation, shared by the ASGI and native adapters."""

from __future__ import annotations

import asyncio
from typing import Any

from .._errors import ClientClosedRequest

__all__ = ["ClientDisconnected", "TaskCancel"]


class ClientDisconnected(ClientClosedRequest):
    """The client went away before its request body was read."""


class TaskCancel:
    """What ``anyio.CancelScope`` does for one request, at a fraction of its cost, on asyncio.

    ``cancel()`` cancels the request's task; leaving the ``with`` block
    swallows that one cancellation (and only that one: a server shutting
    the task down still gets its ``CancelledError``).
    """

    __slots__ = ("cancel_called", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.cancel_called = False

    def cancel(self) -> None:
        if not self.cancel_called:
            self.cancel_called = True
            self.task.cancel()

    def __enter__(self) -> TaskCancel:
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        if self.cancel_called and self.task.uncancel() == 0 and isinstance(exc, asyncio.CancelledError):
            return True  # our own cancellation, nobody else's: the request just ends
        return False
