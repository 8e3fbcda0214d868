"""Whatever bytes a client sends, the gateway answers with a problem document
of the right family and never with a 500 (which would mean a bug)."""

from __future__ import annotations

from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gatekeep
from gatekeep import Exchange, Headers, Request

CONFIG: dict[str, Any] = {
    "services": [
        {
            # Nothing listens on port 1: every proxied request ends in a 502.
            "name": "down",
            "url": "http://127.0.0.1:1",
            "connect_timeout": 200,
            "routes": [
                {"name": "orders", "paths": ["/orders"], "methods": ["GET", "POST"]},
                {"name": "item", "paths": ["/items/{id}"]},
                {"name": "re", "paths": ["~/re/(?P<n>[0-9]+)"]},
                {"name": "host", "hosts": ["*.example.com"], "paths": ["=/exact"]},
            ],
            "plugins": [
                {
                    "name": "request-size-limiting",
                    "config": {"allowed_payload_size": 1, "size_unit": "kilobytes"},
                }
            ],
        }
    ],
    "plugins": [{"name": "correlation-id"}],
}

_raw_paths = st.one_of(
    st.binary(max_size=60),
    st.lists(
        st.sampled_from(
            [
                b"/",
                b"orders",
                b"items",
                b"re",
                b"..",
                b".",
                b"%2e",
                b"%2F",
                b"%6F",
                b"%zz",
                b"//",
                b"\x00",
                b"\xff",
                b"1",
                b"exact",
            ]
        ),
        max_size=8,
    ).map(b"".join),
)
_header_names = st.sampled_from(
    [
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"x-request-id",
        b"connection",
        b"x-consumer-username",
        b"kong-request-id",
    ]
)
_headers = st.lists(st.tuples(_header_names, st.binary(max_size=40)), max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "FOO"]),
    raw_path=_raw_paths,
    headers=_headers,
    host=st.sampled_from(["", "a.example.com", "EXAMPLE.com", "[::1]", "x" * 300]),
    body=st.binary(max_size=2000),
)
def test_no_input_makes_the_gateway_answer_500(
    method: str, raw_path: bytes, headers: list[tuple[bytes, bytes]], host: str, body: bytes
) -> None:
    gateway = _gateway()

    async def run() -> tuple[int, bytes, str]:
        async def chunks() -> Any:
            if body:
                yield body

        request = Request(
            method=method,
            path="",
            raw_path=raw_path,
            headers=Headers(list(headers)),
            body=chunks(),
            host=host,
            client=("127.0.0.1", 4000),
        )
        response = await gateway.handle(request, Exchange(request))
        data = await response.read()
        await response.aclose()
        return response.status, data, response.headers.text("content-type") or ""

    status, data, content_type = anyio.run(run)
    assert status != 500, data
    assert status in (400, 404, 405, 413, 502, 503, 504), (status, data)
    assert content_type == "application/problem+json"


_GATEWAY: list[gatekeep.Gateway] = []


def _gateway() -> gatekeep.Gateway:
    if not _GATEWAY:
        _GATEWAY.append(gatekeep.Gateway(CONFIG))
    return _GATEWAY[0]
