"""A prometheus-client child's values as one plain list a log phase adds to in place.

prometheus-client keeps each value of a child (a counter's count, a
histogram's sum and each bucket's count) in a ``MutexValue``: a float behind a
lock, changed by a method call.  The log phase of every request changes nine of
them.  ``counter_values`` and ``histogram_values`` move a child's values into
one list and give the child ``Cell`` objects reading that list, so the
exposition (and anyone calling the child's own ``inc``/``observe``) sees the same
numbers, and the log phase changes them with ``values[i] += amount``: no call,
no lock.

That is safe when one event loop records them, as the gateway's plugins do
(every adapter runs the gateway on one loop, the WSGI one through a portal); a
child that threads share (prometheus-client's global registry) should keep the
library's methods.  Values that live
elsewhere are left alone: multiprocess mode's (mmap files shared by the
workers), or another library version's layout.  Both functions answer ``None``
then, and the caller uses the library's methods.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.values import MutexValue

__all__ = ["Cell", "counter_values", "histogram_values"]


class Cell:
    """One value of a child, kept in ``values[index]`` (prometheus-client's value interface)."""

    __slots__ = ("exemplar", "index", "values")

    def __init__(self, values: list[float], index: int) -> None:
        self.values = values
        self.index = index
        self.exemplar: Any = None

    def inc(self, amount: float) -> None:
        self.values[self.index] += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self.values[self.index] = value

    def get(self) -> float:
        return self.values[self.index]

    def set_exemplar(self, exemplar: Any) -> None:
        self.exemplar = exemplar

    def get_exemplar(self) -> Any:
        return self.exemplar


def counter_values(child: Any) -> list[float] | None:
    """``[count]`` of a counter child (now kept there), or ``None`` when it cannot be."""
    value = getattr(child, "_value", None)
    if type(value) is Cell:
        return value.values
    if type(value) is not MutexValue:
        return None
    values = [value.get()]  # type: ignore[no-untyped-call]
    child._value = Cell(values, 0)
    return values


def histogram_values(child: Any) -> list[float] | None:
    """``[sum, bucket 0, ..., bucket +Inf]`` of a histogram child (each bucket's own count,
    not cumulative, as the library keeps them), or ``None`` when it cannot be.

    The child's bounds are ``child._upper_bounds``; an amount belongs in the first
    bucket whose bound is at least the amount: ``values[1 + bisect_left(bounds, amount)]``.
    """
    total = getattr(child, "_sum", None)
    if type(total) is Cell:
        return total.values
    buckets = getattr(child, "_buckets", None)
    bounds = getattr(child, "_upper_bounds", None)
    if type(total) is not MutexValue or not isinstance(buckets, list) or not isinstance(bounds, list):
        return None
    if len(buckets) != len(bounds) or not bounds or bounds[-1] != float("inf"):
        return None
    if any(type(b) is not MutexValue for b in buckets):
        return None
    values = [total.get(), *(b.get() for b in buckets)]  # type: ignore[no-untyped-call]
    child._sum = Cell(values, 0)
    child._buckets = [Cell(values, i + 1) for i in range(len(buckets))]
    return values
