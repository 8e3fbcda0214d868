"""Reading roles, scopes and groups out of claims by configurable paths."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["claim_at", "strings_at"]


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` (``realm_access.roles``), or ``None``.

    A path segment is looked up whole first, so a claim whose name holds a
    dot (``https://example.com/roles``) is still found when it is the path.
    """
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def strings_at(claims: Mapping[str, Any], paths: Iterable[str]) -> frozenset[str]:
    """The union of the strings at ``paths``: lists of strings, or space-separated strings."""
    out: set[str] = set()
    for path in paths:
        value = claim_at(claims, path)
        if isinstance(value, str):
            out.update(value.split())
        elif isinstance(value, list):
            out.update(v for v in value if isinstance(v, str) and v)
    return frozenset(out)
