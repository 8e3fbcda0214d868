"""The ``jwt`` and ``key-auth`` filters end to end, through a real gateway on loopback."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatekeep import ConfigError, Gateway, Headers, Request
from gatekeep.plugins.jwt import JWTFilter
from gatekeep.testing import ClientResponse, gateway_for
from tests._jwks_server import jwks_server, mint, new_private_key
from tests.test_auth_verifier import pem

pytestmark = pytest.mark.anyio

NOWHERE = "http://127.0.0.1:9"
SECRET = "kong-style-secret-0123456789abcdef"
RSA = new_private_key("RS256")


def consumers() -> list[dict[str, Any]]:
    return [
        {
            "username": "alice",
            "custom_id": "c-alice",
            "groups": ["staff"],
            "jwt_secrets": [{"key": "alice-key", "secret": SECRET}],
            "keyauth_credentials": [{"key": "alice-api-key", "id": "k1"}],
        },
        {
            "username": "bob",
            "id": "id-bob",
            "jwt_secrets": [{"key": "bob-key", "algorithm": "RS256", "rsa_public_key": pem(RSA)}],
            "keyauth_credentials": [{"key": "bob-api-key"}],
        },
        {"username": "guest"},
    ]


def config(*plugins: dict[str, Any], url: str = "{upstream}") -> dict[str, Any]:
    return {
        "services": [{"name": "up", "url": url, "routes": [{"name": "all", "paths": ["/"]}]}],
        "plugins": list(plugins),
        "consumers": consumers(),
    }


def token(key: str = "alice-key", **claims: Any) -> str:
    body = {"iss": key, "sub": "user-1", "exp": int(time.time()) + 60, **claims}
    if key == "bob-key":
        return mint(RSA, "RS256", body)
    return mint(SECRET, "HS256", body)


def problem(response: ClientResponse, status: int) -> dict[str, Any]:
    assert response.status == status, response.text
    assert response.header("content-type") == "application/problem+json"
    doc: dict[str, Any] = response.json()
    assert doc["status"] == status and doc["detail"]
    return doc


SPOOFED = {
    "x-consumer-username": "admin",
    "x-consumer-id": "admin",
    "x-authenticated-roles": "admin",
    "x-authenticated-scope": "everything",
    "x-credential-identifier": "forged",
    "x-anonymous-consumer": "false",
    "x-consumer-groups": "admins",
}


async def test_jwt_with_consumer_secrets() -> None:
    async with gateway_for(config({"name": "jwt"})) as gw:
        t = token(roles=["user"], scope="orders:read")
        response = await gw.client.get("/orders", headers={"authorization": f"Bearer {t}", **SPOOFED})
        assert response.status == 200, response.text
        seen = gw.upstream.requests[-1].headers
        assert seen["x-consumer-username"] == "alice"
        assert seen["x-consumer-custom-id"] == "c-alice"
        assert "x-consumer-id" not in seen  # alice has no id; the spoofed one is gone
        assert seen["x-credential-identifier"] == "alice-key"
        assert seen["x-consumer-groups"] == "staff"
        assert seen["x-authenticated-userid"] == "user-1"
        assert seen["x-authenticated-roles"] == "user"
        assert seen["x-authenticated-scope"] == "orders:read"
        assert "x-anonymous-consumer" not in seen
        assert seen["authorization"] == f"Bearer {t}"  # forwarded by default
        bob = await gw.client.get("/", headers={"authorization": f"bearer {token('bob-key')}"})
        assert bob.status == 200
        assert gw.upstream.requests[-1].headers["x-consumer-id"] == "id-bob"


async def test_missing_and_invalid_tokens() -> None:
    async with gateway_for(config({"name": "jwt"})) as gw:
        missing = await gw.client.get("/")
        problem(missing, 401)
        assert missing.header("www-authenticate") == "Bearer"
        basic = await gw.client.get("/", headers={"authorization": "Basic YWxhZGRpbjpvcGVuc2VzYW1l"})
        assert basic.header("www-authenticate") == "Bearer"
        for bad, description in [
            ("not-a-token", "not a JWS"),
            (token(exp=int(time.time()) - 1), "expired"),
            (token("nobody-key"), "no key is configured"),
            (token()[:-4] + "AAAA", "signature"),
        ]:
            response = await gw.client.get("/", headers={"authorization": f"Bearer {bad}"})
            doc = problem(response, 401)
            challenge = response.header("www-authenticate") or ""
            assert challenge.startswith('Bearer error="invalid_token", error_description="'), challenge
            assert description in challenge and description in doc["detail"]
        assert not gw.upstream.requests


async def test_token_in_query_and_cookie_and_hide_credentials() -> None:
    plugin = {"name": "jwt", "config": {"cookie_names": ["session"], "hide_credentials": True}}
    async with gateway_for(config(plugin)) as gw:
        t = token()
        response = await gw.client.get(f"/a?x=1&jwt={t}&y=2")
        assert response.status == 200
        assert gw.upstream.requests[-1].query == "x=1&y=2"
        response = await gw.client.get("/a", headers={"cookie": f"theme=dark; session={t}"})
        assert response.status == 200
        assert gw.upstream.requests[-1].headers["cookie"] == "theme=dark"
        response = await gw.client.get("/a", headers={"authorization": f"Bearer {t}"})
        assert "authorization" not in gw.upstream.requests[-1].headers
        both = await gw.client.get(f"/a?jwt={token('bob-key')}", headers={"authorization": f"Bearer {t}"})
        assert "several different tokens" in problem(both, 401)["detail"]


async def test_preflight_can_skip_authentication() -> None:
    async with gateway_for(config({"name": "jwt", "config": {"run_on_preflight": False}})) as gw:
        assert (await gw.client.request("OPTIONS", "/")).status == 200
        assert (await gw.client.get("/")).status == 401


async def test_jwt_with_a_jwks_issuer_and_roles() -> None:
    async with jwks_server() as idp:
        plugin = {
            "name": "jwt",
            "config": {
                "issuers": [{"issuer": idp.issuer, "audiences": ["orders"]}],
                "roles_claim": ["realm_access.roles", "resource_access.orders.roles"],
                "consumer_claim": ["azp"],
            },
        }
        async with gateway_for(config(plugin)) as gw:
            t = idp.mint(
                realm_access={"roles": ["user"]},
                resource_access={"orders": {"roles": ["reader"]}},
                scope="openid orders",
                azp="bob",
            )
            response = await gw.client.get("/orders", headers={"authorization": f"Bearer {t}"})
            assert response.status == 200, response.text
            seen = gw.upstream.requests[-1].headers
            assert seen["x-authenticated-roles"] == "reader, user"
            assert seen["x-authenticated-scope"] == "openid orders"
            assert seen["x-consumer-username"] == "bob"  # via consumer_claim
            assert seen["x-credential-identifier"] == "bob"
            wrong_aud = await gw.client.get("/", headers={"authorization": f"Bearer {idp.mint(aud='x')}"})
            problem(wrong_aud, 401)
            jwt_filter = gw.gateway.filters[0]
            assert isinstance(jwt_filter, JWTFilter)
            assert jwt_filter.verifier.stats[idp.issuer].fetches["success"] >= 1
            assert idp.discoveries == 1


async def test_key_auth() -> None:
    plugin = {"name": "key-auth", "config": {"key_names": ["apikey", "x-api-key"], "hide_credentials": True}}
    async with gateway_for(config(plugin)) as gw:
        ok = await gw.client.get("/", headers={"x-api-key": "alice-api-key", **SPOOFED})
        assert ok.status == 200
        seen = gw.upstream.requests[-1].headers
        assert seen["x-consumer-username"] == "alice"
        assert seen["x-credential-identifier"] == "k1"
        assert "x-api-key" not in seen and "x-authenticated-roles" not in seen
        ok = await gw.client.get("/p?a=1&apikey=bob-api-key")
        assert ok.status == 200
        assert gw.upstream.requests[-1].query == "a=1"
        assert gw.upstream.requests[-1].headers["x-consumer-id"] == "id-bob"
        missing = await gw.client.get("/")
        assert problem(missing, 401)["detail"] == "No API key found in request"
        assert missing.header("www-authenticate") == 'Key realm="gatekeep"'
        wrong = await gw.client.get("/", headers={"apikey": "alice-api-key-nope"})
        assert problem(wrong, 401)["detail"] == "Invalid authentication credentials"


async def test_key_auth_in_body() -> None:
    plugin = {"name": "key-auth", "config": {"key_in_body": True, "key_in_header": False}}
    async with gateway_for(config(plugin)) as gw:
        form = await gw.client.post(
            "/",
            body=b"a=1&apikey=alice-api-key",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert form.status == 200
        assert gw.upstream.requests[-1].body == b"a=1&apikey=alice-api-key"
        js = await gw.client.post(
            "/", body=b'{"apikey": "bob-api-key"}', headers={"content-type": "application/json"}
        )
        assert js.status == 200
        assert gw.upstream.requests[-1].headers["x-consumer-username"] == "bob"
        assert (await gw.client.get("/", headers={"apikey": "alice-api-key"})).status == 401


async def test_key_auth_hides_the_key_in_the_body() -> None:
    plugin = {
        "name": "key-auth",
        "config": {"key_names": ["apikey", "x-key"], "key_in_body": True, "hide_credentials": True},
    }
    form_type = {"content-type": "application/x-www-form-urlencoded; charset=utf-8"}
    async with gateway_for(config(plugin)) as gw:

        async def post(body: bytes, headers: dict[str, str]) -> Any:
            response = await gw.client.post("/", body=body, headers=headers)
            assert response.status == 200, response.text
            seen = gw.upstream.requests[-1]
            # The upstream got exactly the announced bytes: content-length was rewritten.
            assert response.json()["headers"]["content-length"] == str(len(seen.body))
            return seen

        # Form: every key field goes (any key name, percent-encoded names too); the rest keeps its bytes.
        seen = await post(b"a=1&apikey=alice-api-key&b=%C3%A9+x&x-key=other&%61pikey=again&c=", form_type)
        assert seen.body == b"a=1&b=%C3%A9+x&c="
        assert seen.headers["x-consumer-username"] == "alice"
        assert (await post(b"apikey=bob-api-key", form_type)).body == b""
        # JSON: the top-level key fields go; the object is re-serialised (compact), nested ones stay.
        body = b'{"apikey": "bob-api-key", "order": {"apikey": "nested", "qty": 2.5}, "note": "\\u00e9"}'
        seen = await post(body, {"content-type": "application/json"})
        assert seen.headers["x-consumer-username"] == "bob"
        assert json.loads(seen.body) == {"order": {"apikey": "nested", "qty": 2.5}, "note": "é"}
        assert b"bob-api-key" not in seen.body
        # The key in a header: key fields in the body are stripped too (Kong clears every place).
        seen = await post(
            b'{"x-key": "stale", "keep": true}',
            {"content-type": "application/json", "x-key": "alice-api-key"},
        )
        assert json.loads(seen.body) == {"keep": True} and "x-key" not in seen.headers
        # A body without a key field is forwarded byte for byte.
        seen = await post(
            b'{ "keep" : [1, 2] }', {"content-type": "application/json"} | {"apikey": "bob-api-key"}
        )
        assert seen.body == b'{ "keep" : [1, 2] }'
        # Bodies over 64 KiB are not buffered: no key is found in them, and nothing is changed.
        big = b"apikey=alice-api-key&pad=" + b"x" * (64 * 1024)
        refused = await gw.client.post("/", body=big, headers=form_type)
        assert problem(refused, 401)["detail"] == "No API key found in request"
        seen = await post(big, form_type | {"apikey": "alice-api-key"})
        assert seen.body == big
        # Non-latin-1 keys and undecodable escapes never cause a 500.
        for odd in (b"apikey=%E2%82%AC", b"apikey=%FF%FE", b'{"apikey": "\\ud800"}', b'{"apikey": 1e400}'):
            ctype = "application/json" if odd.startswith(b"{") else form_type["content-type"]
            response = await gw.client.post("/", body=odd, headers={"content-type": ctype})
            assert response.status == 401, (odd, response.text)


async def test_anonymous_and_several_auth_filters() -> None:
    jwt_plugin = {"name": "jwt", "config": {"anonymous": "guest"}}
    key_plugin = {"name": "key-auth", "config": {"anonymous": "guest"}}
    async with gateway_for(config(jwt_plugin, key_plugin)) as gw:
        # No credential at all: the anonymous consumer, marked as such; spoofed headers gone.
        response = await gw.client.get("/", headers=SPOOFED)
        assert response.status == 200
        seen = gw.upstream.requests[-1].headers
        assert seen["x-anonymous-consumer"] == "true"
        assert seen["x-consumer-username"] == "guest"
        assert "x-authenticated-roles" not in seen and "x-credential-identifier" not in seen
        # A key authenticates a request the jwt filter left anonymous.
        await gw.client.get("/", headers={"apikey": "bob-api-key"})
        seen = gw.upstream.requests[-1].headers
        assert seen["x-consumer-username"] == "bob" and "x-anonymous-consumer" not in seen
        # A valid token: key-auth (with anonymous) does not run, even with a bad key (logical OR).
        await gw.client.get("/", headers={"authorization": f"Bearer {token()}", "apikey": "wrong"})
        assert gw.upstream.requests[-1].headers["x-consumer-username"] == "alice"
        # An invalid token falls back to anonymous too (Kong's behaviour).
        await gw.client.get("/", headers={"authorization": "Bearer garbage"})
        assert gw.upstream.requests[-1].headers["x-anonymous-consumer"] == "true"


async def test_without_anonymous_every_auth_filter_must_pass() -> None:
    async with gateway_for(
        config({"name": "jwt", "config": {"anonymous": "guest"}}, {"name": "key-auth"})
    ) as gw:
        problem(await gw.client.get("/", headers={"authorization": f"Bearer {token()}"}), 401)
        ok = await gw.client.get("/", headers={"authorization": f"Bearer {token()}", "apikey": "bob-api-key"})
        assert ok.status == 200
        # The later filter's consumer wins (as in Kong).
        assert gw.upstream.requests[-1].headers["x-consumer-username"] == "bob"


def test_config_errors_carry_paths() -> None:
    bad_anon = config({"name": "jwt", "config": {"anonymous": "nobody"}}, url=NOWHERE)
    bad_anon["services"][0]["routes"][0]["plugins"] = [{"name": "key-auth", "config": {"anonymous": "ghost"}}]
    with pytest.raises(ConfigError) as info:
        Gateway(bad_anon)
    # The first auth filter bound reports every auth plugin that names a missing consumer, whatever its kind.
    errors = {e.path: e.message for e in info.value.errors}
    assert errors == {
        "plugins[0].config.anonymous": "no consumer 'nobody'",
        "services[0].routes[0].plugins[0].config.anonymous": "no consumer 'ghost'",
    }
    cfg = config(url=NOWHERE)
    cfg["consumers"][1]["jwt_secrets"][0]["rsa_public_key"] = "not a pem"
    cfg["consumers"][0]["jwt_secrets"].append({"key": "k", "algorithm": "ES256", "secret": "x"})
    with pytest.raises(ConfigError) as info:
        Gateway(cfg)
    paths = {e.path: e.message for e in info.value.errors}
    assert "not a PEM public key" in paths["consumers[1].jwt_secrets[0]"]
    assert "needs an 'rsa_public_key'" in paths["consumers[0].jwt_secrets[1]"]
    with pytest.raises(ConfigError) as info:
        Gateway(
            config(
                {"name": "jwt", "config": {"issuers": [{"issuer": "http://idp.example"}], "leeway": -1}},
                url=NOWHERE,
            )
        )
    assert {e.path for e in info.value.errors} >= {"plugins[0].config.leeway", "plugins[0].config.issuers[0]"}
    dup = config({"name": "key-auth"}, url=NOWHERE)
    dup["consumers"][1]["keyauth_credentials"][0]["key"] = "alice-api-key"
    with pytest.raises(ConfigError, match=r"consumers\[1\].keyauth_credentials\[0\].key: duplicate API key"):
        Gateway(dup)


async def test_huge_headers_never_cause_a_500() -> None:
    big = b"Bearer " + b"A" * (64 * 1024)
    # In process (a production server may refuse such a head before the gateway sees it).
    gateway = Gateway(config({"name": "jwt"}, url=NOWHERE))
    for value in (big, b"Bearer " + token(pad="x" * 64 * 1024).encode()):
        request = Request("GET", "/", raw_path=b"/", headers=Headers([(b"authorization", value)]))
        response = await gateway.handle(request)
        assert response.status == 401
        assert b"larger than 8192" in await response.read()
    async with gateway_for(config({"name": "jwt"})) as gw:
        # Over the socket, the test server drops a 64 KiB head without answering; never a 500.
        try:
            status = (await gw.client.get("/", headers={"authorization": big.decode()})).status
        except Exception as exc:  # h11's RemoteProtocolError: the connection was closed
            assert "ConnectionClosed" in str(exc)
        else:
            assert 400 <= status < 500
        eight_k = "Bearer " + token(pad="x" * 8200)
        assert (
            "larger than 8192"
            in problem(await gw.client.get("/", headers={"authorization": eight_k}), 401)["detail"]
        )


_header_bytes = st.binary(max_size=200).map(lambda b: bytes(c for c in b if c not in b"\r\n\0"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    authorization=st.one_of(_header_bytes, _header_bytes.map(lambda b: b"Bearer " + b)),
    query=_header_bytes,
    cookie=_header_bytes,
)
def test_fuzzed_requests_are_401_never_500(authorization: bytes, query: bytes, cookie: bytes) -> None:
    gateway = Gateway(
        config(
            {
                "name": "jwt",
                "config": {"cookie_names": ["s"], "keys": [{"algorithm": "RS256", "pem": pem(RSA)}]},
            },
            url=NOWHERE,
        )
    )

    async def run() -> int:
        request = Request(
            method="GET",
            path="/",
            raw_path=b"/",
            query_string=b"jwt=" + query,
            headers=Headers([(b"authorization", authorization), (b"cookie", b"s=" + cookie)]),
        )
        response = await gateway.handle(request)
        return response.status

    assert anyio.run(run) == 401


_field_names = st.sampled_from(["apikey", "x-key", "a", "b", "api key", "é"]) | st.text(max_size=6)
_fields = st.lists(st.tuples(_field_names, st.text(max_size=12)), max_size=6)


@settings(max_examples=150, deadline=None)
@given(fields=_fields, as_json=st.booleans(), noise=st.binary(max_size=40))
def test_hidden_body_keys_are_gone_and_the_rest_is_kept(
    fields: list[tuple[str, str]], as_json: bool, noise: bytes
) -> None:
    """Whatever the body, no key field reaches the upstream, other fields stay, never a 500."""
    from urllib.parse import parse_qsl, urlencode

    from gatekeep.plugins.key_auth import KeyAuthFilter

    plugin = {
        "name": "key-auth",
        "config": {"key_names": ["apikey", "x-key"], "key_in_body": True, "hide_credentials": True},
    }
    gateway = Gateway(config(plugin, url=NOWHERE))
    key_auth = gateway.filters[0]
    assert isinstance(key_auth, KeyAuthFilter)
    # The valid key is the one found: the last of a JSON name (json.loads), the first field of a form.
    fields = [*fields, ("apikey", "alice-api-key")] if as_json else [("apikey", "alice-api-key"), *fields]
    if as_json:
        body, ctype = json.dumps(dict(fields)).encode(), b"application/json"
    else:
        body, ctype = urlencode(fields).encode(), b"application/x-www-form-urlencoded"

    async def run(body: bytes) -> tuple[int | None, bytes, bytes | None]:
        request = Request(
            "POST",
            "/",
            raw_path=b"/",
            headers=Headers([(b"content-type", ctype), (b"content-length", str(len(body)).encode())]),
        )
        request.body = _one(body)
        try:
            answer = await key_auth.on_request(request)
        except Exception as exc:
            status = getattr(exc, "status", 500)
            assert status == 401, repr(exc)
            return status, b"", None
        assert answer is None
        return None, await request.read(), request.headers.get(b"content-length")

    status, seen, length = anyio.run(run, body)
    assert status is None and length == str(len(seen)).encode()
    if as_json:
        expected = {k: v for k, v in dict(fields).items() if k not in ("apikey", "x-key")}
        assert json.loads(seen) == expected
    else:
        assert parse_qsl(seen.decode(), keep_blank_values=True) == [
            (k, v) for k, v in fields if k not in ("apikey", "x-key")
        ]
    # Arbitrary bytes around a key: 401 or authenticated, never another error.
    anyio.run(run, noise + body)
    anyio.run(run, body + noise)


async def _one(data: bytes) -> Any:
    yield data
