"""RFC 2782 target selection for DNS SRV records (sans-IO).

Theory of operation
-------------------
An SRV answer lists targets with a *priority* and a *weight*.  A client must
try the lowest priority first and, within one priority, pick targets at
random in proportion to their weights.  RFC 2782 spells the draw out: put the
weight-0 records first, compute the running sum of the weights, draw a
uniform integer in ``[0, total]`` and take the first record whose running sum
is at least the draw; remove it and repeat for the rest of that priority.
The list is shuffled before the weight-0 records are moved to its front (the
RFC allows any order), so weight-0 records have a small chance only when the
draw is 0, and every record an equal chance when all weights are 0.

``order`` returns the whole try-order that algorithm produces; ``select`` is
the first element of it (one draw, no list building).  A single record whose
target is ``"."`` says the service is decidedly not available here: both
return nothing for it.  Randomness comes from an injected ``random.Random``
so tests can fix the seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from itertools import groupby

import attrs

__all__ = ["SrvRecord", "by_priority", "order", "select", "usable"]


@attrs.frozen
class SrvRecord:
    """One SRV resource record (RFC 2782).  ``target`` is a name without the trailing dot."""

    priority: int
    weight: int
    port: int
    target: str


def usable(records: Iterable[SrvRecord]) -> list[SrvRecord]:
    """The records a client may contact: none when the only target is ``"."``."""
    return [r for r in records if r.target not in (".", "")]


def by_priority(records: Iterable[SrvRecord]) -> list[list[SrvRecord]]:
    """Usable records grouped by priority, lowest priority first.

    Inside a group, weight-0 records come first (RFC 2782's ordering step),
    then the rest in the order given.
    """
    items = sorted(usable(records), key=lambda r: r.priority)
    groups = []
    for _, group in groupby(items, key=lambda r: r.priority):
        members = list(group)
        groups.append([r for r in members if r.weight == 0] + [r for r in members if r.weight != 0])
    return groups


def _draw(group: Sequence[SrvRecord], rng: random.Random) -> int:
    """Index into ``group`` (weight-0 records first) chosen as RFC 2782 says."""
    total = sum(r.weight for r in group)
    threshold = rng.randint(0, total)
    running = 0
    for index, record in enumerate(group):
        running += record.weight
        if running >= threshold:
            return index
    raise AssertionError("unreachable: the last running sum equals the total")  # pragma: no cover


def _arrange(group: Sequence[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    # "In any order, except that all those with weight 0 are placed at the beginning":
    # shuffled, so that ties (all weights 0, or the draw of 0) favour no record.
    items = list(group)
    rng.shuffle(items)
    items.sort(key=lambda r: r.weight != 0)
    return items


def order(records: Iterable[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """Every usable record, in the order a client should try them."""
    out: list[SrvRecord] = []
    for group in by_priority(records):
        left = _arrange(group, rng)
        while left:
            out.append(left.pop(_draw(left, rng)))
    return out


def select(records: Iterable[SrvRecord], rng: random.Random) -> SrvRecord | None:
    """The record to try first, or ``None`` when there is none."""
    groups = by_priority(records)
    if not groups:
        return None
    group = _arrange(groups[0], rng)
    return group[_draw(group, rng)]
