"""A rolling window of two counters, in fixed time buckets (sans-IO).

The window of ``span`` seconds is cut into ``buckets`` slots; a count lands
in the slot of the current time, and slots older than the window are
zeroed lazily when time moves on.  Totals are kept incrementally, so adding
and reading are O(1) except when a long pause clears many slots.
"""

from __future__ import annotations

__all__ = ["RollingCounts"]


class RollingCounts:
    """Counts ``a`` and ``b`` over the last ``span`` seconds."""

    __slots__ = ("_a", "_b", "_slot", "_width", "a", "b")

    def __init__(self, span: float, buckets: int = 10) -> None:
        self._width = span / buckets
        self._a = [0] * buckets
        self._b = [0] * buckets
        self._slot = 0  # absolute index of the newest slot
        self.a = 0
        self.b = 0

    def _advance(self, now: float) -> int:
        slot = int(now / self._width)
        if slot != self._slot:
            n = len(self._a)
            if slot - self._slot >= n or slot < self._slot:
                self._a = [0] * n
                self._b = [0] * n
                self.a = self.b = 0
            else:
                a, b = self._a, self._b
                for s in range(self._slot + 1, slot + 1):
                    i = s % n
                    self.a -= a[i]
                    self.b -= b[i]
                    a[i] = b[i] = 0
            self._slot = slot
        return slot % len(self._a)

    def add(self, now: float, a: int = 0, b: int = 0) -> None:
        slot = int(now / self._width)
        # (Still in the newest slot, almost always: ``_advance`` has nothing to do.)
        i = slot % len(self._a) if slot == self._slot else self._advance(now)
        self._a[i] += a
        self._b[i] += b
        self.a += a
        self.b += b

    def totals(self, now: float) -> tuple[int, int]:
        self._advance(now)
        return self.a, self.b

    def clear(self) -> None:
        n = len(self._a)
        self._a = [0] * n
        self._b = [0] * n
        self.a = self.b = 0
