"""One upstream HTTP/1.1 connection: a byte stream plus a codec.

Theory of operation
-------------------
``UpstreamConnection`` does the I/O for a sans-IO ``Codec`` and is the one
place where foreign errors (``OSError``, ``ssl``, anyio stream errors, the
codec's framing errors, timeouts) become gatekeep errors: every public step
catches them and raises ``_translated(exc)``, which reads the connection's
current *phase* (connect, write, read) to name what failed.

It also keeps the facts the pool needs to decide about a retry:

``request_sent``
    some byte of the current request was handed to the socket.  Set before
    the write, so it errs on the safe side: a non-idempotent request is
    never replayed once it may have reached the upstream.
``response_started``
    some byte of the response was read.
``closed_by_peer``
    the step failed because the upstream closed or reset the connection.

``exchange`` sends one request and returns the response head.  A request
without a body is one write, then a read.  A request with a body is uploaded
by a child task while the parent waits for the head, so that an early answer
(a ``413`` or ``401`` before the body is sent) is seen: an early error
response, or one that closes the connection, stops the upload (RFC 9112:
"a client sending a message body SHOULD monitor the network connection for
an error response"); an early success waits for the upload to finish.
The read timeout starts once the request is fully written.  Full-duplex
streaming (a response body that depends on upload progress) is not supported.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from typing import Final

import anyio
import anyio.abc

from .._errors import BadRequest, GatekeepError, UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from ._codec import END_OF_RESPONSE, NEED_DATA, Codec, ResponseHead
from ._transport import AnyioTransport, Transport, open_transport

__all__ = ["BodySource", "UpstreamConnection", "open_connection"]

_CONNECT: Final = "connect"
_WRITE: Final = "write"
_READ: Final = "read"

_PHASE_TEXT: Final = {
    _CONNECT: "connecting to",
    _WRITE: "sending the request to",
    _READ: "reading the response from",
}

_STREAM_ERRORS: Final = (
    OSError,  # includes ssl.SSLError and anyio.ConnectionFailed
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)

_RECEIVE_SIZE: Final = 64 * 1024
# How much of a request body is kept so that the request can be replayed on a
# fresh connection when a reused one turns out to be stale.
REPLAY_LIMIT: Final = 64 * 1024
# A body held in memory up to this size goes out with its head in one write.
_ONE_WRITE_LIMIT: Final = 256 * 1024


def _timeout_text(phase: str, label: str, seconds: float | None) -> str:
    within = "in time" if seconds is None else f"within {seconds:g} s"
    if phase == _CONNECT:
        return f"connect timeout: no connection to {label} {within}"
    if phase == _WRITE:
        return f"write timeout: {label} did not accept request data {within}"
    return f"read timeout: no response data from {label} {within}"


def translate(exc: Exception, phase: str, label: str, codec: type[Codec] | Codec | None) -> GatekeepError:
    """The gatekeep error for a foreign exception raised during ``phase``."""
    if isinstance(exc, GatekeepError):
        return exc
    if isinstance(exc, TimeoutError):  # anyio.fail_after, or ETIMEDOUT from the kernel
        return UpstreamTimeout(_timeout_text(phase, label, None))
    if codec is not None:
        if isinstance(exc, codec.remote_errors):
            return UpstreamProtocolError(f"invalid HTTP/1.1 response from {label}: {exc}")
        if isinstance(exc, codec.local_errors):
            return BadRequest(f"the request cannot be forwarded to {label}: {exc}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return UpstreamConnectError(f"TLS certificate verification failed for {label}: {exc.verify_message}")
    if isinstance(exc, ssl.SSLError):
        return UpstreamConnectError(f"TLS handshake with {label} failed: {exc.reason or exc}")
    if phase == _CONNECT:
        if isinstance(exc, socket.gaierror):
            return UpstreamConnectError(f"cannot resolve {label}: {exc}")
        return UpstreamConnectError(f"cannot connect to {label}: {_describe(exc)}")
    return UpstreamProtocolError(f"connection failed while {_PHASE_TEXT[phase]} {label}: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    while not str(exc) and exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc) or type(exc).__name__


class BodySource:
    """Chunks of a request body, replayable while they are few.

    Every chunk pulled is kept until more than ``REPLAY_LIMIT`` bytes (and
    more than one chunk) were pulled; until then ``rewind`` makes the body
    start over, for a retry on a fresh connection.  A body the gateway
    already holds in memory (``gatekeep._http.replayable``) rewinds always.
    """

    __slots__ = ("_body", "_exhausted", "_it", "_kept", "_pos", "_replayable", "_size")

    def __init__(self, body: AsyncIterable[bytes], replayable: bool) -> None:
        self._body = body
        self._replayable = replayable
        self._it: AsyncIterator[bytes] = aiter(body)
        self._kept: list[bytes] | None = []
        self._pos = 0
        self._size = 0
        self._exhausted = False

    async def next(self) -> bytes | None:
        """The next non-empty chunk, ``None`` at the end.  Errors of the body propagate as they are."""
        kept = self._kept
        if kept is not None and self._pos < len(kept):
            chunk = kept[self._pos]
            self._pos += 1
            return chunk
        if self._exhausted:
            return None
        it = self._it
        while True:
            try:
                chunk = await it.__anext__()
            except StopAsyncIteration:
                self._exhausted = True
                return None
            if chunk:
                break
        if kept is not None:
            self._size += len(chunk)
            if self._size > REPLAY_LIMIT and kept:
                self._kept = None
            else:
                kept.append(chunk)
                self._pos += 1
        return chunk

    def in_memory(self) -> bytes | None:
        """The whole body when the gateway already holds it in memory, else ``None``."""
        if self._replayable and self._pos == 0 and not self._exhausted:
            data = getattr(self._body, "data", None)
            if isinstance(data, bytes):
                return data
        return None

    @property
    def untouched(self) -> bool:
        """No chunk was read from the body yet."""
        return self._size == 0 and not self._exhausted and self._kept == [] and self._pos == 0

    def rewind(self) -> bool:
        """Start the body over; ``False`` when that is no longer possible."""
        if self._replayable:
            self._it = aiter(self._body)
            self._kept = []
            self._pos = self._size = 0
            self._exhausted = False
            return True
        if self._kept is None:
            return False
        self._pos = 0
        return True


async def open_connection(
    host: str,
    port: int,
    *,
    label: str,
    codec: Codec,
    connect_timeout: float | None,
    ssl_context: ssl.SSLContext | None = None,
    server_name: str | None = None,
) -> UpstreamConnection:
    """Connect (and do the TLS handshake) within ``connect_timeout`` seconds.

    Raises:
        UpstreamConnectError: refused, reset, unresolvable, or TLS failed.
        UpstreamTimeout: not connected within ``connect_timeout``.
    """
    try:
        with anyio.fail_after(connect_timeout):
            transport = await open_transport(host, port, ssl_context=ssl_context, server_name=server_name)
    except TimeoutError as exc:
        raise UpstreamTimeout(_timeout_text(_CONNECT, label, connect_timeout)) from exc
    except Exception as exc:
        raise translate(exc, _CONNECT, label, None) from exc
    return UpstreamConnection(transport, codec, label)


class UpstreamConnection:
    """A connected byte stream speaking HTTP/1.1 through a codec (see module doc)."""

    __slots__ = (
        "_transport",
        "closed",
        "closed_by_peer",
        "codec",
        "cycles",
        "idle_since",
        "label",
        "must_close",
        "phase",
        "request_sent",
        "response_started",
    )

    def __init__(self, transport: Transport | anyio.abc.ByteStream, codec: Codec, label: str) -> None:
        if isinstance(transport, anyio.abc.ByteStream):
            transport = AnyioTransport(transport)
        self._transport: Transport = transport
        self.codec = codec
        self.label = label
        self.phase = _WRITE
        self.cycles = 0  # completed request/response cycles
        self.idle_since = 0.0
        self.closed = False
        self.must_close = False
        self.request_sent = False
        self.response_started = False
        self.closed_by_peer = False

    def __repr__(self) -> str:
        return f"<UpstreamConnection {self.label} cycles={self.cycles} closed={self.closed}>"

    # -- pool bookkeeping ----------------------------------------------------

    def is_stale(self) -> bool:
        """Did the upstream close (or write to) this idle connection?  Never blocks."""
        return self.closed or self._transport.is_stale()

    @property
    def is_reusable(self) -> bool:
        return not (self.closed or self.must_close or self.closed_by_peer) and self.codec.is_reusable

    def start_next_cycle(self) -> None:
        self.codec.start_next_cycle()
        self.cycles += 1

    async def aclose(self) -> None:
        """Close at once (no graceful TLS shutdown); idempotent; safe when cancelled."""
        if not self.closed:
            self.closed = True
            transport = self._transport
            transport.abort()
            aclose = getattr(transport, "aclose", None)
            if aclose is not None:
                await aclose()

    # -- I/O steps, each translating what it raises (``_translated``) ----------

    def _translated(self, exc: Exception) -> GatekeepError:
        """The gatekeep error for ``exc``, raised by a step of this connection (see ``translate``)."""
        if isinstance(exc, _STREAM_ERRORS) and not isinstance(exc, ssl.SSLError | TimeoutError):
            self.closed_by_peer = True
        return translate(exc, self.phase, self.label, self.codec)

    async def _write(self, data: bytes | list[bytes], within: float | None) -> None:
        self.request_sent = True
        try:
            await self._transport.send(data, within)
        except TimeoutError:
            self.must_close = True  # a partial write may have gone out
            raise UpstreamTimeout(_timeout_text(_WRITE, self.label, within)) from None

    async def _read(self, within: float | None) -> bytes:
        try:
            data = await self._transport.receive(within)
        except TimeoutError:
            raise UpstreamTimeout(_timeout_text(_READ, self.label, within)) from None
        if not data:
            self.closed_by_peer = True
            return b""
        self.response_started = True
        return data

    async def send_head(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        *,
        end: bool,
        within: float | None,
        body: bytes = b"",
    ) -> None:
        """Write the request head, then ``body`` and the request's end if ``end``, in one write."""
        self.phase = _WRITE
        try:
            codec = self.codec
            data = codec.send_request_head(method, target, headers)
            if body:
                parts = [data, codec.send_body(body)]
                if end:
                    tail = codec.end_request()
                    if tail:
                        parts.append(tail)
                await self._write(parts, within)
                return
            if end:
                tail = codec.end_request()
                if tail:
                    data += tail
            await self._write(data, within)
        except GatekeepError:
            raise
        except Exception as exc:
            raise self._translated(exc) from exc

    async def send_body(self, chunk: bytes, within: float | None) -> None:
        self.phase = _WRITE
        try:
            await self._write(self.codec.send_body(chunk), within)
        except GatekeepError:
            raise
        except Exception as exc:
            raise self._translated(exc) from exc

    async def end_request(self, within: float | None) -> None:
        self.phase = _WRITE
        try:
            tail = self.codec.end_request()
            if tail:
                await self._write(tail, within)
        except GatekeepError:
            raise
        except Exception as exc:
            raise self._translated(exc) from exc

    async def receive_head(
        self, within: float | None, *, first: bytes = b"", write_within: float | None = None
    ) -> ResponseHead:
        """Read until the response head is complete.

        ``first``: bytes to write before (a whole request, ``exchange`` without
        a body: its one write and its read in one coroutine), within
        ``write_within`` seconds; the phase is then already ``_WRITE``.

        Raises:
            UpstreamProtocolError: garbage, or the connection closed first.
            UpstreamTimeout: no byte for ``within`` seconds (or ``first`` not
                accepted within ``write_within``).
        """
        codec = self.codec
        try:
            if first:
                self.request_sent = True
                try:
                    await self._transport.send(first, write_within)
                except TimeoutError:
                    self.must_close = True  # a partial write may have gone out
                    raise UpstreamTimeout(_timeout_text(_WRITE, self.label, write_within)) from None
            self.phase = _READ
            while True:
                event = codec.next_event()
                if event is NEED_DATA:
                    try:
                        data = await self._transport.receive(within)
                    except TimeoutError:
                        raise UpstreamTimeout(_timeout_text(_READ, self.label, within)) from None
                    if data:
                        self.response_started = True
                    else:
                        self.closed_by_peer = True
                        if not self.response_started:
                            raise UpstreamProtocolError(
                                f"{self.label} closed the connection without sending a response"
                            )
                        raise UpstreamProtocolError(
                            f"{self.label} closed the connection in the response head"
                        )
                    codec.receive_data(data)
                elif type(event) is ResponseHead:
                    return event
                else:  # pragma: no cover - a codec bug
                    raise UpstreamProtocolError(f"unexpected {event!r} before the response head")
        except GatekeepError:
            raise
        except Exception as exc:
            raise self._translated(exc) from exc

    def take_buffered(self, limit: int) -> tuple[list[bytes], bool]:
        """Body chunks parsed already (about ``limit`` bytes at most, no I/O); whether the body ended."""
        codec = self.codec
        chunks: list[bytes] = []
        size = 0
        try:
            while size < limit:
                event = codec.next_event()
                if event is END_OF_RESPONSE:
                    return chunks, True
                if event is NEED_DATA:
                    break
                chunks.append(event)  # type: ignore[arg-type]
                size += len(event)  # type: ignore[arg-type]
        except GatekeepError:
            raise
        except Exception as exc:
            raise self._translated(exc) from exc
        return chunks, False

    async def receive_body_chunk(self, within: float | None) -> bytes | None:
        """The next piece of the response body, ``None`` once it ended.

        Raises:
            UpstreamProtocolError: bad framing, or closed before the end.
            UpstreamTimeout: no byte for ``within`` seconds.
        """
        self.phase = _READ
        codec = self.codec
        try:
            while True:
                event = codec.next_event()
                if event is NEED_DATA:
                    codec.receive_data(await self._read(within))
                elif type(event) is bytes:
                    return event
                elif event is END_OF_RESPONSE:
                    return None
                else:  # pragma: no cover - a codec bug
                    raise UpstreamProtocolError(f"unexpected {event!r} in the response body")
        except GatekeepError:
            raise
        except Exception as exc:
            raise self._translated(exc) from exc

    # -- one request/response exchange ---------------------------------------

    def exchange(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: BodySource | None,
        *,
        read_timeout: float | None,
        write_timeout: float | None,
    ) -> Awaitable[ResponseHead]:
        """Send one request (``body`` ``None``: no body) and return the response head.

        (A plain function handing back the coroutine that does it: one frame
        less on every read the exchange waits for.)
        """
        self.request_sent = self.response_started = self.closed_by_peer = False
        if body is None:
            # The head and the request's end in one write, then the answer's head.
            self.phase = _WRITE
            try:
                codec = self.codec
                request = codec.send_request_head(method, target, headers)
                tail = codec.end_request()
            except GatekeepError:
                raise
            except Exception as exc:
                raise self._translated(exc) from exc
            if tail:
                request += tail
            return self.receive_head(read_timeout, first=request, write_within=write_timeout)
        data = body.in_memory()
        if data is not None and len(data) <= _ONE_WRITE_LIMIT:
            return self._exchange_in_memory(method, target, headers, data, read_timeout, write_timeout)
        return self._exchange_with_body(method, target, headers, body, read_timeout, write_timeout)

    async def _exchange_in_memory(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        data: bytes,
        read_timeout: float | None,
        write_timeout: float | None,
    ) -> ResponseHead:
        # The whole body is in memory and small: head, body and end in one
        # write, no upload task (an early answer is still read after it).
        try:
            await self.send_head(method, target, headers, end=True, within=write_timeout, body=data)
        except UpstreamProtocolError:
            if not self.closed_by_peer:
                raise
            # It hung up while we wrote: it may have answered first (a 413).
            self.must_close = True
            try:
                return await self.receive_head(read_timeout)
            except GatekeepError:
                pass
            raise
        return await self.receive_head(read_timeout)

    async def _exchange_with_body(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: BodySource,
        read_timeout: float | None,
        write_timeout: float | None,
    ) -> ResponseHead:
        reader_scope = anyio.CancelScope()
        head: ResponseHead | None = None
        upload_error: Exception | None = None
        upload_done = False

        async def upload() -> None:
            nonlocal upload_error, upload_done
            try:
                await self.send_head(method, target, headers, end=False, within=write_timeout)
                while (chunk := await body.next()) is not None:
                    await self.send_body(chunk, write_timeout)
                await self.end_request(write_timeout)
            except Exception as exc:
                upload_error = exc
            upload_done = True
            if head is not None:
                return  # the parent has the head and waits for this task
            if upload_error is None or (type(upload_error) is UpstreamProtocolError and self.closed_by_peer):
                # Sent, or the upstream hung up while we were writing: it may
                # still have answered (an early 413), so read what it sent.
                if read_timeout is not None:
                    reader_scope.deadline = anyio.current_time() + read_timeout
            else:
                reader_scope.cancel()  # the client's body failed, or a write timed out

        read_error: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(upload)
            with reader_scope:
                try:
                    head = await self.receive_head(None)
                except Exception as exc:
                    read_error = exc
            if read_error is not None or head is None:
                tg.cancel_scope.cancel()
            elif not upload_done and (head.status >= 400 or _says_close(head.headers)):
                self.must_close = True  # the upload is cut mid-message
                tg.cancel_scope.cancel()

        if head is None:
            if upload_error is not None and (read_error is None or not self.closed_by_peer):
                raise upload_error
            if read_error is not None:
                raise read_error
            raise UpstreamTimeout(_timeout_text(_READ, self.label, read_timeout))
        if upload_error is not None:
            self.must_close = True
            if not isinstance(upload_error, UpstreamProtocolError | UpstreamTimeout):
                raise upload_error  # the client's body broke: the request is incomplete
        return head


def _says_close(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"connection" and b"close" in value.lower():
            return True
    return False
