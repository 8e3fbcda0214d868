"""The one error family of gatekeep.

Every error a user can cause is a ``GatekeepError``.  Each class knows the
HTTP status the gateway answers with and a short title; the adapters turn any
of them into an RFC 9457 ``application/problem+json`` answer.  Third-party
errors (h11, pyjwt, redis, dnspython) are translated at one boundary each with
``raise ... from exc`` so that nothing foreign leaks to a client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

__all__ = [
    "AuthError",
    "BadRequest",
    "CircuitOpen",
    "ClientClosedRequest",
    "ConfigError",
    "FieldError",
    "FilterError",
    "Forbidden",
    "GatekeepError",
    "HeaderFieldsTooLarge",
    "MethodNotAllowed",
    "NoHealthyUpstream",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RequestTimeout",
    "ServiceUnavailable",
    "URITooLong",
    "Unsupported",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamTimeout",
]


class GatekeepError(Exception):
    """Root of every gatekeep error.

    Attributes:
        status: the HTTP status the gateway answers with.
        title: a short, stable summary of the problem type.
        detail: what happened, for a human; shown to the client.
        headers: extra response headers (``Allow``, ``Retry-After`` ...).
        extensions: extra members of the problem document.
    """

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal Server Error"
    slug: ClassVar[str] = "internal-error"

    def __init__(
        self,
        detail: str = "",
        *,
        headers: Sequence[tuple[str, str]] = (),
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = list(headers)
        self.extensions = dict(extensions or {})


class BadRequest(GatekeepError):
    status = 400
    title = "Bad Request"
    slug = "bad-request"


class ClientClosedRequest(GatekeepError):
    """The client went away before its request was complete (nginx's 499).

    Nothing is sent back (nobody is left to read it); the status is what the
    access log and metrics record, so that client aborts are counted apart
    from the gateway's and the upstreams' 5xx.
    """

    status = 499
    title = "Client Closed Request"
    slug = "client-closed-request"


class AuthError(GatekeepError):
    """Missing or invalid credentials (401)."""

    status = 401
    title = "Unauthorized"
    slug = "unauthorized"


class Forbidden(GatekeepError):
    """The identity is known but may not do this (403)."""

    status = 403
    title = "Forbidden"
    slug = "forbidden"


class NotFound(GatekeepError):
    status = 404
    title = "Not Found"
    slug = "not-found"


class MethodNotAllowed(GatekeepError):
    status = 405
    title = "Method Not Allowed"
    slug = "method-not-allowed"

    def __init__(self, method: str, allowed: Sequence[str]) -> None:
        allow = ", ".join(allowed)
        super().__init__(
            f"method {method} is not allowed here; allowed: {allow}",
            headers=[("allow", allow)],
        )
        self.allowed = list(allowed)


class PayloadTooLarge(GatekeepError):
    status = 413
    title = "Content Too Large"
    slug = "payload-too-large"


class HeaderFieldsTooLarge(GatekeepError):
    status = 431
    title = "Request Header Fields Too Large"
    slug = "request-header-fields-too-large"


class RequestTimeout(GatekeepError):
    """The client did not send its request (head or body) in time (408)."""

    status = 408
    title = "Request Timeout"
    slug = "request-timeout"


class URITooLong(GatekeepError):
    status = 414
    title = "URI Too Long"
    slug = "uri-too-long"


class Unsupported(GatekeepError):
    """A request gatekeep understands but does not serve yet (501)."""

    status = 501
    title = "Not Implemented"
    slug = "not-implemented"


class RateLimited(GatekeepError):
    status = 429
    title = "Too Many Requests"
    slug = "rate-limited"


class FilterError(GatekeepError):
    """A filter raised something that is not a GatekeepError (a bug in it).

    ``filter`` names the filter (for logs and ``gatekeep_filter_errors_total``).
    """

    status = 500
    title = "Internal Server Error"
    slug = "filter-error"

    def __init__(self, detail: str = "", *, filter: str = "unknown") -> None:  # noqa: A002
        super().__init__(detail)
        self.filter = filter


class ServiceUnavailable(GatekeepError):
    status = 503
    title = "Service Unavailable"
    slug = "service-unavailable"


class NoHealthyUpstream(ServiceUnavailable):
    title = "No Healthy Upstream"
    slug = "no-healthy-upstream"


class CircuitOpen(ServiceUnavailable):
    title = "Circuit Open"
    slug = "circuit-open"


class UpstreamError(GatekeepError):
    """The upstream could not be reached or answered badly (502)."""

    status = 502
    title = "Bad Gateway"
    slug = "bad-gateway"


class UpstreamConnectError(UpstreamError):
    title = "Upstream Connect Error"
    slug = "upstream-connect-error"


class UpstreamProtocolError(UpstreamError):
    title = "Upstream Protocol Error"
    slug = "upstream-protocol-error"


class UpstreamTimeout(UpstreamError):
    status = 504
    title = "Gateway Timeout"
    slug = "gateway-timeout"


class FieldError(Exception):
    """One invalid field of a config: where it is and what is wrong."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class ConfigError(GatekeepError, ValueError):
    """A config was refused; ``errors`` lists every problem with its path."""

    status = 500
    title = "Invalid Configuration"
    slug = "invalid-config"

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = list(errors)
        lines = "\n".join(f"  {e}" for e in self.errors)
        super().__init__(f"invalid config ({len(self.errors)} error(s)):\n{lines}")
