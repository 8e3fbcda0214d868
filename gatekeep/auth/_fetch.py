"""A tiny HTTP/1.1 GET client (h11 over anyio) for discovery documents and JWKS.

One connection per fetch (fetches are minutes apart), TLS verified against
the system's CAs or a given bundle, a deadline for the whole exchange and a
bound on the body.  Every failure becomes ``FetchError``: this is the error
boundary for sockets, TLS and h11.
"""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

import anyio
import anyio.abc
import attrs
import h11

__all__ = ["FetchError", "Fetched", "fetch", "is_loopback_url"]

_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


class FetchError(Exception):
    """The document could not be fetched (network, TLS, HTTP status, size, time)."""


@attrs.frozen
class Fetched:
    status: int
    headers: dict[str, str]
    body: bytes


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in _LOOPBACK or host.startswith("127.")


async def fetch(
    url: str,
    *,
    time_limit: float = 5.0,
    max_size: int = 1024 * 1024,
    ssl_context: ssl.SSLContext | None = None,
) -> Fetched:
    """GET ``url``; the answer must be 200.

    Raises:
        FetchError: anything went wrong, with a short reason.
    """
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise FetchError(f"invalid URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError("the URL must be http(s)://host/...")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc.rpartition("@")[2]
    try:
        with anyio.fail_after(time_limit):
            return await _get(parts.scheme, parts.hostname, port, target, host_header, max_size, ssl_context)
    except TimeoutError as exc:
        raise FetchError(f"no answer within {time_limit:g} s") from exc
    except ssl.SSLCertVerificationError as exc:
        # "unable to get local issuer certificate" (no ca_file?), "Hostname mismatch ..."
        raise FetchError(
            f"TLS certificate of {parts.hostname} refused: {exc.verify_message or exc.reason}"
        ) from exc
    except (OSError, anyio.BrokenResourceError, anyio.EndOfStream, ssl.SSLError) as exc:
        raise FetchError(f"connection failed: {exc!r}") from exc
    except h11.ProtocolError as exc:
        raise FetchError(f"invalid HTTP answer: {exc}") from exc


async def _get(
    scheme: str,
    host: str,
    port: int,
    target: str,
    host_header: str,
    max_size: int,
    ssl_context: ssl.SSLContext | None,
) -> Fetched:
    tls = None
    if scheme == "https":
        tls = ssl_context or ssl.create_default_context()
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
    stream: anyio.abc.ByteStream
    if tls is not None:
        stream = await anyio.connect_tcp(
            host, port, ssl_context=tls, tls_hostname=host, tls_standard_compatible=False
        )
    else:
        stream = await anyio.connect_tcp(host, port)
    async with stream:
        request = h11.Request(
            method="GET",
            target=target,
            headers=[
                ("host", host_header),
                ("accept", "application/json"),
                ("user-agent", "gatekeep"),
                ("connection", "close"),
            ],
        )
        await stream.send((conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b""))
        status = 0
        headers: dict[str, str] = {}
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive(65536)
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    data = b""
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > max_size:
                    raise FetchError(f"the document is larger than {max_size} bytes")
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise FetchError("the connection closed before the answer was complete")
    if status != 200:
        raise FetchError(f"HTTP status {status}")
    return Fetched(status, headers, bytes(body))
