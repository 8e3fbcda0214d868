"""JWT forgery, tried as an attacker would, against a real gateway on loopback.

One gateway holds every kind of key gatekeep verifies with: an OIDC issuer's JWKS (RS256, a real
issuer on loopback), and Kong-style consumer credentials (an HS256 secret, an RS256 and an ES256
public key).  Every forged token must get 401 ``application/problem+json`` with an RFC 6750
``invalid_token`` challenge, reach no upstream, and make no fetch to anything the token names.
The verifier's unit tests (tests/test_auth_verifier.py) hold the same checks one level down.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from gatekeep.testing import ClientResponse, Harness, gateway_for
from tests._jwks_server import JWKSServer, jwks_server, mint, new_private_key, public_jwk
from tests.test_auth_verifier import b64, pem

pytestmark = pytest.mark.anyio

SECRET = "kong-style-secret-0123456789abcdef"
RSA = new_private_key("RS256")
EC = new_private_key("ES256")
ATTACKER_RSA = new_private_key("RS256")
ATTACKER_EC = new_private_key("ES256")


@attrs.define
class Target:
    gw: Harness
    idp: JWKSServer
    evil: JWKSServer  # the attacker's own issuer: nothing may ever fetch from it

    def claims(self, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        out: dict[str, Any] = {"iss": self.idp.issuer, "sub": "mallory", "aud": "orders", "exp": now + 60}
        out.update(extra)
        return out

    async def send(self, token: str, *, where: str = "header") -> ClientResponse:
        if where == "query":
            return await self.gw.client.get(f"/orders?jwt={token}")
        return await self.gw.client.get("/orders", headers={"authorization": f"Bearer {token}"})

    async def refused(self, token: str, *, where: str = "header") -> dict[str, Any]:
        seen = len(self.gw.upstream.requests)
        r = await self.send(token, where=where)
        assert r.status == 401, r.text
        assert r.header("content-type") == "application/problem+json"
        assert (r.header("www-authenticate") or "").startswith('Bearer error="invalid_token"')
        assert len(self.gw.upstream.requests) == seen, "a forged token reached the upstream"
        assert self.evil.fetches == 0 and self.evil.discoveries == 0, "the token made the gateway fetch"
        doc: dict[str, Any] = r.json()
        assert doc["status"] == 401
        return doc

    async def accepted(self, token: str) -> None:
        r = await self.send(token)
        assert r.status == 200, r.text


@asynccontextmanager
async def target() -> AsyncIterator[Target]:
    async with jwks_server() as idp, jwks_server() as evil:
        config = {
            "services": [{"name": "up", "url": "{upstream}", "routes": [{"name": "all", "paths": ["/"]}]}],
            "plugins": [
                {"name": "jwt", "config": {"issuers": [{"issuer": idp.issuer, "audiences": ["orders"]}]}}
            ],
            "consumers": [
                {"username": "alice", "jwt_secrets": [{"key": "alice-key", "secret": SECRET}]},
                {
                    "username": "bob",
                    "jwt_secrets": [{"key": "bob-key", "algorithm": "RS256", "rsa_public_key": pem(RSA)}],
                },
                {
                    "username": "carol",
                    "jwt_secrets": [{"key": "carol-key", "algorithm": "ES256", "rsa_public_key": pem(EC)}],
                },
            ],
        }
        async with gateway_for(config) as gw:
            t = Target(gw, idp, evil)
            # The real keys work, so every refusal below is the forgery's doing.
            await t.accepted(idp.mint())
            await t.accepted(mint(SECRET, "HS256", t.claims(iss="alice-key")))
            await t.accepted(mint(RSA, "RS256", t.claims(iss="bob-key")))
            await t.accepted(mint(EC, "ES256", t.claims(iss="carol-key")))
            yield t


def raw(header: dict[str, Any], payload: dict[str, Any] | bytes, signature: bytes = b"") -> str:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return ".".join([b64(json.dumps(header).encode()), b64(body), b64(signature)])


def hs256(header: dict[str, Any], payload: dict[str, Any] | bytes, secret: bytes) -> str:
    unsigned = raw(header, payload).rsplit(".", 1)[0]
    signature = hmac.new(secret, unsigned.encode(), hashlib.sha256).digest()
    return f"{unsigned}.{b64(signature)}"


def rs256(header: dict[str, Any], payload: dict[str, Any], private_key: Any) -> str:
    """Signed with a real key, without pyjwt's checks of the claims (it refuses a list as iss)."""
    unsigned = raw({"alg": "RS256", **header}, payload).rsplit(".", 1)[0]
    signature = jwt.get_algorithm_by_name("RS256").sign(unsigned.encode(), private_key)
    return f"{unsigned}.{b64(signature)}"


# -- alg=none and algorithm confusion -------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", "", None])
async def test_alg_none_is_refused_for_every_kind_of_key(alg: str | None) -> None:
    async with target() as t:
        for iss, kid in ((t.idp.issuer, t.idp.kid), ("alice-key", None), ("bob-key", None)):
            header: dict[str, Any] = {"alg": alg, "typ": "JWT"} if alg is not None else {"typ": "JWT"}
            if kid:
                header["kid"] = kid
            token = raw(header, t.claims(iss=iss))
            await t.refused(token)
            await t.refused(token.rstrip("."))  # no third part at all
            await t.refused(token, where="query")


async def test_hs256_signed_with_the_public_key_is_refused() -> None:
    # The classic confusion: HMAC with the server's public key (PEM, DER or the JWK's modulus).
    async with target() as t:
        idp_public = t.idp.private_key.public_key()
        for secret in (
            pem(t.idp.private_key).encode(),
            idp_public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            base64.urlsafe_b64decode(public_jwk(t.idp.private_key, "RS256", None)["n"] + "=="),
        ):
            await t.refused(hs256({"alg": "HS256", "kid": t.idp.kid}, t.claims(), secret))
            await t.refused(hs256({"alg": "HS256"}, t.claims(), secret))
        # Against the consumer credentials: bob's RSA key and carol's EC key as HMAC secrets.
        await t.refused(hs256({"alg": "HS256"}, t.claims(iss="bob-key"), pem(RSA).encode()))
        await t.refused(hs256({"alg": "HS256"}, t.claims(iss="carol-key"), pem(EC).encode()))
        # Another asymmetric algorithm than the key is bound to, signed with the right key.
        await t.refused(mint(t.idp.private_key, "PS256", t.claims(), kid=t.idp.kid))
        await t.refused(mint(RSA, "PS256", t.claims(iss="bob-key")))
        await t.refused(mint(RSA, "RS512", t.claims(iss="bob-key")))


async def test_psychic_ecdsa_signatures_are_refused() -> None:
    # CVE-2022-21449: r = s = 0 verified as valid under some ECDSA implementations.
    async with target() as t:
        for signature in (b"\x00" * 64, b"", b"\x00", b"\xff" * 64):
            await t.refused(raw({"alg": "ES256"}, t.claims(iss="carol-key"), signature))


# -- keys named by the token -----------------------------------------------------------------


def _self_signed(private_key: Any) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(private_key, hashes.SHA256())
    )
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


async def test_keys_named_in_the_token_header_are_never_used_or_fetched() -> None:
    async with target() as t:
        evil_jwk = public_jwk(t.evil.private_key, "RS256", t.idp.kid)
        headers: list[dict[str, Any]] = [
            {"jwk": evil_jwk},
            {"jku": t.evil.jwks_uri},
            {"jku": t.evil.jwks_uri, "kid": t.evil.kid},
            {"x5u": t.evil.jwks_uri},
            {"x5c": [_self_signed(t.evil.private_key)]},
            {"x5c": [_self_signed(t.evil.private_key)], "x5t#S256": "x", "kid": t.idp.kid},
            {"jwk": evil_jwk, "jku": t.evil.jwks_uri, "x5u": t.evil.jwks_uri},
        ]
        for extra in headers:
            kid = extra.pop("kid", t.idp.kid)
            for iss in (t.idp.issuer, t.evil.issuer, "bob-key"):
                await t.refused(mint(t.evil.private_key, "RS256", t.claims(iss=iss), kid=kid, headers=extra))
        # An issuer the gateway does not know is not discovered from the token either.
        await t.refused(t.evil.mint())
        assert t.evil.fetches == 0 and t.evil.discoveries == 0


@pytest.mark.parametrize(
    "kid",
    [
        "../../../../../../dev/null",
        "/dev/null",
        "/proc/self/environ",
        "file:///etc/passwd",
        "' OR '1'='1",
        "x' UNION SELECT 'secret' --",
        "$(touch /tmp/pwned)",
        "",
        "\u0000",
        "k" * 4000,
        0,
        ["key-1"],
        {"kid": "key-1"},
    ],
    ids=lambda k: repr(k)[:30],
)
async def test_hostile_kids_are_refused(kid: Any) -> None:
    async with target() as t:
        header = {"alg": "HS256", "kid": kid}
        # Signed with what a file or SQL lookup would have yielded: nothing, or a known string.
        for secret in (b"", b"\x00", b"secret", SECRET.encode()):
            await t.refused(hs256(header, t.claims(), secret))
        await t.refused(raw({"alg": "RS256", "kid": kid}, t.claims(), b"\x00" * 256))


# -- oversized and malformed tokens ----------------------------------------------------------


async def test_an_oversized_token_is_refused_quickly() -> None:
    async with target() as t:
        padded = mint(t.idp.private_key, "RS256", t.claims(pad="x" * 8 * 1024), kid=t.idp.kid)
        assert "larger than 8192" in (await t.refused(padded))["detail"]
        # 64 KiB and 1 MiB headers: refused (401, or 431 / a closed connection from the server's
        # head limit), quickly, and never a 5xx.
        for size in (64 * 1024, 1024 * 1024):
            huge = "Bearer " + mint(SECRET, "HS256", t.claims(iss="alice-key", pad="x" * size))
            started = time.monotonic()
            with anyio.fail_after(10):
                try:
                    r = await t.gw.client.get("/orders", headers={"authorization": huge})
                except Exception as exc:  # h11 on a connection the server closed
                    assert "ConnectionClosed" in repr(exc) or isinstance(exc, OSError), repr(exc)
                else:
                    assert r.status in (401, 431), r.text
                    assert r.header("content-type") == "application/problem+json"
            assert time.monotonic() - started < 5
        assert len(t.gw.upstream.requests) == 4  # the four accepted tokens of the set-up


@pytest.mark.parametrize("where", ["payload", "header"])
async def test_deeply_nested_json_is_refused_not_a_crash(where: str) -> None:
    async with target() as t:
        for depth in (2_000, 4_000):  # past Python's recursion limit, within max_token_size
            nested = b'{"a":' * depth + b"1" + b"}" * depth
            if where == "payload":
                token = raw({"alg": "HS256"}, nested)
            else:
                token = b64(nested[:-1] + b',"alg":"HS256"}') + "." + b64(b"{}") + "."
            await t.refused(token)
        # Nesting a JSON parser takes: the signature decides, the claim paths cope.
        deep: Any = ["admin"]
        for _ in range(200):
            deep = {"roles": deep}
        forged = hs256({"alg": "HS256"}, t.claims(iss="alice-key", realm_access=deep), b"guess")
        await t.refused(forged)
        r = await t.send(mint(SECRET, "HS256", t.claims(iss="alice-key", realm_access=deep)))
        assert r.status == 200, r.text


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "..",
        "...",
        "a.b.c",
        "a.b",
        "a.b.c.d",
        "a.b.c.d.e",  # JWE compact form
        "eyJhbGciOiJIUzI1NiJ9.e30",
        "eyJhbGciOiJIUzI1NiJ9.e30.",
        "eyJhbGciOiJIUzI1NiJ9.e30.!!!!",
        "eyJhbGciOiJIUzI1NiJ9.W10.AA",  # a JSON array as the payload
        "W10.e30.AA",  # a JSON array as the header
        "bnVsbA.e30.AA",  # null as the header
        "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOk5hTn0.AA",  # "exp": NaN
        "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOkluZmluaXR5fQ.AA",  # "exp": Infinity
    ],
)
async def test_malformed_tokens_are_refused(token: str) -> None:
    async with target() as t:
        if token:
            await t.refused(token)
        else:
            for value in ("Bearer", "Bearer \t x", "Basic Og=="):
                r = await t.gw.client.get("/orders", headers={"authorization": value})
                assert r.status == 401


# -- header parameters and claims ------------------------------------------------------------


async def test_critical_and_unencoded_payload_headers_are_refused() -> None:
    async with target() as t:
        idp = t.idp
        for extra in (
            {"crit": ["exp"], "exp": 1},
            {"crit": []},
            {"crit": ["b64"], "b64": False},
            {"b64": False},
        ):
            await t.refused(mint(idp.private_key, "RS256", t.claims(), kid=idp.kid, headers=extra))


def _now() -> int:
    return int(time.time())


CLAIMS: list[tuple[str, Callable[[Target], dict[str, Any]], str]] = [
    ("exp as a string", lambda t: t.claims(exp=str(_now() + 60)), "must be a number"),
    ("exp null", lambda t: t.claims(exp=None), "must be a number"),
    ("exp true", lambda t: t.claims(exp=True), "must be a number"),
    ("exp too big for a float", lambda t: t.claims(exp=10**400), "must be a number"),
    ("exp missing", lambda t: {k: v for k, v in t.claims().items() if k != "exp"}, "no 'exp' claim"),
    ("expired", lambda t: t.claims(exp=_now() - 5), "expired"),
    ("nbf in the future", lambda t: t.claims(nbf=_now() + 600), "not valid yet"),
    ("nbf null", lambda t: t.claims(nbf=None), "must be a number"),
    ("iat in the future", lambda t: t.claims(iat=_now() + 600), "issued in the future"),
    ("iat as a string", lambda t: t.claims(iat="now"), "must be a number"),
    ("wrong aud", lambda t: t.claims(aud="billing"), "audience"),
    ("aud list without ours", lambda t: t.claims(aud=["billing", "admin"]), "audience"),
    ("aud not a string", lambda t: t.claims(aud={"orders": True}), "audience"),
    ("no aud", lambda t: {k: v for k, v in t.claims().items() if k != "aud"}, "audience"),
    ("unknown iss", lambda t: t.claims(iss="https://evil.example"), "no key"),
    ("iss with a trailing slash", lambda t: t.claims(iss=t.idp.issuer + "/"), "no key"),
    ("iss not a string", lambda t: t.claims(iss=[t.idp.issuer]), "no key"),
]


@pytest.mark.parametrize(("claims", "message"), [c[1:] for c in CLAIMS], ids=[c[0] for c in CLAIMS])
async def test_claims_signed_by_the_real_key_are_still_checked(
    claims: Callable[[Target], dict[str, Any]], message: str
) -> None:
    # The issuer's real key signed these: only the claims are wrong.
    async with target() as t:
        token = rs256({"kid": t.idp.kid}, claims(t), t.idp.private_key)
        assert message in (await t.refused(token))["detail"]


async def test_exp_null_with_maximum_expiration_is_refused() -> None:
    # Issue 11 row 7, as reported: claims_to_verify = ["exp"], maximum_expiration = 3600.
    plugin = {"name": "jwt", "config": {"claims_to_verify": ["exp"], "maximum_expiration": 3600}}
    config = {
        "services": [{"name": "up", "url": "{upstream}", "routes": [{"name": "all", "paths": ["/"]}]}],
        "plugins": [plugin],
        "consumers": [{"username": "alice", "jwt_secrets": [{"key": "alice-key", "secret": SECRET}]}],
    }
    async with gateway_for(config) as gw:
        for claims in ({"exp": None}, {"exp": "never"}, {}, {"exp": _now() + 7200}):
            token = mint(SECRET, "HS256", {"iss": "alice-key", "sub": "u", **claims})
            r = await gw.client.get("/", headers={"authorization": f"Bearer {token}"})
            assert r.status == 401, (claims, r.text)
        ok = mint(SECRET, "HS256", {"iss": "alice-key", "sub": "u", "exp": _now() + 60})
        assert (await gw.client.get("/", headers={"authorization": f"Bearer {ok}"})).status == 200
        assert len(gw.upstream.requests) == 1


async def test_a_tampered_token_is_refused() -> None:
    async with target() as t:
        good = t.idp.mint()
        header, payload, signature = good.split(".")
        admin = b64(json.dumps(t.claims(sub="admin", roles=["admin"])).encode())
        await t.refused(f"{header}.{admin}.{signature}")
        await t.refused(f"{header}.{payload}.")
        await t.refused(f"{header}.{payload}.{signature[:-4]}")
        await t.refused(f"{header}.{payload}.{signature}AAAA")
        # Two different tokens in one request: neither is picked.
        r = await t.gw.client.get(
            f"/orders?jwt={good}", headers={"authorization": f"Bearer {t.idp.mint(sub='x')}"}
        )
        assert r.status == 401
