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

    def as_dict(self) -> dict[str, Any]:
        """The identity as plain JSON values, for an app to return or log.

        Sets become sorted lists; claims are copied as JSON values (a value
        JSON has no type for, such as bytes or a datetime, becomes its
        ``str``), so ``json.dumps(identity.as_dict())`` never fails.
        """
        return {
            "subject": self.subject,
            "consumer": self.consumer,
            "credential": self.credential,
            "roles": sorted(self.roles),
            "scopes": sorted(self.scopes),
            "groups": sorted(self.groups),
            "claims": {str(k): _json_value(v) for k, v in self.claims.items()},
            "anonymous": self.anonymous,
        }


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_json_value(v) for v in value), key=str)
    return str(value)
