"""Helpers for the mTLS tests, and the checks that they are what they claim.

``serve_tls_asgi``: gatekeep's small h11 server behind an anyio TLS listener
that requires a client certificate, filling the ASGI TLS extension
(``scope["extensions"]["tls"]["client_cert_chain"]``) from the verified
peer certificate of each connection, as the spec says a server should.  No
released ASGI server we test fills it yet (see docs/authorization.md), so
this is the stand-in that lets the code that reads it run over real TLS.

``Certs``: a trustme CA with a server certificate for 127.0.0.1, client
certificates for the gateway and for someone else, and a second CA.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
import pytest
import trustme
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSAttribute, TLSListener, TLSStream

from gatekeep._miniserver import ASGI, _connection

pytestmark = pytest.mark.anyio


@attrs.define
class Certs:
    ca: trustme.CA
    other_ca: trustme.CA
    server: trustme.LeafCert
    gateway: trustme.LeafCert
    mallory: trustme.LeafCert
    stranger: trustme.LeafCert  # "gateway.internal", but from the other CA
    directory: Path

    @classmethod
    def make(cls, directory: Path) -> Certs:
        ca, other = trustme.CA(), trustme.CA()
        certs = cls(
            ca=ca,
            other_ca=other,
            server=ca.issue_cert("127.0.0.1", "localhost"),
            gateway=ca.issue_cert("gateway.internal", common_name="gateway"),
            mallory=ca.issue_cert("mallory.internal", common_name="mallory"),
            stranger=other.issue_cert("gateway.internal", common_name="gateway"),
            directory=directory,
        )
        ca.cert_pem.write_to_path(str(directory / "ca.pem"))
        certs.server.cert_chain_pems[0].write_to_path(str(directory / "server.pem"))
        certs.server.private_key_pem.write_to_path(str(directory / "server.key"))
        for name in ("gateway", "mallory", "stranger"):
            leaf: trustme.LeafCert = getattr(certs, name)
            leaf.private_key_and_cert_chain_pem.write_to_path(str(directory / f"{name}.pem"))
        return certs

    def path(self, name: str) -> str:
        return str(self.directory / name)

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.configure_cert(ctx)
        self.ca.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def client_context(self, leaf: trustme.LeafCert | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.ca.configure_trust(ctx)
        if leaf is not None:
            leaf.configure_cert(ctx)
        return ctx


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs.make(tmp_path)


def _tls_extension(stream: TLSStream) -> dict[str, Any]:
    der = stream.extra(TLSAttribute.peer_certificate_binary)
    chain = [ssl.DER_cert_to_PEM_cert(der)] if der else []
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": None,
        "cipher_suite": None,
    }


@asynccontextmanager
async def serve_tls_asgi(app: ASGI, context: ssl.SSLContext) -> AsyncIterator[int]:
    """Serve ``app`` over TLS on 127.0.0.1 (an ephemeral port, yielded) with the TLS extension."""
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = tcp.extra(SocketAttribute.local_port)
    listener = TLSListener(tcp, context, standard_compatible=False, handshake_timeout=5)

    async def handle(stream: TLSStream) -> None:
        extension = _tls_extension(stream)

        async def with_tls(scope: Any, receive: Any, send: Any) -> None:
            scope["scheme"] = "https"
            scope["extensions"] = {"tls": extension}
            await app(scope, receive, send)

        await _connection(stream, with_tls)  # type: ignore[arg-type]

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle, tg)
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()


async def https(
    port: int,
    certs: Certs,
    leaf: trustme.LeafCert | None,
    method: str = "GET",
    path: str = "/",
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    async with httpx.AsyncClient(verify=certs.client_context(leaf), timeout=10) as client:
        return await client.request(method, f"https://127.0.0.1:{port}{path}", headers=headers)


class ScopeEcho:
    """Answers with the TLS extension it saw."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        import json

        tls = scope.get("extensions", {}).get("tls", {})
        body = json.dumps({"chain": len(tls.get("client_cert_chain", ()))}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def test_the_tls_server_requires_and_exposes_the_client_certificate(certs: Certs) -> None:
    async with serve_tls_asgi(ScopeEcho(), certs.server_context()) as port:
        response = await https(port, certs, certs.gateway)
        assert response.json() == {"chain": 1}
        for leaf in (None, certs.stranger):
            with pytest.raises((httpx.TransportError, ssl.SSLError)):
                await https(port, certs, leaf)
