"""UpstreamPool over TLS: verification, custom CA, SNI name, client certificates (mTLS)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import trustme

from gatekeep import Instance, UpstreamConnectError, UpstreamProtocolError
from gatekeep._http import empty_body
from gatekeep._upstream import Timeouts, TLSSettings, UpstreamPool

from ._upstream_servers import ok, raw_server, read_head

# Every test runs once per HTTP/1.1 codec (see tests/conftest.py).
pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("each_codec")]

FAST = Timeouts(connect=2, read=2, write=2, pool=2)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def pki(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    d = tmp_path_factory.mktemp("pki")
    paths = {
        "ca": d / "ca.pem",
        "client": d / "client.pem",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    client = ca.issue_cert("gateway@example.test")
    client.private_key_and_cert_chain_pem.write_to_path(str(paths["client"]))
    yield {k: str(v) for k, v in paths.items()}


def server_context(ca: trustme.CA, *names: str, require_client_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(ctx)
    return ctx


peers: list[object] = []


async def answer(stream: anyio.abc.ByteStream) -> None:
    buf = bytearray()
    while True:
        head, _ = await read_head(stream, buf)  # type: ignore[arg-type]
        if not head:
            return
        peer = stream.extra(anyio.streams.tls.TLSAttribute.peer_certificate, None)
        peers.append(peer)
        await stream.send(ok(b"secure"))


async def test_verified_with_custom_ca_and_reused(ca: trustme.CA, pki: dict[str, str]) -> None:
    async with raw_server(answer, ssl_context=server_context(ca, "127.0.0.1")) as port:
        pool = UpstreamPool()
        instance = Instance("127.0.0.1", port, scheme="https")
        tls = TLSSettings(ca_file=pki["ca"])
        for _ in range(2):
            r = await pool.send(instance, "GET", b"/", [], empty_body(), timeouts=FAST, tls=tls)
            assert await r.read() == b"secure"
        assert pool.stats() == {f"https://127.0.0.1:{port}": (0, 1)}
        await pool.aclose()


async def test_server_name_is_verified(ca: trustme.CA, pki: dict[str, str]) -> None:
    async with raw_server(answer, ssl_context=server_context(ca, "api.example.test")) as port:
        pool = UpstreamPool()
        instance = Instance("127.0.0.1", port, scheme="https")
        tls = TLSSettings(ca_file=pki["ca"], server_name="api.example.test")
        r = await pool.send(instance, "GET", b"/", [], empty_body(), timeouts=FAST, tls=tls)
        assert await r.read() == b"secure"
        with pytest.raises(UpstreamConnectError, match="certificate verification failed.*(mismatch|match)"):
            await pool.send(
                instance, "GET", b"/", [], empty_body(), timeouts=FAST, tls=TLSSettings(ca_file=pki["ca"])
            )
        await pool.aclose()


async def test_unknown_ca_is_refused_with_a_clear_detail(ca: trustme.CA) -> None:
    async with raw_server(answer, ssl_context=server_context(ca, "127.0.0.1")) as port:
        pool = UpstreamPool()
        instance = Instance("127.0.0.1", port, scheme="https")
        with pytest.raises(
            UpstreamConnectError, match="TLS certificate verification failed for https://127.0.0.1"
        ) as info:
            await pool.send(instance, "GET", b"/", [], empty_body(), timeouts=FAST)
        assert "unable to get local issuer certificate" in info.value.detail
        # verify=False talks to it anyway
        r = await pool.send(
            instance, "GET", b"/", [], empty_body(), timeouts=FAST, tls=TLSSettings(verify=False)
        )
        assert await r.read() == b"secure"
        await pool.aclose()


async def test_client_certificate(ca: trustme.CA, pki: dict[str, str]) -> None:
    ctx = server_context(ca, "127.0.0.1", require_client_cert=True)
    async with raw_server(answer, ssl_context=ctx) as port:
        pool = UpstreamPool()
        instance = Instance("127.0.0.1", port, scheme="https")
        peers.clear()
        tls = TLSSettings(ca_file=pki["ca"], cert_file=pki["client"])
        r = await pool.send(instance, "GET", b"/", [], empty_body(), timeouts=FAST, tls=tls)
        assert await r.read() == b"secure"
        assert peers and "gateway@example.test" in repr(peers[0])
        # without one, the server refuses.  With TLS 1.3 the client learns it after its own
        # handshake: from the server's alert (connect error) or, as this anyio server
        # closes without flushing the alert, from EOF before any response (protocol error).
        with pytest.raises((UpstreamConnectError, UpstreamProtocolError)):
            r = await pool.send(
                instance, "GET", b"/", [], empty_body(), timeouts=FAST, tls=TLSSettings(ca_file=pki["ca"])
            )
            await r.read()
        await pool.aclose()


async def test_unreadable_tls_files_are_a_connect_error(tmp_path: Path) -> None:
    pool = UpstreamPool()
    instance = Instance("127.0.0.1", 1, scheme="https")
    with pytest.raises(UpstreamConnectError, match="loading TLS settings"):
        await pool.send(
            instance, "GET", b"/", [], empty_body(), tls=TLSSettings(ca_file=str(tmp_path / "none.pem"))
        )
    await pool.aclose()


def test_key_file_needs_cert_file() -> None:
    with pytest.raises(ValueError, match="key_file needs cert_file"):
        TLSSettings(key_file="k.pem")
