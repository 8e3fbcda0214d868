"""Who made a request: the value authenticators produce and ``Request.identity`` holds.

Its own module, below ``gatekeep._http``, so that the request can be typed
with it without an import cycle (``gatekeep._protocols`` re-exports it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["Identity"]


@attrs.frozen
class Identity:
    """Who made a request, as established by an authenticator."""

    subject: str
    consumer: str | None = None
    credential: str | None = None
    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = attrs.field(factory=dict)
    anonymous: bool = False
