"""``request-size-limiting``: refuse bodies over a size, as Kong's plugin does.

A declared ``Content-Length`` over the limit is refused before any byte is
read.  A chunked body is counted as it streams to the upstream and cut with
413 if it grows past the limit (or refused up front with
``require_content_length``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import ClassVar, Literal

import attrs

from gatekeep import BadRequest, BasePlugin, Body, PayloadTooLarge, Request, Response, validators

_UNITS = {"megabytes": 1024 * 1024, "kilobytes": 1024, "bytes": 1}


@attrs.frozen
class RequestSizeLimitingConfig:
    kong_names: ClassVar[Mapping[str, str]] = validators.kong_fields(
        "allowed_payload_size", "size_unit", "require_content_length"
    )

    allowed_payload_size: float = attrs.field(default=128, validator=validators.positive)
    size_unit: Literal["megabytes", "kilobytes", "bytes"] = "megabytes"
    require_content_length: bool = False


class RequestSizeLimitingFilter(BasePlugin[RequestSizeLimitingConfig]):
    name: ClassVar[str] = "request-size-limiting"
    priority: ClassVar[int] = 951

    def __init__(self, config: RequestSizeLimitingConfig | None = None) -> None:
        super().__init__(config)
        self.limit = int(self.config.allowed_payload_size * _UNITS[self.config.size_unit])

    async def on_request(self, request: Request) -> Response | None:
        length = request.headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                raise BadRequest("Content-Length is not a number")
            if int(length) > self.limit:
                raise PayloadTooLarge(f"Request size limit exceeded: the limit is {self.limit} bytes")
            return None
        if b"transfer-encoding" in request.headers:
            if self.config.require_content_length:
                raise PayloadTooLarge("A Content-Length header is required")
            request.body = _limited(request.body, self.limit)
        return None


async def _limited(body: Body, limit: int) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in body:
        seen += len(chunk)
        if seen > limit:
            raise PayloadTooLarge(f"Request size limit exceeded: the limit is {limit} bytes")
        yield chunk
