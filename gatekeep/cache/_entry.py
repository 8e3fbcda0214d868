"""A stored answer, and its bytes in a shared store.

An ``Entry`` is what a hit needs to answer without the upstream: status,
headers, body, how old the answer already was when stored (its ``Age``), how
long it stays fresh, and the request header values its ``Vary`` named.  The
store keeps it for ``retain`` seconds (``storage_ttl``, at least the
freshness) and reports how long it has held it (``resident``), from its own
clock: the monotonic clock for memory, the Redis server's for Redis (PTTL),
so that gateway processes never compare wall clocks.

Wire format (Redis): one version byte, a JSON head, a newline, the body.
Headers are latin-1 text in the head (HTTP/1.1 field values are octets).
"""

from __future__ import annotations

import json
from typing import Any, Final

import attrs

__all__ = ["Entry", "decode", "encode"]

_VERSION: Final = b"1"
# What an entry costs beyond its bytes (the Python objects around them), for the memory budget.
OVERHEAD: Final = 256


@attrs.frozen
class Entry:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    fresh: float  # seconds of freshness from when it was generated
    retain: float  # seconds the store keeps it
    age: float = 0.0  # its Age when stored (an upstream cache's)
    vary: tuple[tuple[bytes, bytes | None], ...] = ()  # (request header, value it had)
    resident: float = 0.0  # seconds in the store, filled in by a lookup

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers) + OVERHEAD

    def current_age(self) -> float:
        return self.age + self.resident


def encode(entry: Entry) -> bytes:
    head = {
        "s": entry.status,
        "h": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in entry.headers],
        "f": entry.fresh,
        "r": entry.retain,
        "a": entry.age,
        "v": [[k.decode("latin-1"), None if v is None else v.decode("latin-1")] for k, v in entry.vary],
    }
    return _VERSION + json.dumps(head, separators=(",", ":")).encode() + b"\n" + entry.body


def decode(data: bytes, resident: float) -> Entry | None:
    """The entry in ``data``, or ``None`` for bytes this release cannot read (another version)."""
    if not data.startswith(_VERSION):
        return None
    head_bytes, sep, body = data[1:].partition(b"\n")
    if not sep:
        return None
    try:
        head: dict[str, Any] = json.loads(head_bytes)
        return Entry(
            status=int(head["s"]),
            headers=tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in head["h"]),
            body=body,
            fresh=float(head["f"]),
            retain=float(head["r"]),
            age=float(head["a"]),
            vary=tuple(
                (k.encode("latin-1"), None if v is None else v.encode("latin-1")) for k, v in head["v"]
            ),
            resident=resident,
        )
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeEncodeError):
        return None
