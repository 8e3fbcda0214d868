"""HTTPS on the front server (``[server.tls]``), in process, over real TLS with trustme certificates.

The handshake decides what ``verify_client`` promises; the certificate a client
asked for by name (SNI) is the one it gets; the verified client certificate
reaches the app as the ASGI TLS extension; keep-alive holds over HTTPS; the
file problems an operator makes are config errors with their path; a reload
swaps certificates for new handshakes and keeps the old ones when a new file
is bad.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from cryptography import x509

from gatekeep import ConfigError, load_config
from gatekeep._front import ServerSettings, TLSSettings, check_tls
from gatekeep._front._server import serve
from gatekeep._front._tls import TLSTerminator
from gatekeep.auth import peer_certificate_from_tls
from tests.test_mtls_server import Certs

pytestmark = pytest.mark.anyio


class TLSEcho:
    """Answers with what the scope says about TLS."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        tls = scope.get("extensions", {}).get("tls")
        body = json.dumps({"scheme": scope["scheme"], "tls": tls, "client": scope["client"]}).encode()
        headers = [(b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs.make(tmp_path)


def tls_settings(certs: Certs, **overrides: Any) -> TLSSettings:
    fields: dict[str, Any] = {
        "cert_file": certs.path("server.pem"),
        "key_file": certs.path("server.key"),
        "client_ca_file": certs.path("ca.pem"),
        "verify_client": "optional",
        **overrides,
    }
    return TLSSettings(**fields)


@asynccontextmanager
async def serving_tls(tls: TLSSettings) -> AsyncIterator[int]:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    task = asyncio.create_task(serve(TLSEcho(), ServerSettings(tls=tls), sock=sock, stop=stop))
    await asyncio.sleep(0.2)
    try:
        yield port
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 10) == 0


async def get(port: int, certs: Certs, leaf: trustme.LeafCert | None, path: str = "/") -> httpx.Response:
    async with httpx.AsyncClient(verify=certs.client_context(leaf), timeout=10) as client:
        return await client.get(f"https://127.0.0.1:{port}{path}")


async def handshake(
    port: int, context: ssl.SSLContext, server_name: str | None = None
) -> tuple[x509.Certificate, str | None]:
    """The server's certificate and the ALPN protocol it chose."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=server_name or "127.0.0.1"
    )
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True)
    protocol = ssl_object.selected_alpn_protocol()
    writer.close()
    return x509.load_der_x509_certificate(der), protocol


# -- the user's view ------------------------------------------------------------------


async def test_the_verified_client_certificate_reaches_the_app_as_the_tls_extension(certs: Certs) -> None:
    async with serving_tls(tls_settings(certs)) as port:
        answer = (await get(port, certs, certs.gateway)).json()
    assert answer["scheme"] == "https"
    tls = answer["tls"]
    assert tls["tls_version"] in (0x0303, 0x0304)
    gateway = x509.load_pem_x509_certificate(certs.gateway.cert_chain_pems[0].bytes())
    assert tls["client_cert_name"] == gateway.subject.rfc4514_string()
    # The chain OpenSSL verified, leaf first, then the CA.
    assert len(tls["client_cert_chain"]) == 2
    assert peer_certificate_from_tls(tls) == gateway  # what mtls-auth reads
    assert answer["client"][0] == "127.0.0.1"  # the TCP peer


async def test_optional_lets_a_client_without_a_certificate_through_without_one(certs: Certs) -> None:
    async with serving_tls(tls_settings(certs)) as port:
        answer = (await get(port, certs, None)).json()
    assert answer["scheme"] == "https"
    assert answer["tls"]["client_cert_chain"] == []
    assert peer_certificate_from_tls(answer["tls"]) is None


async def test_required_refuses_a_client_without_a_certificate_in_the_handshake(certs: Certs) -> None:
    async with serving_tls(tls_settings(certs, verify_client="required")) as port:
        assert (await get(port, certs, certs.gateway)).status_code == 200
        with pytest.raises((httpx.TransportError, ssl.SSLError)):
            await get(port, certs, None)


@pytest.mark.parametrize("mode", ["optional", "required"])
async def test_a_certificate_from_another_ca_is_refused_in_the_handshake(certs: Certs, mode: str) -> None:
    async with serving_tls(tls_settings(certs, verify_client=mode)) as port:
        with pytest.raises((httpx.TransportError, ssl.SSLError)):
            await get(port, certs, certs.stranger)


async def test_none_asks_for_no_certificate(certs: Certs) -> None:
    settings = tls_settings(certs, verify_client="none", client_ca_file=None)
    async with serving_tls(settings) as port:
        answer = (await get(port, certs, certs.gateway)).json()
    assert answer["tls"]["client_cert_chain"] == []


async def test_alpn_is_http_1_1_and_a_version_below_min_version_is_refused(certs: Certs) -> None:
    async with serving_tls(tls_settings(certs, min_version="1.3")) as port:
        client = certs.client_context(None)
        client.set_alpn_protocols(["h2", "http/1.1"])
        _, protocol = await handshake(port, client)
        assert protocol == "http/1.1"
        old = certs.client_context(None)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await handshake(port, old)


async def test_keep_alive_holds_over_https_for_many_requests(certs: Certs) -> None:
    async with serving_tls(tls_settings(certs)) as port:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=certs.client_context(certs.gateway), server_hostname="127.0.0.1"
        )
        for n in range(300):
            writer.write(b"GET /%d HTTP/1.1\r\nhost: gk\r\n\r\n" % n)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(
                next(line for line in head.split(b"\r\n") if line.startswith(b"content-length"))[15:]
            )
            body = json.loads(await reader.readexactly(length))
            assert len(body["tls"]["client_cert_chain"]) == 2
        writer.close()


# -- several certificates (SNI) -------------------------------------------------------


async def test_each_name_gets_its_certificate_and_others_the_default(certs: Certs) -> None:
    api = certs.ca.issue_cert("api.example.com")
    shop = certs.ca.issue_cert("*.shop.example")
    for file, leaf in (("api", api), ("shop", shop)):
        leaf.cert_chain_pems[0].write_to_path(certs.path(f"{file}.crt"))
        leaf.private_key_pem.write_to_path(certs.path(f"{file}.key"))
    table = {
        "cert_file": certs.path("server.pem"),
        "key_file": certs.path("server.key"),
        "certificates": [
            # Its names from the certificate's subjectAltName.
            {"cert_file": certs.path("api.crt"), "key_file": certs.path("api.key")},
            {
                "cert_file": certs.path("shop.crt"),
                "key_file": certs.path("shop.key"),
                "server_names": ["*.shop.example"],
            },
        ],
    }
    settings = load_config({"server": {"tls": table}}).server.tls
    assert settings is not None
    async with serving_tls(settings) as port:
        client = certs.client_context(None)
        client.check_hostname = False  # which certificate comes back is the question here
        cases: list[tuple[str | None, str]] = [
            ("api.example.com", "api.example.com"),
            ("API.Example.com", "api.example.com"),
            ("www.shop.example", "*.shop.example"),
            ("other.example", "127.0.0.1"),
            (None, "127.0.0.1"),  # an IP address: Python sends no SNI
        ]
        for name, expected in cases:
            cert, _ = await handshake(port, client, name)
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = [
                *san.get_values_for_type(x509.DNSName),
                *map(str, san.get_values_for_type(x509.IPAddress)),
            ]
            assert expected in names, (name, names)


# -- reload ---------------------------------------------------------------------------


async def test_a_reload_serves_the_new_certificate_and_a_bad_file_keeps_the_old(
    certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    settings = tls_settings(certs, reload_interval=0)
    terminator = TLSTerminator(settings)
    before = certs.server
    after = certs.ca.issue_cert("127.0.0.1", "renewed.example")
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=terminator.context)
    port = server.sockets[0].getsockname()[1]
    client = certs.client_context(None)
    async with server:
        assert _serial(await handshake(port, client)) == _serial_of(before)
        after.cert_chain_pems[0].write_to_path(certs.path("server.pem"))
        after.private_key_pem.write_to_path(certs.path("server.key"))
        assert terminator.reload()
        assert _serial(await handshake(port, client)) == _serial_of(after)
        # Half a renewal: the new certificate with the old key.
        certs.server.cert_chain_pems[0].write_to_path(certs.path("server.pem"))
        assert not terminator.reload()
        assert "TLS reload failed, keeping the certificates in use" in caplog.text
        assert "server.tls.key_file" in caplog.text
        assert _serial(await handshake(port, client)) == _serial_of(after)


async def test_a_changed_file_is_reloaded_by_the_watch(certs: Certs) -> None:
    terminator = TLSTerminator(tls_settings(certs, reload_interval=0.05))
    watch = asyncio.create_task(terminator.watch())
    try:
        renewed = certs.ca.issue_cert("127.0.0.1")
        renewed.private_key_and_cert_chain_pem.write_to_path(certs.path("server.pem"))
        renewed.private_key_pem.write_to_path(certs.path("server.key"))
        for _ in range(100):
            if terminator.reloads:
                break
            await asyncio.sleep(0.02)
        assert terminator.reloads == 1
    finally:
        watch.cancel()


def _serial(answer: tuple[x509.Certificate, str | None]) -> int:
    return answer[0].serial_number


def _serial_of(leaf: trustme.LeafCert) -> int:
    return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number


# -- the operator's view: config errors with their path -------------------------------


def tls_errors(table: dict[str, Any]) -> list[str]:
    try:
        config = load_config({"server": {"tls": table}})
        check_tls(config.server.tls)
    except ConfigError as exc:
        return [str(e) for e in exc.errors]
    return []


def test_file_problems_are_config_errors_with_their_path(certs: Certs, tmp_path: Path) -> None:
    other = certs.ca.issue_cert("127.0.0.1")
    other.private_key_pem.write_to_path(str(tmp_path / "other.key"))
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    base = {"cert_file": certs.path("server.pem"), "key_file": certs.path("server.key")}
    assert tls_errors(base) == []
    missing = tls_errors({**base, "cert_file": str(tmp_path / "nope.pem")})
    assert len(missing) == 1
    assert missing[0].startswith("server.tls.cert_file: cannot read") and "No such file" in missing[0]
    mismatch = tls_errors({**base, "key_file": str(tmp_path / "other.key")})
    assert mismatch == [
        f"server.tls.key_file: {str(tmp_path / 'other.key')!r} is not the key of the "
        f"certificate in {certs.path('server.pem')!r}"
    ]
    junk = tls_errors({**base, "cert_file": str(tmp_path / "junk.pem")})
    assert junk == [f"server.tls.cert_file: {str(tmp_path / 'junk.pem')!r} holds no PEM certificate"]
    ca = tls_errors({**base, "client_ca_file": str(tmp_path / "junk.pem"), "verify_client": "required"})
    assert ca == [f"server.tls.client_ca_file: {str(tmp_path / 'junk.pem')!r} holds no PEM CA certificate"]
    sni = tls_errors(
        {
            **base,
            "certificates": [{"cert_file": str(tmp_path / "nope.pem"), "key_file": certs.path("server.key")}],
        }
    )
    assert sni[0].startswith("server.tls.certificates[0].cert_file: cannot read")


def test_modes_and_versions_are_checked_with_their_path(certs: Certs) -> None:
    base = {"cert_file": certs.path("server.pem"), "key_file": certs.path("server.key")}
    assert tls_errors({**base, "verify_client": "maybe"}) == [
        "server.tls.verify_client: must be one of 'none', 'optional', 'required', got 'maybe'"
    ]
    assert tls_errors({**base, "min_version": "1.0"}) == [
        "server.tls.min_version: must be one of '1.2', '1.3', got '1.0'"
    ]
    assert tls_errors({**base, "verify_client": "required"}) == [
        'server.tls: verify_client = "required" needs client_ca_file'
    ]
    assert tls_errors({**base, "client_ca_file": certs.path("ca.pem")}) == [
        'server.tls: client_ca_file is set but verify_client = "none": say "optional" or "required"'
    ]
    assert tls_errors({"cert_file": certs.path("server.pem")}) == ["server.tls.key_file: is required"]
    assert tls_errors({**base, "certificates": [{**base, "server_names": ["a*.example"]}]}) == [
        "server.tls.certificates[0].server_names: expected a host name or *.domain, got 'a*.example'"
    ]


# -- the attacker's view --------------------------------------------------------------


async def test_a_stalled_handshake_is_dropped_after_handshake_timeout(certs: Certs) -> None:
    async with serving_tls(tls_settings(certs, handshake_timeout=0.3)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, never a byte of HTTP
        assert asyncio.get_running_loop().time() - started < 3
        writer.close()


async def test_plain_http_to_the_tls_port_is_not_served(certs: Certs) -> None:
    async with serving_tls(tls_settings(certs)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nhost: gk\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        assert b"HTTP/1.1" not in answer
        writer.close()


async def test_a_certificate_claimed_in_headers_is_not_a_certificate(certs: Certs) -> None:
    pem = certs.gateway.cert_chain_pems[0].bytes().decode().replace("\n", "")
    async with serving_tls(tls_settings(certs)) as port:
        async with httpx.AsyncClient(verify=certs.client_context(None), timeout=10) as client:
            answer = await client.get(
                f"https://127.0.0.1:{port}/",
                headers={"x-ssl-client-cert": pem, "x-client-verify": "SUCCESS", "ssl-client-cert": pem},
            )
    assert answer.json()["tls"]["client_cert_chain"] == []


async def test_a_reload_applies_a_new_client_ca_to_new_handshakes(certs: Certs) -> None:
    terminator = TLSTerminator(tls_settings(certs, verify_client="required", reload_interval=0))

    async def echo_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok" if writer.get_extra_info("ssl_object").getpeercert(binary_form=True) else b"")
        await writer.drain()
        writer.close()

    async def admitted(leaf: trustme.LeafCert) -> bool:
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=certs.client_context(leaf), server_hostname="127.0.0.1"
            )
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
        except (ssl.SSLError, ConnectionError):
            return False
        return answer == b"ok"

    server = await asyncio.start_server(echo_peer, "127.0.0.1", 0, ssl=terminator.context)
    port = server.sockets[0].getsockname()[1]
    async with server:
        assert await admitted(certs.gateway) and not await admitted(certs.stranger)
        certs.other_ca.cert_pem.write_to_path(certs.path("ca.pem"))  # trust moves to the other CA
        assert terminator.reload()
        assert await admitted(certs.stranger) and not await admitted(certs.gateway)
