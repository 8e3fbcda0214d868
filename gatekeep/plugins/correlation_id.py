"""``correlation-id``: put a request id in a header, as Kong's plugin does.

The gateway always keeps or makes ``X-Request-ID`` (``[gateway]
request_id_header``); this filter adds Kong's configurable header on top,
for upstreams that expect another name (Kong's default ``Kong-Request-ID``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from typing import ClassVar, Literal

import attrs

from gatekeep import BasePlugin, Request, Response, validators


@attrs.frozen
class CorrelationIdConfig:
    kong_names: ClassVar[Mapping[str, str]] = validators.kong_fields(
        "header_name", "generator", "echo_downstream"
    )

    header_name: str = attrs.field(default="Kong-Request-ID", validator=validators.header_name)
    generator: Literal["uuid", "uuid#counter", "tracker"] = "uuid#counter"
    echo_downstream: bool = False


class CorrelationIdFilter(BasePlugin[CorrelationIdConfig]):
    name: ClassVar[str] = "correlation-id"
    priority: ClassVar[int] = 100001

    def __init__(self, config: CorrelationIdConfig | None = None) -> None:
        super().__init__(config)
        self.header = self.config.header_name.lower().encode("latin-1")
        self._prefix = os.urandom(16).hex()
        self._counter = itertools.count(1)

    def _generate(self, request: Request) -> bytes:
        kind = self.config.generator
        if kind == "uuid":
            return _uuid4()
        if kind == "uuid#counter":
            return f"{self._prefix}#{next(self._counter)}".encode()
        client = request.client_ip or "-"
        return f"{client}-{request.request_id}".encode("latin-1")

    async def on_request(self, request: Request) -> Response | None:
        value = request.headers.get(self.header)
        if value is None:
            value = self._generate(request)
            request.headers.raw.append((self.header, value))
        request.state["correlation-id"] = value
        return None

    async def on_response(self, request: Request, response: Response) -> Response | None:
        if self.config.echo_downstream:
            value = request.state.get("correlation-id")
            if value is not None:
                response.headers.raw.append((self.header, value))
        return None


def _uuid4() -> bytes:
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()
