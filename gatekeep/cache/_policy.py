"""What may be stored and for how long: RFC 9111 for a shared cache, as data in, decision out.

Sans-IO: these functions read header values (bytes) and return decisions; the
``proxy-cache`` plugin does the I/O.  With ``cache_control`` off (Kong's
default) a response's freshness is the configured ``cache_ttl`` and its
``Cache-Control`` is not read; with it on:

* response ``no-store``, ``private`` or ``no-cache`` (this cache never
  revalidates) -> not stored; ``s-maxage`` (a shared cache's own) wins over
  ``max-age``, which wins over ``Expires`` - ``Date`` (RFC 9111 §4.2.1); a
  response that says none of these gets ``cache_ttl`` (heuristic freshness,
  §4.2.2, with the operator's number); a lifetime of 0 is not stored;
* request ``no-store`` -> not looked up, not stored (Bypass); ``no-cache``,
  ``max-age=0`` or ``Pragma: no-cache`` -> fetched again and the answer
  stored (Refresh); ``max-age=N`` -> an entry older than N is not served.

``Vary: *`` is never stored, whatever ``cache_control`` says: no request can be
shown to match it (§4.1).
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime
from typing import Final

import attrs

__all__ = ["RequestDirectives", "freshness", "parse_cache_control", "request_directives"]

# A directive's value when it has none (``no-store``).
PRESENT: Final = ""


def parse_cache_control(values: list[bytes]) -> dict[str, str]:
    """The directives of every ``Cache-Control`` field line: lower-case name -> value (``""`` if none).

    Quoted values are unquoted; a directive seen twice keeps its first value.
    """
    found: dict[str, str] = {}
    for raw in values:
        for part in raw.decode("latin-1").split(","):
            name, _, value = part.partition("=")
            name = name.strip().lower()
            if not name:
                continue
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            found.setdefault(name, value)
    return found


def _seconds(value: str | None) -> int | None:
    """A delta-seconds value (RFC 9111 §1.2.2); a malformed one is ``None``, a huge one is capped."""
    if value is None or not value.isdigit():
        return None
    return min(int(value), 2**31)


def _http_date(value: bytes | None) -> float | None:
    if value is None:
        return None
    try:
        return parsedate_to_datetime(value.decode("latin-1")).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def freshness(
    response_cache_control: list[bytes],
    *,
    expires: bytes | None,
    date: bytes | None,
    default: float,
    now: float,
) -> float | None:
    """The freshness lifetime of a response in seconds, or ``None`` when it must not be stored.

    ``default`` is ``cache_ttl``: the lifetime of a response that states none;
    ``now`` (wall-clock seconds) stands for a missing ``Date``: ``Expires`` is a date.
    """
    directives = parse_cache_control(response_cache_control)
    if "no-store" in directives or "private" in directives or "no-cache" in directives:
        return None
    for name in ("s-maxage", "max-age"):
        if name in directives:
            seconds = _seconds(directives[name])
            # A malformed max-age makes the response stale (§4.2.1): not worth storing.
            return float(seconds) if seconds else None
    if expires is not None:
        expires_at = _http_date(expires)
        if expires_at is None:
            return None  # an invalid Expires means "already expired" (§5.3)
        # No (valid) Date: the time it was received (§4.2.1; the gateway's
        # hide_upstream_headers drops the upstream's Date by default).
        issued = _http_date(date)
        lifetime = expires_at - (now if issued is None else issued)
        return lifetime if lifetime > 0 else None
    return default


@attrs.frozen
class RequestDirectives:
    """What a request's ``Cache-Control`` (and ``Pragma``) asks of the cache."""

    store: bool = True  # False: no-store, neither served from nor stored into the cache
    refresh: bool = False  # True: no-cache / max-age=0: go to the upstream, store its answer
    max_age: float | None = None  # serve only entries at most this old


NO_DIRECTIVES: Final = RequestDirectives()


def request_directives(cache_control: list[bytes], pragma: bytes | None) -> RequestDirectives:
    """Read a request's cache directives (RFC 9111 §5.2.1; ``Pragma: no-cache`` as §5.4 allows)."""
    if not cache_control:
        if pragma is not None and b"no-cache" in pragma.lower():
            return RequestDirectives(refresh=True)
        return NO_DIRECTIVES
    directives = parse_cache_control(cache_control)
    if "no-store" in directives:
        return RequestDirectives(store=False)
    if "no-cache" in directives:
        return RequestDirectives(refresh=True)
    if "max-age" in directives:
        seconds = _seconds(directives["max-age"])
        if seconds == 0:
            return RequestDirectives(refresh=True)
        if seconds is not None:
            return RequestDirectives(max_age=float(seconds))
    return NO_DIRECTIVES
