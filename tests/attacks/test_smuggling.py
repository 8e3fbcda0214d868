"""Request smuggling and desync: one request on the wire is one request at the upstream.

Each case opens a fresh connection and sends one request whose framing two
parsers could read differently (``Content-Length`` against
``Transfer-Encoding``, two lengths, lengths and codings in odd spellings, chunk
sizes that overflow, bare CR and LF, obs-fold, a body on ``GET``, a body sent
without waiting for ``100 Continue``, ``Transfer-Encoding`` on HTTP/1.0).  A
complete ``GET /smuggled/...`` hides where only the *wrong* reading finds a
request; an honest ``GET /last/...`` with ``Connection: close`` follows.

The gateway runs under four servers, each started once for the module:
``gatekeep serve`` (the front server, llhttp), ``gatekeep serve --server
uvicorn`` (httptools), uvicorn ``--http h11``, and the in-process test server
(``gatekeep.testing.serve_asgi``, h11).  Behind it, ``Recorder`` is a strict
upstream on a raw socket: it parses every request it is sent and logs it,
and flags anything it could not frame the one obvious way (both framings,
a length that is not digits, a coding other than one ``chunked``, a chunk
extension or trailer the gateway should have dropped, a bare CR or LF).

Every case ends in one of the outcomes of ``EXPECTED`` (one row per case, one
column per server): refused (400, connection closed, the upstream never
called), or served once (the upstream got one cleanly framed request with the
expected body, then the honest one).  Whatever the outcome, the upstream never
parses a smuggled request.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Final

import anyio
import anyio.abc
import anyio.from_thread
import attrs
import pytest

from gatekeep import Gateway, Instance, asgi, replayable
from gatekeep._upstream import Timeouts, UpstreamPool
from gatekeep.testing import serve_asgi

from .._servers import free_port, running
from .._upstream_servers import raw_server

# -- the recording upstream ---------------------------------------------------------------

_REQUEST_LINE: Final = re.compile(rb"[A-Z]+ /[!-~]* HTTP/1\.1")
_FIELD: Final = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*((?:[ \t]*[!-~\x80-\xff])*)[ \t]*")
_CHUNK_SIZE: Final = re.compile(rb"[0-9A-Fa-f]{1,16}")


@attrs.define
class Seen:
    """One request as the upstream parsed it."""

    connection: int
    line: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    framing: str = "none"  # "length", "chunked" or "none"
    truncated: bool = False  # the gateway closed the connection mid-body
    problems: list[str] = attrs.Factory(list)

    @property
    def target(self) -> bytes:
        parts = self.line.split(b" ")
        return parts[1] if len(parts) == 3 else b""


class _Reader:
    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def _more(self) -> bool:
        try:
            self.buffer += await self.stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return False
        return True

    async def until(self, delimiter: bytes) -> bytes | None:
        while delimiter not in self.buffer:
            if not await self._more():
                return None
        data, _, rest = bytes(self.buffer).partition(delimiter)
        self.buffer[:] = rest
        return data

    async def exactly(self, n: int) -> bytes | None:
        while len(self.buffer) < n:
            if not await self._more():
                return None
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data


class Recorder:
    """A strict HTTP/1.1 upstream: logs every request it parses in ``seen``.

    A request it cannot frame the one obvious way is logged with its
    ``problems`` and the connection closed, as a strict server would; the
    others are answered ``200`` with ``<target> <body length>``.
    """

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.connections = 0

    def problems(self, since: int = 0) -> list[tuple[bytes, list[str]]]:
        return [(s.line, s.problems) for s in self.seen[since:] if s.problems]

    def smuggled(self, since: int = 0) -> list[bytes]:
        return [s.line for s in self.seen[since:] if b"/smuggled/" in s.line]

    def of_case(self, case_id: bytes) -> list[Seen]:
        return [s for s in self.seen if s.target.rsplit(b"/", 1)[-1] == case_id]

    async def __call__(self, stream: anyio.abc.SocketStream) -> None:
        self.connections += 1
        reader = _Reader(stream)
        while True:
            head = await reader.until(b"\r\n\r\n")
            if head is None:
                if reader.buffer:
                    self.seen.append(
                        Seen(self.connections, bytes(reader.buffer), [], problems=["partial head"])
                    )
                return
            seen = _parse_head(self.connections, head)
            self.seen.append(seen)  # before the body: a test may wait for the head
            if not seen.problems:
                await _read_body(reader, seen)
            if seen.problems or seen.truncated:
                return
            answer = b"%s %d" % (seen.target, len(seen.body))
            await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer))


def _parse_head(connection: int, head: bytes) -> Seen:
    line, *fields = head.split(b"\r\n")
    seen = Seen(connection, line, [])
    if not _REQUEST_LINE.fullmatch(line):
        seen.problems.append(f"bad request line {line!r}")
    for field in fields:
        match = _FIELD.fullmatch(field)
        if match is None:
            seen.problems.append(f"bad field {field!r}")
            continue
        seen.headers.append((match[1].lower(), match[2]))
    lengths = [v for k, v in seen.headers if k == b"content-length"]
    codings = [v for k, v in seen.headers if k == b"transfer-encoding"]
    if lengths and codings:
        seen.problems.append("both content-length and transfer-encoding")
    if len(lengths) > 1 or (lengths and not lengths[0].isdigit()):
        seen.problems.append(f"content-length {lengths}")
    if codings and codings != [b"chunked"]:
        seen.problems.append(f"transfer-encoding {codings}")
    seen.framing = "chunked" if codings else "length" if lengths else "none"
    return seen


async def _read_body(reader: _Reader, seen: Seen) -> None:
    if seen.framing == "length":
        length = int(next(v for k, v in seen.headers if k == b"content-length"))
        body = await reader.exactly(length)
        seen.truncated = body is None
        seen.body = body or b""
        return
    if seen.framing == "none":
        return
    parts: list[bytes] = []
    while True:
        line = await reader.until(b"\r\n")
        if line is None:
            seen.truncated = True
            return
        if not _CHUNK_SIZE.fullmatch(line):
            seen.problems.append(f"chunk-size line {line!r}")  # an extension the gateway let through
            return
        size = int(line, 16)
        if size == 0:
            if await reader.until(b"\r\n") != b"":
                seen.problems.append("a trailer section")  # the gateway drops trailers
            seen.body = b"".join(parts)
            return
        data = await reader.exactly(size + 2)
        if data is None:
            seen.truncated = True
            return
        if data[-2:] != b"\r\n":
            seen.problems.append("chunk data not followed by CRLF")
            return
        parts.append(data[:-2])


@pytest.fixture(scope="module")
def recorder() -> Iterator[tuple[Recorder, int]]:
    upstream = Recorder()
    with (
        anyio.from_thread.start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(raw_server(upstream)) as port,
    ):
        yield upstream, port


def test_the_recorder_sees_a_desync() -> None:
    """The harness can fail: ambiguous framing sent straight to it is flagged."""
    upstream = Recorder()
    with (
        anyio.from_thread.start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(raw_server(upstream)) as port,
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
    ):
        sock.sendall(
            b"POST /x HTTP/1.1\r\nhost: u\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        sock.sendall(b"0\r\n\r\n")
        # Closed without an answer: a FIN, or a reset when the close found the chunk unread.
        try:
            answer = sock.recv(100)
        except ConnectionResetError:
            answer = b""
        assert answer == b""
    assert upstream.problems() == [(b"POST /x HTTP/1.1", ["both content-length and transfer-encoding"])]


# -- the gateway under four servers ---------------------------------------------------------

CONFIG = """\
[gateway]
client_body_timeout = 0.5

[[services]]
name = "up"
url = "http://127.0.0.1:{port}"

  [[services.routes]]
  name = "all"
  paths = ["/"]
  strip_path = false

  [[services.routes]]
  name = "locked"
  paths = ["/locked"]
  strip_path = false

    [[services.routes.plugins]]
    name = "key-auth"

[[services]]
name = "streamed"
url = "http://127.0.0.1:{port}"
request_buffering = false

  [[services.routes]]
  name = "streamed"
  paths = ["/streamed"]
  strip_path = false

[[consumers]]
username = "alice"
keyauth_credentials = [{{ key = "alice-key" }}]
"""

APP = """\
import os
import gatekeep

app = gatekeep.asgi(gatekeep.Gateway(os.environ["GATEKEEP_CONFIG"]))
"""

SERVERS = ("gatekeep", "uvicorn-httptools", "uvicorn-h11", "test-server")


@contextmanager
def _in_process(config: Path) -> Iterator[int]:
    @asynccontextmanager
    async def serving() -> AsyncIterator[int]:
        async with Gateway(str(config)) as gateway, serve_asgi(asgi(gateway)) as port:
            yield port

    with (
        anyio.from_thread.start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(serving()) as port,
    ):
        yield port


@pytest.fixture(scope="module", params=SERVERS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, recorder: tuple[Recorder, int]
) -> Iterator[tuple[str, int]]:
    name: str = request.param
    directory = tmp_path_factory.mktemp(name)
    config = directory / "gatekeep.toml"
    config.write_text(CONFIG.format(port=recorder[1]))
    if name == "test-server":
        with _in_process(config) as port:
            yield name, port
        return
    port = free_port()
    if name == "uvicorn-h11":
        (directory / "gk_smuggling_app.py").write_text(APP)
        argv = [
            *(sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "--http", "h11"),
            *("--no-access-log", "--no-proxy-headers", "--log-level", "warning", "gk_smuggling_app:app"),
        ]
    else:
        extra = ["--server", "uvicorn"] if name == "uvicorn-httptools" else []
        argv = [sys.executable, "-m", "gatekeep", "serve", str(config), "--port", str(port), *extra]
        argv += ["--log-level", "warning"]
    env = {"GATEKEEP_CONFIG": str(config)}
    with running(name, "", app_dir=directory, env=env, argv=argv, port=port):
        yield name, port


# -- a raw client ---------------------------------------------------------------------------


@attrs.define
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def exchange(port: int, data: bytes, *, wait: float = 5.0) -> tuple[list[Answer], bool]:
    """Send ``data`` on a new connection; read until the server closes it (``True``) or
    ``wait`` seconds pass (``False``).  Returns the final answers (1xx skipped)."""
    received = bytearray()
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # refused and closed while we were still sending
        deadline = time.monotonic() + wait
        try:
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    closed = True
                    break
                received += chunk
        except TimeoutError:
            pass
        except ConnectionError:
            closed = True
    return _answers(bytes(received)), closed


def _answers(data: bytes) -> list[Answer]:
    out: list[Answer] = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        status_line, *fields = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        headers = {}
        for field in fields:
            name, _, value = field.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status < 200:
            continue
        if "content-length" in headers:
            length = int(headers["content-length"])
            body, data = data[:length], data[length:]
        elif headers.get("transfer-encoding") == "chunked":
            parts = []
            while True:
                size_line, _, data = data.partition(b"\r\n")
                size = int(size_line, 16)
                parts.append(data[:size])
                data = data[size + 2 :]
                if size == 0:
                    break
            body = b"".join(parts)
        else:
            body, data = data, b""
        out.append(Answer(status, headers, body))
    return out


# -- the cases ------------------------------------------------------------------------------

END: Final = b"0\r\n\r\n"


def smuggled(i: bytes) -> bytes:
    return b"GET /smuggled/%s HTTP/1.1\r\nhost: gk\r\n\r\n" % i


def last(i: bytes) -> bytes:
    return b"GET /last/%s HTTP/1.1\r\nhost: gk\r\nconnection: close\r\n\r\n" % i


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def request(
    i: bytes,
    *fields: bytes,
    body: bytes = b"",
    method: bytes = b"POST",
    path: bytes = b"/a",
    version: bytes = b"HTTP/1.1",
    eol: bytes = b"\r\n",
) -> bytes:
    """``METHOD path/i`` with ``fields`` and ``body``, then the honest last request."""
    head = b"%s %s/%s %s%s" % (method, path, i, version, eol)
    head += b"".join(f + eol for f in (b"host: gk", *fields)) + eol
    return head + body + last(i)


@attrs.frozen
class Case:
    """``send(i)``: the bytes on the wire; ``body(i)``: what the upstream must get if served."""

    send: Callable[[bytes], bytes]
    body: Callable[[bytes], bytes] = lambda i: b"hello"


def _cl_te(coding: bytes) -> Case:
    # Content-Length covers everything; whoever reads the chunks finds a second request.
    def send(i: bytes) -> bytes:
        body = END + smuggled(i)
        return request(i, b"content-length: %d" % len(body), coding, body=body)

    return Case(send, lambda i: END + smuggled(i))


def _te_cl(coding: bytes) -> Case:
    # The chunks cover everything; whoever reads Content-Length finds a second request.
    def send(i: bytes) -> bytes:
        size = b"%x\r\n" % len(smuggled(i))
        return request(i, coding, b"content-length: %d" % len(size), body=size + smuggled(i) + b"\r\n" + END)

    return Case(send, smuggled)


def _coded(coding: bytes) -> Case:
    return Case(lambda i: request(i, coding, body=chunk(b"hello") + END))


def _length(value: Callable[[bytes], bytes], body: Callable[[bytes], bytes] = lambda i: b"hello") -> Case:
    return Case(lambda i: request(i, b"content-length: " + value(i), body=body(i)), body)


def _chunked(body: Callable[[bytes], bytes]) -> Case:
    return Case(lambda i: request(i, b"transfer-encoding: chunked", body=body(i)))


def _fold(*fields: bytes, first: bytes = b"") -> Case:
    # Content-Length covers everything; a parser that took the odd line for
    # "transfer-encoding: chunked" would find a second request.
    def send(i: bytes) -> bytes:
        body = END + smuggled(i)
        head = b"POST /a/%s HTTP/1.1\r\n%shost: gk\r\n" % (i, first)
        head += b"".join(f + b"\r\n" for f in (b"content-length: %d" % len(body), *fields))
        return head + b"\r\n" + body + last(i)

    return Case(send, lambda i: END + smuggled(i))


def _http10(coding: bytes, body: bytes = chunk(b"hello") + END) -> Case:
    return Case(lambda i: request(i, b"connection: keep-alive", coding, body=body, version=b"HTTP/1.0"))


CODINGS: Final = {
    "plain": b"transfer-encoding: chunked",
    "xchunked": b"transfer-encoding: xchunked",
    "trailing-space": b"transfer-encoding: chunked ",
    "trailing-tab": b"transfer-encoding: chunked\t",
    "tab-after-colon": b"transfer-encoding:\tchunked",
    "space-before-colon": b"transfer-encoding : chunked",
    "vertical-tab": b"transfer-encoding:\x0bchunked",
    "two-fields": b"transfer-encoding: chunked\r\ntransfer-encoding: identity",
    "chunked-identity": b"transfer-encoding: chunked, identity",
    "chunked-twice": b"transfer-encoding: chunked\r\ntransfer-encoding: chunked",
}

CASES: dict[str, Case] = {}
for _name, _coding in CODINGS.items():
    CASES[f"cl-te-{_name}"] = _cl_te(_coding)
    CASES[f"te-cl-{_name}"] = _te_cl(_coding)
    CASES[f"te-{_name}"] = _coded(_coding)
CASES |= {
    "two-lengths": Case(
        lambda i: request(
            i,
            b"content-length: 5",
            b"content-length: %d" % (5 + len(smuggled(i))),
            body=b"hello" + smuggled(i),
        )
    ),
    "length-list-same": _length(lambda i: b"5, 5"),
    "length-list-differ": _length(
        lambda i: b"5, %d" % (5 + len(smuggled(i))), lambda i: b"hello" + smuggled(i)
    ),
    "length-plus": _length(lambda i: b"+5"),
    "length-minus": _length(lambda i: b"-1"),
    # A parser that stops at the "x" reads 0 and finds a request in the body.
    "length-hex": _length(lambda i: b"0x%x" % len(smuggled(i)), smuggled),
    "length-spaces": _length(lambda i: b" %d " % len(smuggled(i)), smuggled),
    # 2**68 - 15: a 64-bit parser that wraps reads a huge size; one that wraps
    # 0x10000000000000005 reads 5 and finds the request after the body.
    "chunk-size-overflow": _chunked(lambda i: b"ffffffffffffffff1\r\nhello\r\n" + END),
    "chunk-size-wrap": _chunked(lambda i: b"10000000000000005\r\nhello\r\n" + END + smuggled(i)),
    "chunk-extension": _chunked(lambda i: b"5;name=value\r\nhello\r\n" + END),
    "chunk-extension-bare-cr": _chunked(lambda i: b"5;a\rb\r\nhello\r\n" + END),
    "chunk-extension-bare-lf": _chunked(lambda i: b"5;a\nb\r\nhello\r\n" + END),
    "chunk-lf-only": _chunked(lambda i: b"5\nhello\n0\n\n"),
    "chunk-trailer": _chunked(lambda i: b"5\r\nhello\r\n0\r\nx-trailer: t\r\n\r\n"),
    "head-lf-only": Case(lambda i: request(i, b"content-length: 5", body=b"hello", eol=b"\n")),
    "bare-cr-in-value": _fold(b"x-a: y\rtransfer-encoding: chunked"),
    "nul-in-value": Case(lambda i: request(i, b"x-a: a\x00b", b"content-length: 5", body=b"hello")),
    "obs-fold": _fold(b"x-a: y", b" transfer-encoding: chunked"),
    "space-before-first-field": _fold(first=b" transfer-encoding: chunked\r\n"),
    "space-in-name": Case(lambda i: request(i, b"x y: z", b"content-length: 5", body=b"hello")),
    "get-with-body": Case(
        lambda i: request(i, b"content-length: %d" % len(smuggled(i)), method=b"GET", body=smuggled(i)),
        smuggled,
    ),
    "get-with-chunked-body": Case(
        lambda i: request(i, b"transfer-encoding: chunked", method=b"GET", body=chunk(smuggled(i)) + END),
        smuggled,
    ),
    # The body is sent at once, without waiting for 100 Continue: it is the body all the same.
    "expect-100-body-read": Case(
        lambda i: request(
            i, b"content-length: %d" % len(smuggled(i)), b"expect: 100-continue", body=smuggled(i)
        ),
        smuggled,
    ),
    # key-auth answers 401 before reading the body: its bytes are dropped as body, never parsed.
    "expect-100-answered-early": Case(
        lambda i: request(
            i,
            b"content-length: %d" % len(smuggled(i)),
            b"expect: 100-continue",
            path=b"/locked",
            body=smuggled(i),
        ),
    ),
    "http10-chunked": _http10(b"transfer-encoding: chunked"),
    "http10-chunked-and-length": _http10(b"transfer-encoding: chunked\r\ncontent-length: 5"),
}

# Outcomes.  R: 400 problem+json from gatekeep (front server or gateway), connection
# closed, upstream not called.  U: 400 from uvicorn's own parser (text), closed, upstream
# not called.  OK: served once with the case's body, then the last request, then closed.
# OK1: served once, then the connection closed (the last request never parsed).
# E401: answered 401 before the body; the body dropped as body; the last request served.
# T408: h11 takes the 17-digit size for a 2**68-byte chunk (no wrap: Python ints), so the
# rest is body; the gateway answers 408 after client_body_timeout, the upstream is never
# called.  uvicorn then closes; the test server keeps reading that "body" until the client
# leaves (it drains unread bodies to reuse connections) - nothing after is ever parsed.
R, U, OK, OK1, E401, T408 = "R", "U", "OK", "OK1", "E401", "T408"

# Columns: gatekeep serve, uvicorn httptools, uvicorn h11, test server (h11).
_REFUSED_BY_ALL: Final = (R, U, U, R)
# h11 servers pass Content-Length + a lone "chunked" on; the gateway's edge step refuses
# them and closes the connection (before the fix, it kept it and served what followed the
# last chunk: the smuggled request).
_CL_TE_GATEWAY: Final = (R, U, R, R)
EXPECTED: dict[str, tuple[str, str, str, str]] = {
    **{f"cl-te-{name}": _REFUSED_BY_ALL for name in CODINGS},
    **{f"te-cl-{name}": _REFUSED_BY_ALL for name in CODINGS},
    **{f"te-{name}": _REFUSED_BY_ALL for name in CODINGS},
    "cl-te-plain": _CL_TE_GATEWAY,
    "cl-te-trailing-space": _CL_TE_GATEWAY,
    "cl-te-trailing-tab": _CL_TE_GATEWAY,
    "cl-te-tab-after-colon": _CL_TE_GATEWAY,
    "te-cl-plain": _CL_TE_GATEWAY,
    "te-cl-trailing-space": _CL_TE_GATEWAY,
    "te-cl-trailing-tab": _CL_TE_GATEWAY,
    "te-cl-tab-after-colon": _CL_TE_GATEWAY,
    # OWS around a value is not part of it (RFC 9110 §5.5): these are plain "chunked".
    "te-plain": (OK, OK, OK, OK),
    "te-trailing-space": (OK, OK, OK, OK),
    "te-tab-after-colon": (OK, OK, OK, OK),
    "te-trailing-tab": (R, U, OK, OK),  # llhttp refuses a trailing tab; h11 strips it
    "two-lengths": _REFUSED_BY_ALL,
    "length-list-same": (R, U, OK, OK),  # h11 reads "5, 5" as 5 (RFC 9110 §8.6 allows it)
    "length-list-differ": _REFUSED_BY_ALL,
    "length-plus": _REFUSED_BY_ALL,
    "length-minus": _REFUSED_BY_ALL,
    "length-hex": _REFUSED_BY_ALL,
    "length-spaces": (OK, OK, OK, OK),
    "chunk-size-overflow": (R, U, T408, T408),
    "chunk-size-wrap": (R, U, T408, T408),
    "chunk-extension": (OK, OK, OK, OK),  # extensions are dropped, never forwarded
    "chunk-extension-bare-cr": (R, U, OK, OK),  # h11 reads up to the CRLF: one reading only
    "chunk-extension-bare-lf": _REFUSED_BY_ALL,
    "chunk-lf-only": _REFUSED_BY_ALL,
    "chunk-trailer": (OK, OK, OK, OK),  # the trailer is dropped, never forwarded
    "head-lf-only": (R, U, OK, OK),  # RFC 9112 §2.2 lets h11 take LF for CRLF in the head
    "bare-cr-in-value": _REFUSED_BY_ALL,
    "nul-in-value": _REFUSED_BY_ALL,
    "obs-fold": (R, U, OK, OK),  # h11 joins the line to x-a's value (RFC 9112 §5.2): no coding
    "space-before-first-field": _REFUSED_BY_ALL,
    "space-in-name": _REFUSED_BY_ALL,
    "get-with-body": (OK, OK, OK, OK),
    "get-with-chunked-body": (OK, OK, OK, OK),
    "expect-100-body-read": (OK, OK, OK, OK),
    "expect-100-answered-early": (E401, E401, E401, E401),
    # RFC 9112 §6.1: Transfer-Encoding on HTTP/1.0 is faulty framing: answered, then closed.
    "http10-chunked": (OK1, OK1, OK1, OK1),
    "http10-chunked-and-length": (R, U, R, R),
}
assert EXPECTED.keys() == CASES.keys()


def _check(name: str, port: int, recorder: Recorder, case_name: str) -> None:
    case = CASES[case_name]
    outcome = EXPECTED[case_name][SERVERS.index(name)]
    i = f"{case_name}.{name}".encode()
    before = len(recorder.seen)
    answers, closed = exchange(port, case.send(i), wait=1.0 if outcome == T408 else 5.0)
    seen = recorder.of_case(i)
    where = (name, case_name, answers, [s.line for s in recorder.seen[before:]])
    # What this exchange made the upstream parse (one exchange at a time).
    assert not recorder.smuggled(before), where
    assert not recorder.problems(before), (where, recorder.problems(before))
    statuses = [a.status for a in answers]
    targets = [s.target.split(b"/")[1] for s in seen]
    if outcome in (R, U):
        assert statuses == [400], where
        assert closed, where
        assert targets == [], where
        kind = answers[0].headers.get("content-type")
        assert kind == ("application/problem+json" if outcome == R else "text/plain; charset=utf-8"), where
    elif outcome in (OK, OK1):
        assert statuses == ([200, 200] if outcome == OK else [200]), where
        assert closed, where
        assert targets == ([b"a", b"last"] if outcome == OK else [b"a"]), where
        assert seen[0].framing in ("length", "chunked") and seen[0].body == case.body(i), where
        assert not seen[0].truncated, where
    elif outcome == E401:
        assert statuses == [401, 200] and closed, where
        assert targets == [b"last"], where
    else:
        assert outcome == T408
        assert statuses == [408], where
        assert targets == [], where
        assert closed == (name != "test-server"), where


@pytest.mark.parametrize("case_name", list(CASES))
def test_one_request_on_the_wire_is_at_most_one_at_the_upstream(
    server: tuple[str, int], recorder: tuple[Recorder, int], case_name: str
) -> None:
    _check(*server, recorder[0], case_name)


def test_a_body_cut_short_never_primes_a_pooled_connection(
    server: tuple[str, int], recorder: tuple[Recorder, int]
) -> None:
    """A streamed upload whose client leaves mid-body: the upstream connection that
    carried its head is closed, never reused for the next request (whose head the
    upstream would read as the rest of that body)."""
    name, port = server
    upstream = recorder[0]
    before = len(upstream.seen)
    cut = f"cut.{name}".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /streamed/%s HTTP/1.1\r\nhost: gk\r\ncontent-length: 100000\r\n\r\n" % cut)
        sock.sendall(b"x" * 1000)
        deadline = time.monotonic() + 5
        while not upstream.of_case(cut) and time.monotonic() < deadline:
            time.sleep(0.01)
        [started] = upstream.of_case(cut)
    deadline = time.monotonic() + 5
    while not started.truncated and time.monotonic() < deadline:
        time.sleep(0.01)
    assert started.truncated and started.framing == "length", started
    after = f"after.{name}".encode()
    answers, _ = exchange(
        port,
        b"POST /streamed/%s HTTP/1.1\r\nhost: gk\r\ncontent-length: 5\r\n\r\nhello" % after + last(after),
    )
    assert [a.status for a in answers] == [200, 200]
    [seen, _] = upstream.of_case(after)
    assert (seen.body, seen.problems) == (b"hello", [])
    assert seen.connection != started.connection
    assert not upstream.problems(before) and not upstream.smuggled(before)


def test_a_refusal_says_why(server: tuple[str, int]) -> None:
    """The gateway's own refusal of Content-Length with Transfer-Encoding (h11 servers)."""
    name, port = server
    i = f"why.{name}".encode()
    answers, closed = exchange(port, _cl_te(CODINGS["plain"]).send(i))
    assert closed and [a.status for a in answers] == [400]
    if name in ("uvicorn-h11", "test-server"):
        detail = json.loads(answers[0].body)["detail"]
        assert "Content-Length and Transfer-Encoding" in detail
        assert answers[0].headers["connection"] == "close"


# -- the pool re-frames whatever it is given ------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("framing", "sent"),
    [
        ([(b"content-length", b"5"), (b"transfer-encoding", b"chunked")], "length"),
        ([(b"transfer-encoding", b"chunked")], "chunked"),
        ([], "chunked"),
    ],
    ids=["both", "chunked", "neither"],
)
async def test_the_pool_sends_one_framing(
    recorder: tuple[Recorder, int], each_codec: str, framing: list[tuple[bytes, bytes]], sent: str
) -> None:
    """The last line of defence, whatever a server let through: the client's
    Transfer-Encoding is dropped and the body framed once, by the pool."""
    upstream, port = recorder
    i = f"pool-{'-'.join(n.decode() for n, _ in framing) or 'none'}.{each_codec}".encode()
    pool = UpstreamPool()
    try:
        response = await pool.send(
            Instance("127.0.0.1", port),
            "POST",
            b"/a/" + i,
            [(b"host", b"up"), *framing],
            replayable(b"hello"),
            timeouts=Timeouts(connect=2, read=2, write=2, pool=2),
        )
        assert response.status == 200
        await response.aclose()
    finally:
        await pool.aclose()
    [seen] = upstream.of_case(i)
    assert (seen.framing, seen.body, seen.problems) == (sent, b"hello", [])
