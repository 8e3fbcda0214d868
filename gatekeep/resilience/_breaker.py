"""A circuit breaker: a closed -> open -> half-open state machine (sans-IO).

Theory of operation
-------------------
The states and the moves between them are data (``TRANSITIONS``): a move is
``(state, event) -> state``, and any pair not in the table leaves the state
as it is.  The code only decides *which event happened*:

``trip``      (closed)     ``consecutive_failures`` failures in a row, or, over the
                           rolling ``window``, at least ``minimum_calls`` calls with a
                           failure share of ``failure_rate`` or more;
``cool``      (open)       ``open_for`` seconds passed (checked lazily by ``allow`` and
                           ``retry_after``: no timer runs);
``recover``   (half-open)  ``half_open_probes`` probes in a row succeeded;
``relapse``   (half-open)  a probe failed.

While half-open at most ``half_open_probes`` calls are in flight; a caller
that was allowed but has no outcome to report (the client went away, the
request was refused as bad) calls ``on_cancel`` to give the probe slot back.
Reports that arrive while open (calls allowed before the trip) are ignored.

Time comes from an injected monotonic clock.  ``on_change(callback)``
registers ``callback(breaker, old_state, new_state)`` for every move (the
metrics exporter turns it into ``gatekeep_breaker_state``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Final

from .._errors import CircuitOpen
from ._config import BreakerConfig
from ._window import RollingCounts

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "TRANSITIONS", "BreakerState", "CircuitBreaker", "circuit_open"]


class BreakerState:
    """A named state (compare with ``is``); ``str()`` gives its name."""

    __slots__ = ("name", "value")

    def __init__(self, name: str, value: int) -> None:
        self.name = name
        # For gauges: 0 closed, 1 half-open, 2 open.
        self.value = value

    def __repr__(self) -> str:
        return self.name.upper().replace("-", "_")

    def __str__(self) -> str:
        return self.name


CLOSED: Final = BreakerState("closed", 0)
HALF_OPEN: Final = BreakerState("half-open", 1)
OPEN: Final = BreakerState("open", 2)

TRIP: Final = "trip"
COOL: Final = "cool"
RECOVER: Final = "recover"
RELAPSE: Final = "relapse"

TRANSITIONS: Final[Mapping[tuple[BreakerState, str], BreakerState]] = {
    (CLOSED, TRIP): OPEN,
    (OPEN, COOL): HALF_OPEN,
    (HALF_OPEN, RECOVER): CLOSED,
    (HALF_OPEN, RELAPSE): OPEN,
}

_DEFAULT: Final = BreakerConfig()

ChangeCallback = Callable[["CircuitBreaker", BreakerState, BreakerState], None]


class CircuitBreaker:
    """Satisfies the ``Breaker`` protocol.

    Args:
        config: thresholds (see ``BreakerConfig``).
        clock: a monotonic clock in seconds.
        name: what it guards (``"orders"``, ``"orders/10.0.0.1:80"``), for callbacks and logs.
    """

    __slots__ = (
        "_callbacks",
        "_clock",
        "_config",
        "_reopen_at",
        "_probes",
        "_probe_successes",
        "_streak",
        "_window",
        "name",
        "st",
    )

    def __init__(
        self,
        config: BreakerConfig = _DEFAULT,
        *,
        clock: Callable[[], float] = time.monotonic,
        name: str = "",
    ) -> None:
        self._config = config
        self._clock = clock
        self.name = name
        self.st: BreakerState = CLOSED
        self._streak = 0
        self._window = RollingCounts(config.window)  # a: calls, b: failures
        self._reopen_at = 0.0  # when OPEN may turn HALF_OPEN
        self._probes = 0  # in flight while half-open
        self._probe_successes = 0
        self._callbacks: list[ChangeCallback] = []

    # -- the Breaker protocol ----------------------------------------------

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"`` (as of now)."""
        if self.st is OPEN:
            self._cool_if_due()
        return self.st.name

    def allow(self) -> bool:
        """May a call go through now?  A ``True`` must be followed by one report."""
        st = self.st
        if st is CLOSED:
            return True
        if st is OPEN and not self._cool_if_due():
            return False
        if self._probes >= self._config.half_open_probes:
            return False
        self._probes += 1
        return True

    def on_success(self) -> None:
        st = self.st
        if st is CLOSED:
            self._streak = 0
            window = self._window
            window.add(self._clock(), 1, 0)
            config = self._config
            # The rate rule holds whatever the last outcome was (a success may
            # complete the minimum number of calls).
            if window.a >= config.minimum_calls and window.b >= config.failure_rate * window.a:
                self._fire(TRIP)
        elif st is HALF_OPEN:
            self._probes = max(0, self._probes - 1)
            self._probe_successes += 1
            if self._probe_successes >= self._config.half_open_probes:
                self._fire(RECOVER)

    def on_failure(self) -> None:
        st = self.st
        if st is CLOSED:
            config = self._config
            self._streak += 1
            window = self._window
            window.add(self._clock(), 1, 1)
            if (0 < config.consecutive_failures <= self._streak) or (
                window.a >= config.minimum_calls and window.b >= config.failure_rate * window.a
            ):
                self._fire(TRIP)
        elif st is HALF_OPEN:
            self._probes = max(0, self._probes - 1)
            self._fire(RELAPSE)

    # -- beyond the protocol -----------------------------------------------

    def on_cancel(self) -> None:
        """An allowed call ended without an outcome: give its probe slot back."""
        if self.st is HALF_OPEN:
            self._probes = max(0, self._probes - 1)

    def available(self) -> bool:
        """Would ``allow`` say yes, without taking a probe slot?"""
        st = self.st
        if st is CLOSED:
            return True
        if st is OPEN and not self._cool_if_due():
            return False
        return self._probes < self._config.half_open_probes

    def retry_after(self) -> float:
        """Seconds until the breaker lets a probe through (0 unless open)."""
        if self.st is not OPEN or self._cool_if_due():
            return 0.0
        return max(0.0, self._reopen_at - self._clock())

    def on_change(self, callback: ChangeCallback) -> None:
        """Call ``callback(breaker, old, new)`` on every state change."""
        self._callbacks.append(callback)

    def stats(self) -> dict[str, float]:
        now = self._clock()
        calls, failures = self._window.totals(now)
        return {
            "state": self.st.value,
            "calls": calls,
            "failures": failures,
            "consecutive_failures": self._streak,
            "retry_after": self.retry_after(),
        }

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self.st.name}>"

    # -- internals -----------------------------------------------------------

    def _cool_if_due(self) -> bool:
        if self._clock() >= self._reopen_at:
            self._fire(COOL)
            return True
        return False

    def _fire(self, event: str) -> None:
        old = self.st
        new = TRANSITIONS.get((old, event))
        if new is None:
            return
        self.st = new
        if new is OPEN:
            self._reopen_at = self._clock() + self._config.open_for
        elif new is HALF_OPEN:
            self._probes = 0
            self._probe_successes = 0
        elif new is CLOSED:
            self._streak = 0
            self._window.clear()
        for callback in self._callbacks:
            callback(self, old, new)


def circuit_open(what: str, retry_after: float) -> CircuitOpen:
    """The 503 a request gets while ``what``'s breaker is open."""
    seconds = max(1, int(retry_after + 0.999))
    return CircuitOpen(
        f"the circuit breaker of {what} is open; retry in {seconds} s",
        headers=[("retry-after", str(seconds))],
        extensions={"retry_after": seconds},
    )
