"""What a tour step's answer must be: small checks that name what is wrong, or ``None``.

A check takes the answer and returns a one-line reason it is wrong (printed under the step
as ``!! …``), or ``None`` when it is right; ``all_of`` composes them, first reason wins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..testing import ClientResponse

__all__ = [
    "Check",
    "all_of",
    "allow",
    "continues_trace",
    "header",
    "json_has",
    "json_lacks",
    "json_object",
    "problem",
    "rate_limited",
    "service_problem",
]

Check = Callable[[ClientResponse], "str | None"]


def all_of(*checks: Check) -> Check:
    def check(r: ClientResponse) -> str | None:
        for c in checks:
            found = c(r)
            if found:
                return found
        return None

    return check


def json_object(r: ClientResponse) -> dict[str, Any] | None:
    """The answer's JSON object, or ``None`` when it is not one."""
    try:
        doc = r.json()
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def json_has(key: str, value: Any = None) -> Check:
    def check(r: ClientResponse) -> str | None:
        doc = json_object(r)
        if doc is None:
            return "answer is not a JSON object"
        if key not in doc:
            return f"answer has no {key!r}"
        if value is not None and doc[key] != value:
            return f"{key} is {doc[key]!r}, expected {value!r}"
        return None

    return check


def json_lacks(key: str) -> Check:
    def check(r: ClientResponse) -> str | None:
        doc = json_object(r)
        return None if doc is not None and key not in doc else f"the service saw {key!r}"

    return check


def problem(status: int, detail: str | None = None) -> Check:
    """A problem document from the gateway (it carries the gateway's request id)."""

    def check(r: ClientResponse) -> str | None:
        if r.header("content-type") != "application/problem+json":
            return f"content-type is {r.header('content-type')!r}, expected application/problem+json"
        doc = json_object(r) or {}
        if doc.get("status") != status or not doc.get("request_id"):
            return "problem document lacks status or request_id"
        if detail is not None and detail not in str(doc.get("detail")):
            return f"detail is {doc.get('detail')!r}, expected it to say {detail!r}"
        return None

    return check


def service_problem(status: int, slug: str, detail: str | None = None) -> Check:
    """A problem document from the Order service's own ``AuthMiddleware`` (no gateway request id)."""

    def check(r: ClientResponse) -> str | None:
        if r.header("content-type") != "application/problem+json":
            return f"content-type is {r.header('content-type')!r}, expected application/problem+json"
        doc = json_object(r) or {}
        if doc.get("status") != status or not str(doc.get("type")).endswith("/" + slug):
            return f"problem is {doc.get('type')!r} {doc.get('status')!r}, expected {slug} {status}"
        if "request_id" in doc:
            return "the answer went through the gateway (it has a request_id)"
        if detail is not None and detail not in str(doc.get("detail")):
            return f"detail is {doc.get('detail')!r}, expected it to say {detail!r}"
        return None

    return check


def header(name: str, expected: str | None = None, *, prefix: bool = False) -> Check:
    def check(r: ClientResponse) -> str | None:
        value = r.header(name)
        if value is None:
            return f"no {name} header"
        if expected is not None and not (value.startswith(expected) if prefix else value == expected):
            return f"{name} is {value!r}, expected {expected!r}{' ...' if prefix else ''}"
        return None

    return check


def continues_trace(sent: str) -> Check:
    """The service got the trace id of the ``sent`` traceparent under the gateway's own span."""
    _, trace_id, parent_id, _ = sent.split("-")

    def check(r: ClientResponse) -> str | None:
        got = str((json_object(r) or {}).get("traceparent"))
        parts = got.split("-")
        if len(parts) != 4 or parts[1] != trace_id:
            return f"upstream got traceparent {got!r}, expected trace id {trace_id}"
        if parts[2] == parent_id:
            return "the gateway did not start its own span (same parent id)"
        return None

    return check


def rate_limited(limit: int) -> Check:
    """A 429 from ``rate-limiting`` with Kong's headers, the draft standard's, and Retry-After."""

    def retry_after(r: ClientResponse) -> str | None:
        value = r.header("retry-after") or ""
        return None if value.isdigit() and int(value) >= 1 else f"Retry-After is {value!r}"

    return all_of(
        problem(429, "API rate limit exceeded"),
        header("x-ratelimit-limit-second", str(limit)),
        header("x-ratelimit-remaining-second", "0"),
        header("ratelimit-limit"),
        header("ratelimit-remaining", "0"),
        header("ratelimit-reset"),
        retry_after,
    )


def allow(expected: str) -> Check:
    return header("allow", expected)
