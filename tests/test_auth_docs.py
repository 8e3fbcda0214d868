"""The examples of docs/authentication.md run: Python blocks in order as one module, TOML blocks load."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gatekeep import load_config
from tests._docs import blocks, run_python_blocks

pytestmark = pytest.mark.anyio


def test_python_blocks_run() -> None:
    assert len(run_python_blocks("authentication.md")) >= 5


def test_toml_blocks_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MOBILE_APP_JWT_SECRET", "a-long-random-secret-0123456789abcdef")
    monkeypatch.setenv("REPORTING_API_KEY", "k-123")
    found = blocks("authentication.md", "toml")
    assert len(found) == 4
    for code in found:
        document = tomllib.loads(code)
        if "services" in document:
            load_config(document)
    # The consumer found, with a service to attach them to (the PEM from a file).
    from tests.test_auth_verifier import RSA, pem

    (tmp_path / "partner.pem").write_text(pem(RSA))
    consumers = tomllib.loads(found[2].replace("/etc/gatekeep", str(tmp_path)))
    keyauth = tomllib.loads(found[3])
    load_config(
        {
            "services": [{"name": "s", "url": "http://127.0.0.1:9", "routes": [{"paths": ["/"]}]}],
            **consumers,
            "plugins": keyauth["plugins"] + [{"name": "jwt"}],
            "consumers": consumers["consumers"] + keyauth["consumers"],
        }
    )


async def test_dev_issuer_token_endpoint() -> None:
    from gatekeep.demo import DevIssuer
    from gatekeep.testing import TestClient, serve_asgi

    idp = DevIssuer()
    async with serve_asgi(idp) as port:
        idp.issuer = f"http://127.0.0.1:{port}"
        client = TestClient("127.0.0.1", port)
        form = {"content-type": "application/x-www-form-urlencoded"}
        ok = await client.post(
            "/token",
            body=b"grant_type=client_credentials&client_id=alice&client_secret=alice-secret",
            headers=form,
        )
        assert ok.status == 200 and ok.json()["token_type"] == "Bearer"
        wrong = await client.post(
            "/token",
            body=b"grant_type=client_credentials&client_id=alice&client_secret=bob-secret",
            headers=form,
        )
        assert wrong.status == 401 and wrong.json() == {"error": "invalid_client"}
        grant = await client.post("/token", body=b"grant_type=password", headers=form)
        assert grant.status == 400
        discovery = (await client.get("/.well-known/openid-configuration")).json()
        assert discovery["jwks_uri"] == idp.issuer + "/jwks"
        assert (await client.get("/jwks")).json()["keys"][0]["kid"] == idp.kid


def test_dev_issuer_key_file_is_shared(tmp_path: Path) -> None:
    import jwt as pyjwt

    from gatekeep.demo import DevIssuer

    first = DevIssuer("http://127.0.0.1:1", key_file=tmp_path / "dev.pem")
    second = DevIssuer("http://127.0.0.1:1", key_file=tmp_path / "dev.pem")
    assert first.kid == second.kid and (tmp_path / "dev.pem").stat().st_mode & 0o777 == 0o600
    token = second.mint("alice", roles=["user"])
    key = pyjwt.PyJWK(first.jwk).key
    assert pyjwt.decode(token, key, algorithms=["RS256"], audience="gatekeep-demo")["roles"] == ["user"]
    assert DevIssuer().kid != first.kid
