"""The front server with ASGI apps of our own, in process: framing, lifespan, misbehaving apps.

The attacks against ``gatekeep serve`` as a process are in tests/attacks/test_front_server.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeep._front._wire import CHUNKED, LENGTH, NONE, response_head

from ._wire import exchange, front_server

pytestmark = pytest.mark.anyio


class App:
    """An ASGI app whose answer to each path is a small misbehaviour (or a normal answer)."""

    def __init__(self) -> None:
        self.started = False
        self.stopped = False
        self.after_response: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    scope["state"]["answer"] = 42
                    self.started = True
                    await send({"type": "lifespan.startup.complete"})
                else:
                    self.stopped = True
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        if path == "/raise":
            raise RuntimeError("boom")
        if path == "/nothing":
            return
        if path == "/inject":
            headers = [(b"x-a", b"1\r\nset-cookie: evil=1")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            return
        if path == "/status":
            await send({"type": "http.response.start", "status": 600, "headers": []})
            return
        if path == "/empty":
            await send({"type": "http.response.start", "status": 204, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        body = json.dumps(
            {
                "state": scope.get("state", {}).get("answer"),
                "client": list(scope["client"]),
                "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})
        self.after_response.append((await receive())["type"])


@pytest.mark.parametrize("path", ["/raise", "/nothing", "/inject", "/status"])
async def test_a_failing_app_gets_a_500_problem_and_the_connection_closed(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = App()
    async with front_server(app) as port:
        answer = await exchange(
            port, b"GET %b HTTP/1.1\r\nhost: t\r\n\r\nGET / HTTP/1.1\r\nhost: t\r\n\r\n" % path.encode()
        )
    assert answer.startswith(b"HTTP/1.1 500 "), answer
    assert b"application/problem+json" in answer and b"connection: close" in answer
    assert b"evil" not in answer
    assert answer.count(b"HTTP/1.1") == 1  # the pipelined request is not answered on a broken connection


async def test_lifespan_state_reaches_requests_and_the_client_is_the_peer() -> None:
    app = App()
    async with front_server(app) as port:
        answer = await exchange(
            port, b"GET / HTTP/1.1\r\nhost: t\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n"
        )
        assert app.started and not app.stopped
    assert app.stopped
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["state"] == 42
    assert body["client"][0] == "127.0.0.1"
    # Names lower-cased (ASGI), values and order as received, nothing interpreted.
    assert body["headers"] == [["host", "t"], ["x-forwarded-for", "6.6.6.6"], ["connection", "close"]]
    assert app.after_response == ["http.disconnect"]


async def test_204_has_no_body_framing() -> None:
    async with front_server(App()) as port:
        answer = await exchange(port, b"GET /empty HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert b"content-length" not in answer and b"transfer-encoding" not in answer


def test_response_head_framing() -> None:
    def head(status: int, headers: list[tuple[bytes, bytes]], **kw: Any) -> Any:
        options = {"head": False, "http_11": True, "keep_alive": True, **kw}
        return response_head(status, headers, **options)

    assert head(200, [(b"content-length", b"5")]).framing is LENGTH
    chunked = head(200, [])
    assert chunked.framing is CHUNKED and b"transfer-encoding: chunked\r\n" in chunked.data
    # HEAD: the length a GET would have, and no body.
    answer = head(200, [(b"content-length", b"5")], head=True)
    assert answer.framing is NONE and b"content-length: 5\r\n" in answer.data
    # HTTP/1.0 without a length: until close.
    old = head(200, [], http_11=False)
    assert not old.keep_alive and b"connection: close\r\n" in old.data
    # The app's own Connection: close is honoured; its Transfer-Encoding is ours to write.
    assert not head(200, [(b"connection", b"close")]).keep_alive
    assert head(200, [(b"transfer-encoding", b"chunked"), (b"content-length", b"3")]).framing is CHUNKED
    assert b"date: " in chunked.data
    assert b"date: x" in head(200, [(b"date", b"x")]).data
    for status in (99, 600, "200", True):
        with pytest.raises(ValueError):
            head(status, [])  # type: ignore[arg-type]
    for bad in ([(b"x", b"a\rb")], [(b"x y", b"1")], [(b"content-length", b"-1")], [(b"x", b"\x00")]):
        with pytest.raises(ValueError):
            head(200, bad)


_names = st.one_of(
    st.sampled_from([b"Content-Type", b"x-request-id", b"RateLimit-Limit", b"via", b"bad name", b"a:b", b""]),
    st.binary(min_size=0, max_size=8),
)
_values = st.one_of(
    st.sampled_from([b"ok", b"1.1 gatekeep", b"a\r\nb", b"x\x00", b"\n"]), st.binary(max_size=12)
)


@given(st.lists(st.tuples(_names, _values), max_size=8))
def test_response_head_refuses_exactly_the_fields_that_could_split_it(
    fields: list[tuple[bytes, bytes]],
) -> None:
    """The cached name check and the one scan over all values decide as a per-field check would."""
    special = {b"content-length", b"transfer-encoding", b"connection"}
    kept = [(n, v) for n, v in fields if n.lower() not in special]
    invalid = any(
        not re.fullmatch(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", n) or re.search(rb"[\r\n\x00]", v) for n, v in kept
    )
    try:
        answer = response_head(200, kept, head=False, http_11=True, keep_alive=True)
    except ValueError:
        assert invalid
        return
    assert not invalid
    for name, value in kept:
        assert name.lower() + b": " + value + b"\r\n" in answer.data
    assert answer.data.count(b"\r\n") == len(kept) + 4  # status, framing, date, end of head
