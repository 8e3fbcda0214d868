"""``basic-auth``: consumers' usernames and scrypt-hashed passwords (Kong's plugin)."""

from __future__ import annotations

import base64
import logging
import threading
from typing import Any

import anyio
import pytest

from gatekeep import ConfigError, load_config
from gatekeep.plugins.basic_auth import (
    BasicAuthCredential,
    BasicAuthFilter,
    hash_password,
    verify_password,
)
from gatekeep.testing import gateway_for
from tests._docs import run_python_blocks

pytestmark = pytest.mark.anyio

PASSWORD = "correct-horse-battery-staple-7731"
HASHED = hash_password(PASSWORD, log_n=14)


def _basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _config(plugin: dict[str, Any] | None = None, password: str = HASHED, **extra: Any) -> dict[str, Any]:
    return {
        "services": [{"name": "api", "url": "{upstream}", "routes": [{"name": "api", "paths": ["/"]}]}],
        "plugins": [{"name": "basic-auth", "config": plugin or {}}],
        "consumers": [
            {
                "username": "alice",
                "id": "c-1",
                "basicauth_credentials": [{"username": "ali", "password": password}],
            },
            {"username": "guest"},
        ],
        **extra,
    }


# -- the stored form --------------------------------------------------------------------------


def test_a_plaintext_password_is_hashed_at_load_and_never_kept() -> None:
    config = load_config({**_config(password=PASSWORD), "services": []})
    (credential,) = config.consumers[0].credentials["basicauth_credentials"]
    assert credential.password.startswith("scrypt$15$8$1$")
    assert PASSWORD not in repr(config) and PASSWORD not in credential.password
    assert verify_password(PASSWORD.encode(), credential.password)
    assert not verify_password(b"wrong", credential.password)


def test_a_pre_hashed_password_is_kept_as_it_is() -> None:
    assert BasicAuthCredential("ali", HASHED).password == HASHED
    # The same salt twice gives the same hash; two hashes of one password differ (random salt).
    assert hash_password(PASSWORD, log_n=14) != HASHED


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("scrypt$15$8$1$AAAA", "not a scrypt hash"),
        ("scrypt$x$8$1$AAAA$AAAA", "malformed"),
        ("scrypt$10$8$1$" + "A" * 24 + "$" + "A" * 44, "out of range"),
        ("scrypt$15$8$1$AAAA$" + "A" * 44, "salt of 16 bytes"),
        ("", "non-empty"),
    ],
)
def test_a_bad_stored_password_is_a_config_error_at_its_path(password: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config({**_config(password=password), "services": []})
    errors = {e.path: e.message for e in exc.value.errors}
    assert message in errors["consumers[0].basicauth_credentials[0].password"]


def test_usernames_are_unique_and_colon_free() -> None:
    data = {**_config(), "services": []}
    data["consumers"][1]["basicauth_credentials"] = [{"username": "ali", "password": HASHED}]
    with pytest.raises(ConfigError, match=r"consumers\[1\].basicauth_credentials\[0\].username: duplicate"):
        from gatekeep import Gateway

        Gateway(data)
    data["consumers"][1]["basicauth_credentials"] = [{"username": "a:b", "password": HASHED}]
    with pytest.raises(ConfigError, match=r"basicauth_credentials\[0\].username: must be a non-empty name"):
        load_config(data)


# -- requests ---------------------------------------------------------------------------------


async def test_the_right_password_passes_with_the_consumer_headers() -> None:
    async with gateway_for(_config()) as gw:
        ok = await gw.client.get("/x", headers=_basic("ali", PASSWORD))
        assert ok.status == 200
        seen = gw.upstream.requests[-1].headers
        assert seen["x-consumer-username"] == "alice" and seen["x-consumer-id"] == "c-1"
        assert seen["x-credential-identifier"] == "ali"
        assert seen["authorization"].startswith("Basic ")  # hide_credentials is off


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "No credentials found in request"),
        (_basic("ali", "wrong"), "Invalid authentication credentials"),
        (_basic("nobody", PASSWORD), "Invalid authentication credentials"),
        ({"authorization": "Basic !!!"}, "Invalid authentication credentials"),
        ({"authorization": "Basic " + base64.b64encode(b"no-colon").decode()}, "Invalid authentication"),
        ({"authorization": "Bearer abc"}, "No credentials found in request"),
    ],
)
async def test_refusals_are_401_problems_with_a_basic_challenge(headers: dict[str, str], detail: str) -> None:
    async with gateway_for(_config({"realm": "orders"})) as gw:
        response = await gw.client.get("/x", headers=headers)
        assert response.status == 401
        assert response.header("content-type") == "application/problem+json"
        assert response.header("www-authenticate") == 'Basic realm="orders"'
        assert detail in response.json()["detail"]
        assert not gw.upstream.requests


async def test_the_default_realm_is_kongs() -> None:
    async with gateway_for(_config()) as gw:
        assert (await gw.client.get("/x")).header("www-authenticate") == 'Basic realm="service"'


async def test_proxy_authorization_is_read_too() -> None:
    async with gateway_for(_config()) as gw:
        value = _basic("ali", PASSWORD)["authorization"]
        assert (await gw.client.get("/x", headers={"proxy-authorization": value})).status == 200


async def test_hide_credentials_removes_the_header() -> None:
    async with gateway_for(_config({"hide_credentials": True})) as gw:
        assert (await gw.client.get("/x", headers=_basic("ali", PASSWORD))).status == 200
        assert "authorization" not in gw.upstream.requests[-1].headers


async def test_anonymous_lets_a_request_without_or_with_bad_credentials_through_as_that_consumer() -> None:
    async with gateway_for(_config({"anonymous": "guest"})) as gw:
        for headers in ({}, _basic("ali", "wrong")):
            assert (await gw.client.get("/x", headers=headers)).status == 200
            seen = gw.upstream.requests[-1].headers
            assert seen["x-consumer-username"] == "guest" and seen["x-anonymous-consumer"] == "true"
        assert (await gw.client.get("/x", headers=_basic("ali", PASSWORD))).status == 200
        assert gw.upstream.requests[-1].headers["x-consumer-username"] == "alice"


def test_anonymous_must_name_a_consumer() -> None:
    from gatekeep import Gateway

    with pytest.raises(ConfigError, match=r"plugins\[0\].config.anonymous: no consumer 'ghost'"):
        Gateway({**_config({"anonymous": "ghost"}), "services": []})


async def test_a_spoofed_identity_header_never_reaches_the_upstream() -> None:
    """The attacker's test: identity headers of its own next to a valid login."""
    async with gateway_for(_config()) as gw:
        headers = {**_basic("ali", PASSWORD), "x-consumer-username": "admin", "X_Consumer_ID": "root"}
        assert (await gw.client.get("/x", headers=headers)).status == 200
        seen = gw.upstream.requests[-1].headers
        assert seen["x-consumer-username"] == "alice" and "x_consumer_id" not in seen


# -- cost -------------------------------------------------------------------------------------


async def test_scrypt_runs_off_the_event_loop_and_a_success_is_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gatekeep.plugins.basic_auth as module

    threads: list[str] = []
    real = module.verify_password

    def spy(password: bytes, stored: str) -> bool:
        threads.append(threading.current_thread().name)
        return real(password, stored)

    monkeypatch.setattr(module, "verify_password", spy)
    now = [0.0]
    async with gateway_for(_config()) as gw:
        plugin = next(p for p in gw.gateway.compiled.filters if isinstance(p, BasicAuthFilter))
        plugin.cache._clock = lambda: now[0]  # the test drives the cache's clock
        for _ in range(3):
            assert (await gw.client.get("/x", headers=_basic("ali", PASSWORD))).status == 200
        assert plugin.verifications == 1
        now[0] += 61.0  # past the cache's minute
        assert (await gw.client.get("/x", headers=_basic("ali", PASSWORD))).status == 200
        assert plugin.verifications == 2
        # A wrong password is never remembered: each try pays.
        for _ in range(2):
            assert (await gw.client.get("/x", headers=_basic("ali", "nope"))).status == 401
        assert plugin.verifications == 4
    assert len(threads) == 4 and threading.main_thread().name not in threads


async def test_the_event_loop_keeps_serving_while_scrypt_runs() -> None:
    async with gateway_for(_config()) as gw:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await anyio.sleep(0.005)
                ticks += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            assert (await gw.client.get("/x", headers=_basic("ali", PASSWORD))).status == 200
            tg.cancel_scope.cancel()
        assert ticks >= 2


async def test_no_password_reaches_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with gateway_for(_config()) as gw:
        await gw.client.get("/x", headers=_basic("ali", PASSWORD))
        await gw.client.get("/x", headers=_basic("ali", PASSWORD + "x"))
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)


def test_the_docs_example_runs() -> None:
    assert run_python_blocks("plugins/basic-auth.md") == ["test_basic_auth"]


def test_gatekeep_secret_hash_password_reads_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io
    import sys

    from gatekeep.cli import main

    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["secret", "hash-password"]) == 0
    stored = capsys.readouterr().out.strip()
    assert stored.startswith("scrypt$15$8$1$") and PASSWORD not in stored
    assert verify_password(PASSWORD.encode(), stored)


async def test_the_credential_identifier_is_the_username_as_in_kong() -> None:
    config = _config()
    config["consumers"][0]["basicauth_credentials"][0]["id"] = "cred-42"
    async with gateway_for(config) as gw:
        assert (await gw.client.get("/x", headers=_basic("ali", PASSWORD))).status == 200
        assert gw.upstream.requests[-1].headers["x-credential-identifier"] == "ali"


def test_an_encrypted_plaintext_password_is_decrypted_then_hashed(monkeypatch: pytest.MonkeyPatch) -> None:
    from gatekeep import Keyring, SecretKey

    key = SecretKey("k1", b"\x01" * 32)
    monkeypatch.setenv("GATEKEEP_SECRET_KEYS", "k1:" + base64.b64encode(key.key).decode())
    path = "consumers[0].basicauth_credentials[0].password"
    data = {**_config(password=Keyring((key,)).encrypt(PASSWORD, path)), "services": []}
    (credential,) = load_config(data).consumers[0].credentials["basicauth_credentials"]
    assert credential.password.startswith("scrypt$") and verify_password(
        PASSWORD.encode(), credential.password
    )
