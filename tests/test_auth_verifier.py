"""The JWT verifier core: every check, key confusion, the verified-token cache, fuzzing."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatekeep.auth import (
    Credential,
    InvalidToken,
    IssuerConfig,
    JWTVerifier,
    KeyConfig,
    VerifierConfig,
    key_from_pem,
    key_from_secret,
)
from tests._jwks_server import mint, new_private_key, public_jwk

pytestmark = pytest.mark.anyio

RSA = new_private_key("RS256")
RSA_OTHER = new_private_key("RS256")
EC = new_private_key("ES256")
ED = new_private_key("EdDSA")
SECRET = "s3cret-s3cret-s3cret-s3cret-0123"


def pem(private_key: Any) -> str:
    data: bytes = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data.decode()


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {"iss": "https://idp.example", "sub": "alice", "aud": "orders", "exp": now + 60}
    out.update(extra)
    return {k: v for k, v in out.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)])


def static_verifier(**config: Any) -> JWTVerifier:
    keys = (
        KeyConfig(algorithm="RS256", kid="rsa", pem=pem(RSA)),
        KeyConfig(jwk=public_jwk(EC, "ES256", "ec")),
        KeyConfig(algorithm="EdDSA", kid="ed", pem=pem(ED)),
        KeyConfig(algorithm="HS256", kid="hs", secret=SECRET),
    )
    config.setdefault("keys", keys)
    return JWTVerifier(VerifierConfig(**config))


@pytest.mark.parametrize(
    ("alg", "key", "kid"),
    [("RS256", RSA, "rsa"), ("ES256", EC, "ec"), ("EdDSA", ED, "ed"), ("HS256", SECRET, "hs")],
)
async def test_each_algorithm_verifies(alg: str, key: Any, kid: str) -> None:
    v = static_verifier()
    identity = await v.verify(mint(key, alg, claims(scope="read write", roles=["user"]), kid=kid))
    assert identity.subject == "alice"
    assert identity.scopes == {"read", "write"}
    assert identity.roles == {"user"}
    assert identity.claims["aud"] == "orders"
    assert not identity.anonymous


async def test_without_kid_the_key_is_found_by_algorithm() -> None:
    v = static_verifier()
    assert (await v.verify(mint(RSA, "RS256", claims()))).subject == "alice"


@pytest.mark.parametrize(
    ("relative", "message"),
    [
        # Seconds from now, taken when the test runs (not when it is collected).
        ({"exp": -10}, "expired"),
        ({"nbf": 100}, "not valid yet"),
        ({"iat": 100}, "issued in the future"),
        ({"exp": None}, "no 'exp' claim"),
        ({"exp": "tomorrow"}, "must be a number"),
        ({"exp": True}, "must be a number"),
    ],
)
async def test_time_claims(relative: dict[str, Any], message: str) -> None:
    now = int(time.time())
    token_claims = claims(
        **{k: now + v if type(v) is int else v for k, v in relative.items()}  # not bool: True stays True
    )
    v = static_verifier()
    with pytest.raises(InvalidToken, match=message) as info:
        await v.verify(mint(RSA, "RS256", token_claims, kid="rsa"))
    assert info.value.status == 401
    (name, value), *_ = info.value.headers
    assert name == "www-authenticate"
    assert value.startswith('Bearer error="invalid_token", error_description="')


async def test_nan_exp_is_refused() -> None:
    # Python's json accepts NaN; a NaN exp must not compare its way past the check.
    v = static_verifier()
    header = b64(json.dumps({"alg": "HS256", "kid": "hs"}).encode())
    payload = b64(b'{"sub": "a", "exp": NaN}')
    signature = jwt.get_algorithm_by_name("HS256").sign(f"{header}.{payload}".encode(), SECRET.encode())
    with pytest.raises(InvalidToken, match="must be a number"):
        await v.verify(f"{header}.{payload}.{b64(signature)}")


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
@pytest.mark.parametrize(
    "value", [None, "1", True, False, [1], {"t": 1}, pytest.param(10**400, id="10**400")]
)
@pytest.mark.parametrize("config", [{}, {"claims_to_verify": ()}, {"maximum_expiration": 3600}])
async def test_registered_time_claims_must_be_numbers_when_present(
    name: str, value: Any, config: dict[str, Any]
) -> None:
    # Issue 11 row 7: "exp": null read as "never expires", even with maximum_expiration.
    # And an integer too big for a float must be a 401, not an OverflowError (a 500).
    v = static_verifier(**config)
    token_claims = {"sub": "alice", "exp": int(time.time()) + 60, name: value}
    with pytest.raises(InvalidToken, match=f"the '{name}' claim must be a number") as info:
        await v.verify(mint(RSA, "RS256", token_claims, kid="rsa"))
    assert info.value.status == 401


async def test_maximum_expiration_needs_an_exp() -> None:
    v = static_verifier(maximum_expiration=3600)
    with pytest.raises(InvalidToken, match="no 'exp' claim"):
        await v.verify(mint(RSA, "RS256", {"sub": "alice"}, kid="rsa"))
    assert await v.verify(mint(RSA, "RS256", {"sub": "alice", "exp": time.time() + 60.5}, kid="rsa"))


async def test_leeway_accepts_slightly_expired_tokens() -> None:
    token = mint(RSA, "RS256", claims(exp=int(time.time()) - 5, nbf=int(time.time()) + 5), kid="rsa")
    with pytest.raises(InvalidToken):
        await static_verifier().verify(token)
    assert (await static_verifier(leeway=30).verify(token)).subject == "alice"


async def test_audience_and_issuer_of_an_issuer() -> None:
    issuer = IssuerConfig(
        issuer="https://idp.example",
        discovery=False,
        audiences=("orders", "payments"),
        algorithms=("RS256",),
        keys=(KeyConfig(algorithm="RS256", pem=pem(RSA)),),
    )
    v = JWTVerifier(VerifierConfig(issuers=(issuer,)))
    assert (await v.verify(mint(RSA, "RS256", claims(aud=["x", "payments"])))).subject == "alice"
    with pytest.raises(InvalidToken, match="audience"):
        await v.verify(mint(RSA, "RS256", claims(aud="inventory")))
    with pytest.raises(InvalidToken, match="audience"):
        await v.verify(mint(RSA, "RS256", claims(aud=None)))
    with pytest.raises(InvalidToken, match="no key is configured"):
        await v.verify(mint(RSA, "RS256", claims(iss="https://evil.example")))
    # The issuer's algorithm list is an allow-list.
    with pytest.raises(InvalidToken, match="not accepted for its issuer"):
        await v.verify(mint(EC, "ES256", claims()))


async def test_static_key_bound_to_an_issuer() -> None:
    v = JWTVerifier(
        VerifierConfig(keys=(KeyConfig(algorithm="RS256", pem=pem(RSA), issuer="https://a.example"),))
    )
    assert (await v.verify(mint(RSA, "RS256", claims(iss="https://a.example")))).subject == "alice"
    with pytest.raises(InvalidToken, match="no key"):
        await v.verify(mint(RSA, "RS256", claims(iss="https://b.example")))


async def test_alg_none_is_always_refused() -> None:
    v = static_verifier()
    for alg in ("none", "None", "NONE", ""):
        with pytest.raises(InvalidToken, match="algorithm is not accepted"):
            await v.verify(raw_token({"alg": alg, "kid": "hs"}, claims()))
    with pytest.raises(InvalidToken):
        await v.verify(raw_token({"alg": "none"}, claims()) + "")


async def test_hs256_signed_with_the_rsa_public_key_is_refused() -> None:
    # The classic confusion: the attacker HMACs with the server's public RSA key as the secret.
    v = static_verifier()
    header = b64(json.dumps({"alg": "HS256", "kid": "rsa"}).encode())
    payload = b64(json.dumps(claims()).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = __import__("hmac").new(pem(RSA).encode(), signing_input, "sha256").digest()
    with pytest.raises(InvalidToken):
        await v.verify(f"{header}.{payload}.{b64(signature)}")
    # And a public key can never be configured as an HMAC secret.
    with pytest.raises(ValueError, match="asymmetric key"):
        key_from_secret("HS256", pem(RSA))


async def test_key_type_must_match_the_algorithm() -> None:
    with pytest.raises(ValueError, match="needs an EC public key"):
        key_from_pem("ES256", pem(RSA))
    with pytest.raises(ValueError, match="EdDSA needs"):
        key_from_pem("EdDSA", pem(EC))
    with pytest.raises(ValueError, match="needs an RSA public key"):
        key_from_pem("RS256", pem(ED))
    with pytest.raises(ValueError, match="takes a secret"):
        key_from_pem("HS256", pem(RSA))
    # An ES256 token cannot be verified with the RSA key whose kid it names.
    v = static_verifier()
    with pytest.raises(InvalidToken):
        await v.verify(mint(EC, "ES256", claims(), kid="rsa"))


async def test_tampered_tokens_are_refused() -> None:
    v = static_verifier()
    token = mint(RSA, "RS256", claims(), kid="rsa")
    header, payload, signature = token.split(".")
    forged = b64(json.dumps(claims(sub="mallory")).encode())
    with pytest.raises(InvalidToken, match="signature"):
        await v.verify(f"{header}.{forged}.{signature}")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    with pytest.raises(InvalidToken, match="signature"):
        await v.verify(f"{header}.{payload}.{flipped}")
    with pytest.raises(InvalidToken, match="signature"):
        await v.verify(mint(RSA_OTHER, "RS256", claims(), kid="rsa"))


async def test_keys_in_the_token_header_are_never_used() -> None:
    v = static_verifier()
    attacker = new_private_key("RS256")
    token = mint(
        attacker, "RS256", claims(), kid="rsa", headers={"jwk": public_jwk(attacker, "RS256", "rsa")}
    )
    with pytest.raises(InvalidToken, match="signature"):
        await v.verify(token)
    token = mint(
        attacker, "RS256", claims(), headers={"jku": "https://evil.example/jwks", "x5u": "https://e"}
    )
    with pytest.raises(InvalidToken, match="signature"):
        await v.verify(token)


async def test_crit_headers_are_refused() -> None:
    v = static_verifier()
    with pytest.raises(InvalidToken, match="critical"):
        await v.verify(mint(RSA, "RS256", claims(), kid="rsa", headers={"crit": ["exp"], "exp": 1}))


async def test_typ_check() -> None:
    v = static_verifier(typ="at+jwt")
    assert (await v.verify(mint(RSA, "RS256", claims(), kid="rsa", headers={"typ": "at+jwt"}))).subject
    assert await v.verify(mint(RSA, "RS256", claims(), kid="rsa", headers={"typ": "application/AT+JWT"}))
    with pytest.raises(InvalidToken, match="typ"):
        await v.verify(mint(RSA, "RS256", claims(), kid="rsa"))  # pyjwt writes typ JWT


async def test_required_claims_and_maximum_expiration() -> None:
    v = static_verifier(required_claims=("tenant",), maximum_expiration=120)
    now = int(time.time())
    assert (await v.verify(mint(RSA, "RS256", claims(tenant="t", exp=now + 100), kid="rsa"))).subject
    with pytest.raises(InvalidToken, match="'tenant'"):
        await v.verify(mint(RSA, "RS256", claims(exp=now + 100), kid="rsa"))
    with pytest.raises(InvalidToken, match="maximum allowed expiration"):
        await v.verify(mint(RSA, "RS256", claims(tenant="t", exp=now + 1000), kid="rsa"))
    with pytest.raises(ValueError, match="needs 'exp'"):
        VerifierConfig(maximum_expiration=10, claims_to_verify=())


async def test_size_bound() -> None:
    v = static_verifier()
    huge = mint(RSA, "RS256", claims(pad="x" * 9000), kid="rsa")
    with pytest.raises(InvalidToken, match="larger than 8192"):
        await v.verify(huge)
    assert (await static_verifier(max_token_size=0).verify(huge)).subject == "alice"


async def test_consumer_credentials_by_key_claim() -> None:
    creds = {
        "issuer-a": Credential(
            key_from_secret("HS256", SECRET), "alice-consumer", "cred-a", frozenset({"g"})
        ),
        "issuer-b": Credential(key_from_pem("RS256", pem(RSA)), "bob-consumer", "cred-b"),
    }
    v = JWTVerifier(VerifierConfig(), credentials=creds)
    a = await v.verify(mint(SECRET, "HS256", claims(iss="issuer-a")))
    assert (a.consumer, a.credential, a.groups) == ("alice-consumer", "cred-a", frozenset({"g"}))
    b = await v.verify(mint(RSA, "RS256", claims(iss="issuer-b")))
    assert b.consumer == "bob-consumer"
    # The credential decides the algorithm: an RS256 credential refuses an HS256 token.
    with pytest.raises(InvalidToken, match="does not match its credential"):
        await v.verify(mint(pem(RSA).encode()[:40], "HS256", claims(iss="issuer-b")))
    # key_claim_name may name another claim, also read from the header.
    v2 = JWTVerifier(VerifierConfig(key_claim_name="kid"), credentials=creds)
    assert (
        await v2.verify(mint(SECRET, "HS256", claims(iss="x"), kid="issuer-a"))
    ).consumer == "alice-consumer"


async def test_verified_tokens_are_cached_until_exp() -> None:
    now = [1_000_000.0]
    v = JWTVerifier(
        VerifierConfig(keys=(KeyConfig(algorithm="RS256", kid="rsa", pem=pem(RSA)),), cache_size=2),
        clock=lambda: now[0],
    )
    token = mint(RSA, "RS256", claims(iat=None, exp=1_000_100), kid="rsa")
    first = await v.verify(token)
    assert await v.verify(token) is first
    assert (v.cache_hits, v.cache_misses) == (1, 1)
    now[0] = 1_000_100.0  # exp reached: verified again, and refused
    with pytest.raises(InvalidToken, match="expired"):
        await v.verify(token)
    assert v.cache_length == 0


async def test_cache_is_bounded_lru() -> None:
    v = static_verifier(cache_size=2)
    tokens = [mint(RSA, "RS256", claims(n=i), kid="rsa") for i in range(3)]
    for t in tokens:
        await v.verify(t)
    assert v.cache_length == 2
    await v.verify(tokens[2])
    assert v.cache_hits == 1
    await v.verify(tokens[0])  # evicted first: a miss
    assert v.cache_misses == 4
    no_cache = static_verifier(cache_size=0)
    await no_cache.verify(tokens[0])
    assert no_cache.cache_length == 0


_ERRORS = (InvalidToken,)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.text(max_size=300),
        st.binary(max_size=300),
        st.lists(
            st.text(alphabet="ABCDEFGHabcdefgh0123456789-_=+/", max_size=60), min_size=1, max_size=5
        ).map(".".join),
        st.tuples(
            st.dictionaries(
                st.sampled_from(["alg", "kid", "typ", "crit", "jwk", "b64"]),
                st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8), st.just("RS256")),
            ),
            st.dictionaries(
                st.sampled_from(["iss", "exp", "nbf", "iat", "aud", "sub", "scope", "roles"]),
                st.one_of(
                    st.none(), st.integers(), st.floats(), st.text(max_size=8), st.lists(st.integers())
                ),
            ),
            st.binary(max_size=64),
        ).map(lambda t: raw_token(t[0], t[1], t[2])),
    )
)
def test_fuzzed_tokens_only_ever_raise_invalid_token(token: str | bytes) -> None:
    import anyio

    v = static_verifier()

    async def run() -> None:
        try:
            await v.verify(token)
        except _ERRORS:
            pass

    anyio.run(run)
