"""Claim paths: where in a token's claims roles and scopes are found.

A path is a dotted string (``realm_access.roles``) or, for keys that contain
dots themselves (Auth0's namespaced ``https://example.com/roles``), an array
of keys.  Two segments are special:

* ``{client}`` stands for each configured client id (Keycloak's
  ``resource_access.{client}.roles``); with no client configured such a path
  is dropped, because reading the roles of *every* client would let a role
  granted for some unrelated application count here;
* ``*`` walks every value of an object (an explicit opt-in to "any key").

Paths are parsed once at config time into tuples of keys; at request time
extraction is a few dict look-ups.  What a path finds is read as a set of
names: a list of strings, or one string split on whitespace (``scope`` is a
space-separated string, RFC 8693 §4.2; ``scp`` and ``roles`` are lists).
Anything else (numbers, nested objects) is ignored, never an error: claims
come from outside.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["ClaimPath", "compile_paths", "extract", "path_problem"]

# One compiled path: its keys; ``*`` walks all values of an object.
ClaimPath = tuple[str, ...]

_WILDCARD = "*"
_CLIENT = "{client}"


def _segments(path: str | Sequence[str]) -> list[str]:
    if isinstance(path, str):
        return path.split(".")
    return list(path)


def path_problem(path: str | Sequence[str]) -> str | None:
    """Why ``path`` is not a usable claim path, or ``None``."""
    segments = _segments(path)
    if not segments:
        return "a claim path needs at least one key"
    for i, segment in enumerate(segments):
        if not isinstance(segment, str) or not segment:
            return f"key {i} of claim path {path!r} is empty"
    return None


def compile_paths(paths: Iterable[str | Sequence[str]], clients: Sequence[str] = ()) -> tuple[ClaimPath, ...]:
    """Parse ``paths`` and expand ``{client}`` once per client (duplicates dropped)."""
    out: list[ClaimPath] = []
    for path in paths:
        segments = _segments(path)
        variants: list[list[str]] = [[]]
        for segment in segments:
            if segment == _CLIENT:
                variants = [v + [c] for v in variants for c in clients]
            else:
                variants = [v + [segment] for v in variants]
        for v in variants:
            compiled = tuple(v)
            if compiled and compiled not in out:
                out.append(compiled)
    return tuple(out)


def _names(value: Any, into: set[str]) -> None:
    if type(value) is str:
        into.update(value.split())
    elif type(value) is list or isinstance(value, list | tuple):
        into.update(item for item in value if isinstance(item, str) and item)


def _walk(node: Any, path: ClaimPath, i: int, into: set[str]) -> None:
    while i < len(path):
        # ``type() is dict`` first: JSON objects are dicts, and ABC checks cost ~10x more.
        if type(node) is not dict and not isinstance(node, Mapping):
            return
        key = path[i]
        if key == _WILDCARD:
            for child in node.values():
                _walk(child, path, i + 1, into)
            return
        node = node.get(key)
        if node is None:
            return
        i += 1
    _names(node, into)


def extract(claims: Mapping[str, Any], paths: Sequence[ClaimPath]) -> set[str]:
    """The names found at any of ``paths`` in ``claims``."""
    found: set[str] = set()
    for path in paths:
        node: Any = claims
        for i, key in enumerate(path):
            if type(node) is not dict and not isinstance(node, Mapping):
                break
            if key == _WILDCARD:
                _walk(node, path, i, found)
                break
            node = node.get(key)
            if node is None:
                break
        else:
            _names(node, found)
    return found
