"""The cyclic garbage collector, tuned once per process for a server's allocation pattern.

Theory of operation
-------------------

CPython starts a young (generation 0) collection when the objects the GC
tracks that were allocated since the last one, less those freed, pass
``threshold0`` (700 by default).  The count never goes below zero, so a burst
of allocations that is freed later still counts.  A gateway makes such bursts
by design: the requests resumed together (say the 17 whose rate-limit replies
came in one read) each build their request, headers and filter state before
any of them finishes.  Under the proxy benchmark's full pipeline that crossed
700 about 180 times a second.  Each collection walks every young object still
alive, which is the in-flight requests' state, not garbage: ~80 µs each, about
1.2 µs per request.  With ``threshold0`` at 2,000 the same load runs no young
collection after start-up (docs/benchmarks.md, "Sixth pass").

What this does not change: objects are still freed by reference counting the
moment they are dropped; only cyclic garbage waits longer, ~2,000 tracked
allocations at most before a young collection finds it.  Not higher: garbage
cycles can hold large buffers.  Under uvicorn with permessage-deflate, each
closed WebSocket leaves cycles holding its zlib state; at 5,000 or 10,000 a
second thousand sockets found the first thousand's still uncollected (RSS
+42 MiB; ``tests/test_websocket_serving.py``), at 2,000 it did not.

``freeze`` moves every object made during start-up (modules, config,
compiled routes) to a permanent generation, so full collections skip them.

Both happen once per process, when its first gateway starts (``tune``), so
gateways started later (tests, reloads) leave the threshold as the first
one set it (a later gateway may still freeze, if the first did not).  An
application that chose a higher threshold, or turned automatic collection off
(``threshold0 = 0``), keeps its choice.
"""

from __future__ import annotations

import gc

__all__ = ["tune"]

_thresholded = False
_frozen = False


def tune(*, threshold: int, freeze: bool) -> None:
    """Raise ``threshold0`` to ``threshold`` (0: leave it) and ``gc.freeze()``, each once per process."""
    global _thresholded, _frozen
    if not _thresholded:
        _thresholded = True  # the first gateway decides, even to leave it
        young, *older = gc.get_threshold()
        if 0 < young < threshold:
            gc.set_threshold(threshold, *older)
    if freeze and not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()
