"""The mini server behind ``gatekeep.testing`` and ``gatekeep demo``: bad request heads get an answer."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from gatekeep.testing import serve_asgi

pytestmark = pytest.mark.anyio


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def _exchange(port: int, raw: bytes) -> bytes:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(raw)
        data = b""
        with anyio.fail_after(5):
            while True:
                try:
                    data += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return data


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 100_000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nbad header line\r\n\r\n", 400),
    ],
    ids=["oversized-head", "malformed-head"],
)
async def test_a_bad_request_head_is_answered_with_a_problem_and_the_connection_closed(
    raw: bytes, status: int
) -> None:
    async with serve_asgi(hello) as port:
        answer = await _exchange(port, raw)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d " % status), head
        assert b"connection: close" in head.lower()
        assert json.loads(body)["status"] == status
        # The server is still there for the next client.
        ok = await _exchange(port, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 ") and ok.endswith(b"ok")


async def test_receive_reports_the_disconnect_only_once_the_answer_was_written() -> None:
    """``http.disconnect`` comes after the response was *sent* (ASGI), not while its last write waits.

    The gateway's ASGI adapter watches ``receive`` during a long request and cancels
    its work on ``http.disconnect``.  When the watch started just as the last body
    message went out (a 504 at the end of ``retry_policy.timeout``), ``receive``
    already said "disconnected", the watch cancelled the pending write, and the
    client waited for an answer that never came on a connection kept alive.
    """
    events: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # the (empty) request body
        await send({"type": "http.response.start", "status": 504, "headers": [(b"content-length", b"2")]})
        with anyio.CancelScope() as work:
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    message = await receive()
                    events.append(message["type"])
                    if message["type"] == "http.disconnect":
                        work.cancel()

                tg.start_soon(watch)  # its first step runs while the last send below is pending
                await send({"type": "http.response.body", "body": b"no"})
                events.append("sent")
                tg.cancel_scope.cancel()
        events.append((await receive())["type"])  # now the response is out

    async with serve_asgi(app) as port:
        with anyio.fail_after(5):
            answer = await _exchange(port, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 504 ") and answer.endswith(b"\r\n\r\nno")
    assert events == ["sent", "http.disconnect"]
