"""JWKS and OIDC discovery over real TLS: a trustme CA, an issuer on https://127.0.0.1."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from gatekeep import ConfigError, Gateway
from gatekeep.auth import IssuerConfig, JWKSPolicy, JWTVerifier, KeysUnavailable, VerifierConfig
from gatekeep.plugins.jwt import JWTFilter
from gatekeep.testing import gateway_for
from tests._jwks_server import JWKSServer, jwks_server

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    return ctx


def verifier(server: JWKSServer, *, ca_file: str | None, discovery: bool = False) -> JWTVerifier:
    issuer = IssuerConfig(
        issuer=server.issuer,
        jwks_uri=None if discovery else server.jwks_uri,
        audiences=("orders",),
        ca_file=ca_file,
    )
    return JWTVerifier(VerifierConfig(issuers=(issuer,), jwks=JWKSPolicy(fetch_timeout=3, wait_timeout=3)))


def jwt_config(server: JWKSServer, **issuer: Any) -> dict[str, Any]:
    return {
        "services": [{"name": "up", "url": "{upstream}", "routes": [{"paths": ["/"]}]}],
        "plugins": [
            {
                "name": "jwt",
                "config": {"issuers": [{"issuer": server.issuer, "audiences": ["orders"], **issuer}]},
            }
        ],
    }


async def test_jwks_uri_over_https_with_the_ca_file(ca: trustme.CA, ca_file: str) -> None:
    async with jwks_server(ssl_context=server_context(ca, "127.0.0.1")) as idp:
        assert idp.jwks_uri.startswith("https://127.0.0.1:")
        v = verifier(idp, ca_file=ca_file)
        assert (await v.verify(idp.mint())).subject == "alice"
        assert idp.fetches == 1 and idp.discoveries == 0
        assert v.stats[idp.issuer].fetches == {"success": 1, "error": 0, "invalid": 0}


async def test_discovery_over_https_finds_an_https_jwks_uri(ca: trustme.CA, ca_file: str) -> None:
    async with jwks_server("ES256", ssl_context=server_context(ca, "127.0.0.1")) as idp:
        issuer = IssuerConfig(
            issuer=idp.issuer, audiences=("orders",), algorithms=("ES256",), ca_file=ca_file
        )
        v = JWTVerifier(VerifierConfig(issuers=(issuer,)))
        assert (await v.verify(idp.mint(sub="bob"))).subject == "bob"
        assert idp.discoveries == 1 and idp.fetches == 1
        remote = v.remote(idp.issuer)
        assert remote is not None and remote.jwks_uri == f"{idp.issuer}/jwks"
        assert remote.jwks_uri.startswith("https://")


async def test_through_the_gateway_with_the_ca_file(ca: trustme.CA, ca_file: str) -> None:
    async with (
        jwks_server(ssl_context=server_context(ca, "127.0.0.1")) as idp,
        gateway_for(jwt_config(idp, ca_file=ca_file)) as gw,
    ):
        response = await gw.client.get("/orders", headers={"authorization": f"Bearer {idp.mint()}"})
        assert response.status == 200, response.text
        assert gw.upstream.requests[-1].headers["x-authenticated-userid"] == "alice"
        assert idp.discoveries == 1 and idp.fetches == 1


async def test_without_the_ca_the_fetch_fails_and_requests_get_503(
    ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    """The system store does not trust the test CA: logged, counted, 503 KeysUnavailable, never a 500."""
    async with jwks_server(ssl_context=server_context(ca, "127.0.0.1")) as idp:
        with caplog.at_level(logging.WARNING, "gatekeep.auth.jwks"):
            async with gateway_for(jwt_config(idp, jwks_uri=idp.jwks_uri)) as gw:
                for _ in range(3):
                    response = await gw.client.get("/", headers={"authorization": f"Bearer {idp.mint()}"})
                    assert response.status == 503, response.text
                    assert response.header("content-type") == "application/problem+json"
                    assert response.header("retry-after") == "5"
                    assert response.json()["title"] == "Signing Keys Unavailable"
                    assert "not available yet" in response.json()["detail"]
                jwt_filter = gw.gateway.filters[0]
                assert isinstance(jwt_filter, JWTFilter)
                stats = jwt_filter.verifier.stats[idp.issuer]
        assert stats.fetches["error"] >= 1 and stats.fetches["success"] == 0
        assert stats.last_error.startswith("TLS certificate of 127.0.0.1 refused:")
        assert "unable to get local issuer certificate" in stats.last_error
        assert idp.fetches == 0  # no request ever reached the issuer's handler
        failures = [r.getMessage() for r in caplog.records if r.name == "gatekeep.auth.jwks"]
        assert failures == [f"JWKS fetch failed ({stats.last_error}); no keys yet"]  # once per outage


@pytest.mark.parametrize(
    ("host", "reason"), [("127.0.0.1", "IP address mismatch"), ("localhost", "Hostname mismatch")]
)
async def test_a_certificate_for_another_name_is_refused(
    ca: trustme.CA, ca_file: str, host: str, reason: str
) -> None:
    async with jwks_server(ssl_context=server_context(ca, "idp.example.test")) as idp:
        idp.issuer = idp.issuer.replace("127.0.0.1", host)
        v = verifier(idp, ca_file=ca_file)
        with pytest.raises(KeysUnavailable):
            await v.verify(idp.mint())
        stats = v.stats[idp.issuer]
        assert stats.fetches["error"] == 1
        assert stats.last_error == (
            f"TLS certificate of {host} refused: {reason}, certificate is not valid for '{host}'."
        )
        assert idp.fetches == 0
        # Discovery is refused the same way.
        d = verifier(idp, ca_file=ca_file, discovery=True)
        with pytest.raises(KeysUnavailable):
            await d.verify(idp.mint())
        assert reason in d.stats[idp.issuer].last_error and idp.discoveries == 0


async def test_a_ca_that_did_not_sign_the_certificate_is_refused(ca: trustme.CA, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    async with jwks_server(ssl_context=server_context(ca, "127.0.0.1")) as idp:
        v = verifier(idp, ca_file=str(other))
        with pytest.raises(KeysUnavailable):
            await v.verify(idp.mint())
        assert "certificate" in v.stats[idp.issuer].last_error and idp.fetches == 0


def test_ca_file_is_checked_when_the_config_loads(tmp_path: Path) -> None:
    not_pem = tmp_path / "not-a-ca.pem"
    not_pem.write_text("hello\n")
    config = {
        "services": [{"name": "up", "url": "http://127.0.0.1:9", "routes": [{"paths": ["/"]}]}],
        "plugins": [
            {
                "name": "jwt",
                "config": {
                    "issuers": [
                        {"issuer": "https://idp.example", "ca_file": str(tmp_path / "missing.pem")},
                        {"issuer": "https://idp2.example", "ca_file": str(not_pem)},
                    ]
                },
            }
        ],
    }
    with pytest.raises(ConfigError) as info:
        Gateway(config)
    errors = {e.path: e.message for e in info.value.errors}
    assert set(errors) == {"plugins[0].config.issuers[0].ca_file", "plugins[0].config.issuers[1].ca_file"}
    assert "cannot load CA certificates" in errors["plugins[0].config.issuers[0].ca_file"]
    assert "No such file" in errors["plugins[0].config.issuers[0].ca_file"]
    assert "NO_CERTIFICATE" in errors["plugins[0].config.issuers[1].ca_file"].upper()
    with pytest.raises(ValueError, match="cannot load CA certificates"):
        IssuerConfig(issuer="https://idp.example", ca_file=str(not_pem))
