"""``mtls-auth``: a consumer from the verified client certificate.

End to end under gunicorn terminating TLS with ``--cert-reqs 2`` (a real
server that hands the verified peer certificate to the app: ``gunicorn.socket``
in the WSGI environ), and over the ASGI TLS extension with the stand-in TLS
server of ``test_mtls_server`` (no released ASGI server fills it yet).
"""

from __future__ import annotations

import importlib.util
import json
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest

from gatekeep import ConfigError, ConsumerConfig, Gateway, Request, asgi
from gatekeep.auth import certificate_names, peer_certificate_from_tls
from gatekeep.plugins.mtls_auth import (
    MTLSAuthConfig,
    MTLSAuthenticator,
    MTLSAuthFilter,
    NoClientCertificate,
    UnknownClientCertificate,
)
from gatekeep.testing import EchoUpstream, serve_asgi

from ._servers import PY, free_port, running, upstream_thread
from .test_mtls_server import Certs, https, serve_tls_asgi

pytestmark = pytest.mark.anyio


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs.make(tmp_path)


def config(upstream: int) -> dict[str, Any]:
    return {
        "services": [
            {
                "name": "orders",
                "url": f"http://127.0.0.1:{upstream}",
                "routes": [{"name": "orders", "paths": ["/orders"]}],
                "plugins": [
                    {"name": "mtls-auth"},
                    {"name": "rbac", "config": {"rules": [{"methods": ["GET"], "any_of": ["internal"]}]}},
                ],
            }
        ],
        "consumers": [
            {"username": "gateway.internal", "groups": ["internal"]},
            {"username": "partner", "custom_id": "mallory"},  # matched by the cert's CN
        ],
    }


def pem_of(leaf: Any) -> str:
    return str(leaf.cert_chain_pems[0].bytes().decode())


# -- the authenticator, sans server -------------------------------------------------


def test_certificate_names_and_the_tls_extension_shapes(certs: Certs) -> None:
    pem = pem_of(certs.gateway)
    der = ssl.PEM_cert_to_DER_cert(pem)
    for tls in ({"client_cert_chain": [pem]}, {"client_cert_chain": pem}, {"client_cert": der}):
        cert = peer_certificate_from_tls(tls)
        assert cert is not None
        names = certificate_names(cert)
        assert names.dns == ("gateway.internal",) and names.cn == "gateway"
        assert "CN=gateway" in names.dn
    for empty in (
        None,
        {},
        {"client_cert_chain": []},
        {"client_cert_chain": ["garbage"]},
        {"client_cert": b"x"},
    ):
        assert peer_certificate_from_tls(empty) is None


async def test_authenticator_maps_names_to_consumers(certs: Certs) -> None:
    consumers = {c.key: c for c in (ConsumerConfig(username="gateway.internal", groups=("internal",)),)}
    auth = MTLSAuthenticator(MTLSAuthConfig(), consumers)
    request = Request("GET", "/", state={"tls": {"client_cert_chain": [pem_of(certs.gateway)]}})
    identity = await auth.authenticate(request)
    assert identity is not None
    assert identity.subject == "gateway.internal" and identity.consumer == "gateway.internal"
    assert identity.groups == {"internal"}
    assert request.consumer is consumers["gateway.internal"]
    assert await auth.authenticate(Request("GET", "/")) is None
    with pytest.raises(UnknownClientCertificate):
        await auth.authenticate(
            Request("GET", "/", state={"tls": {"client_cert_chain": [pem_of(certs.mallory)]}})
        )
    skip = MTLSAuthenticator(
        MTLSAuthConfig(skip_consumer_lookup=True, match=("cn",), authenticated_group_by="DN")
    )
    found = await skip.authenticate(
        Request("GET", "/", state={"tls": {"client_cert": pem_of(certs.mallory).encode()}})
    )
    assert found is not None and found.subject == "mallory" and found.consumer is None
    assert len(found.groups) == 1 and next(iter(found.groups)).startswith("CN=mallory")


def test_anonymous_must_name_a_consumer() -> None:
    with pytest.raises(ConfigError, match="anonymous"):
        Gateway(
            {
                "consumers": [{"username": "x"}],
                "plugins": [{"name": "mtls-auth", "config": {"anonymous": "nobody"}}],
            }
        )


# -- end to end: gunicorn terminates TLS and requires a client certificate ------------------

APP = """
import json
import os

import gatekeep

with open(os.environ["GATEKEEP_CONFIG"]) as f:
    app = gatekeep.wsgi(gatekeep.Gateway(json.load(f)))
"""


@pytest.fixture
def gunicorn_tls(tmp_path: Path, certs: Certs) -> Any:
    if importlib.util.find_spec("gunicorn") is None:
        pytest.skip("gunicorn cannot be imported")
    (tmp_path / "gk_mtls_app.py").write_text(APP)
    with upstream_thread(EchoUpstream()) as upstream:
        (tmp_path / "gateway.json").write_text(json.dumps(config(upstream)))
        port = free_port()
        argv = [
            *(PY, "-m", "gunicorn", "--workers", "1", "--worker-class", "gthread", "--threads", "4"),
            *("--certfile", certs.path("server.pem"), "--keyfile", certs.path("server.key")),
            *("--ca-certs", certs.path("ca.pem"), "--cert-reqs", "2", "--graceful-timeout", "5"),
        ]
        argv += ["--bind", f"127.0.0.1:{port}", "gk_mtls_app:app"]
        env = {"GATEKEEP_CONFIG": str(tmp_path / "gateway.json")}
        with running("gunicorn-tls", "", app_dir=tmp_path, env=env, argv=argv, port=port) as (_, port):
            yield port


async def test_gunicorn_tls_client_certificate_names_the_consumer(gunicorn_tls: int, certs: Certs) -> None:
    port = gunicorn_tls
    ok = await https(port, certs, certs.gateway, "GET", "/orders")
    assert ok.status_code == 200, ok.text
    seen = ok.json()["headers"]
    assert seen["x-consumer-username"] == "gateway.internal"
    assert seen["x-consumer-groups"] == "internal"
    # A spoofed identity header is replaced by the certificate's.
    spoof = await https(port, certs, certs.gateway, "GET", "/orders", {"x-consumer-username": "admin"})
    assert spoof.json()["headers"]["x-consumer-username"] == "gateway.internal"
    # mallory's CN names the consumer "partner" (custom_id), who lacks the "internal" role.
    denied = await https(port, certs, certs.mallory, "GET", "/orders")
    assert denied.status_code == 403 and denied.json()["detail"] == "GET /orders needs the role 'internal'"
    # No certificate, or one from another CA: the TLS server refuses the handshake.
    for leaf in (None, certs.stranger):
        with pytest.raises((httpx.TransportError, ssl.SSLError)):
            await https(port, certs, leaf, "GET", "/orders")


# -- the ASGI TLS extension --------------------------------------------------------------------


class TLSStateASGIApp:
    """gatekeep's ASGI adapter plus the one line this needs in ``_asgi.py``:
    ``request.state["tls"] = scope["extensions"]["tls"]`` (requested from the core)."""

    def __init__(self, gateway: Gateway) -> None:
        self.inner = asgi(gateway)
        original = self.inner.request_from_scope

        def request_from_scope(scope: Any, body: Any) -> Request:
            request = original(scope, body)
            tls = (scope.get("extensions") or {}).get("tls")
            if tls is not None:
                request.state["tls"] = tls
            return request

        self.inner.request_from_scope = request_from_scope  # type: ignore[method-assign]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.inner(scope, receive, send)


async def test_asgi_tls_extension_names_the_consumer(certs: Certs) -> None:
    async with serve_asgi(EchoUpstream()) as upstream:
        async with Gateway(config(upstream)) as gateway:
            async with serve_tls_asgi(TLSStateASGIApp(gateway), certs.server_context()) as port:
                ok = await https(port, certs, certs.gateway, "GET", "/orders")
                assert ok.status_code == 200, ok.text
                assert ok.json()["headers"]["x-consumer-username"] == "gateway.internal"
                assert (await https(port, certs, certs.mallory, "GET", "/orders")).status_code == 403
            # Without the extension (any released ASGI server today) there is no certificate: 401.
            async with serve_asgi(asgi(gateway)) as plain:
                async with httpx.AsyncClient() as client:
                    response = await client.get(f"http://127.0.0.1:{plain}/orders")
                assert response.status_code == 401
                assert response.json()["type"].endswith("/no-client-certificate")


_ = (MTLSAuthFilter, NoClientCertificate)
