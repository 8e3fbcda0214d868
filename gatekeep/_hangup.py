"""SIGHUP for everything that reloads on it (the front server's TLS certificates, the config).

asyncio keeps one handler per signal per loop: each part adding its own would
replace the other's.  ``on_hangup`` keeps a list per loop behind one handler.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

__all__ = ["on_hangup"]

log = logging.getLogger("gatekeep")

_callbacks: dict[asyncio.AbstractEventLoop, list[Callable[[], object]]] = {}


def on_hangup(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> Callable[[], None]:
    """Call ``callback`` on SIGHUP (on ``loop``, main thread only); returns the function that removes it.

    Raises:
        RuntimeError, NotImplementedError, ValueError: signals cannot be handled here.
    """
    callbacks = _callbacks.get(loop)
    if callbacks is None:
        callbacks = _callbacks[loop] = []

        def hangup() -> None:
            for cb in tuple(callbacks):  # a callback may remove itself
                try:
                    cb()
                except Exception:
                    log.exception("a SIGHUP handler failed")

        try:
            loop.add_signal_handler(signal.SIGHUP, hangup)
        except BaseException:
            del _callbacks[loop]
            raise
    callbacks.append(callback)

    def remove() -> None:
        if callback in callbacks:
            callbacks.remove(callback)
        if not callbacks and _callbacks.get(loop) is callbacks:
            del _callbacks[loop]
            try:
                loop.remove_signal_handler(signal.SIGHUP)
            except (RuntimeError, ValueError):
                pass

    return remove
