"""The cached-token hot path of ``jwt`` + ``rbac`` (issue 17): a token seen before is answered
from the verifier's cache and per-identity memos, and every answer is the one the full path
would have given (expiry, several tokens, spoofed identity headers, path rules, consumer groups).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import pytest

from gatekeep import BasePlugin, ConsumerConfig, Headers, Identity, Request, Response
from gatekeep.auth import InvalidToken, JWTVerifier, KeyConfig, MissingCredentials, VerifierConfig
from gatekeep.authz import AuthenticationRequired, InsufficientRole, Policy
from gatekeep.plugins.jwt import JWTFilter, JWTFilterConfig
from gatekeep.plugins.rbac import _MAX_REMEMBERED, RbacFilter
from gatekeep.testing import gateway_for
from tests._jwks_server import mint

pytestmark = pytest.mark.anyio

SECRET = "hot-path-secret-0123456789abcdef-0123"


def token(**claims: Any) -> str:
    return mint(SECRET, "HS256", {"sub": "user-1", "exp": int(time.time()) + 60, "roles": ["user"], **claims})


def jwt_filter(clock: Any = time.time) -> JWTFilter:
    config = JWTFilterConfig(keys=(KeyConfig(algorithm="HS256", secret=SECRET),))
    return JWTFilter(config, verifier=JWTVerifier(config.verifier_config(), clock=clock))


def request(*headers: tuple[str, str], method: str = "GET", path: str = "/") -> Request:
    return Request(method, path, headers=Headers([(k.encode(), v.encode()) for k, v in headers]))


async def test_a_repeated_token_is_answered_from_the_cache_with_the_same_identity_and_headers() -> None:
    f = jwt_filter()
    t = token()
    first, second = request(("authorization", f"Bearer {t}")), request(("authorization", f"bearer {t}"))
    await f.on_request(first)
    await f.on_request(second)
    assert f.verifier.cache_misses == 1 and f.verifier.cache_hits == 1
    assert first.identity is second.identity and first.identity is not None
    assert first.headers.raw[1:] == second.headers.raw[1:]
    assert (b"x-authenticated-userid", b"user-1") in second.headers.raw
    assert (b"x-authenticated-roles", b"user") in second.headers.raw


async def test_a_cached_token_is_refused_once_it_expired() -> None:
    now = [time.time()]
    f = jwt_filter(clock=lambda: now[0])
    t = token(exp=int(now[0]) + 30)
    await f.on_request(request(("authorization", f"Bearer {t}")))
    now[0] += 31
    with pytest.raises(InvalidToken, match="expired"):
        await f.on_request(request(("authorization", f"Bearer {t}")))


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("Bearer {t}", True),
        ("BEARER {t}", True),
        ("  bEaReR   {t}  ", True),
        ("Bearer {t} extra", False),
        ("Basic {t}", False),
        ("{t}", False),  # the raw value is taken from other headers only
    ],
)
async def test_the_authorization_header_spellings(value: str, accepted: bool) -> None:
    f = jwt_filter()
    r = request(("authorization", value.format(t=token())))
    if accepted:
        await f.on_request(r)
        assert r.identity is not None
    else:
        with pytest.raises(MissingCredentials):
            await f.on_request(r)
        assert r.identity is None


async def test_several_tokens_must_all_be_the_same_even_when_one_is_cached() -> None:
    """Attacker: a cached valid token next to another one in a second Authorization header."""
    f = jwt_filter()
    good, other = token(), token(sub="someone-else")
    await f.on_request(request(("authorization", f"Bearer {good}")))
    same = request(("authorization", f"Bearer {good}"), ("authorization", f"Bearer {good}"))
    await f.on_request(same)
    assert same.identity is not None
    for pair in (
        [("authorization", f"Bearer {good}"), ("authorization", f"Bearer {other}")],
        [("authorization", f"Bearer {other}"), ("authorization", f"Bearer {good}")],
    ):
        with pytest.raises(InvalidToken, match="several different tokens"):
            await f.on_request(request(*pair))
    with pytest.raises(InvalidToken, match="several different tokens"):
        both = request(("authorization", f"Bearer {good}"))
        both.query_string = f"jwt={other}".encode()
        await f.on_request(both)


async def test_a_header_ending_like_a_seen_one_is_parsed_and_verified_on_its_own() -> None:
    """Attacker: a value whose last bytes (the key of the values seen) are a valid token's."""
    f = jwt_filter()
    good = token()
    await f.on_request(request(("authorization", f"Bearer {good}")))
    forged = f"Bearer {token(sub='admin')[:-30]}{good[-30:]}"
    with pytest.raises(InvalidToken, match="signature"):
        await f.on_request(request(("authorization", forged)))
    with pytest.raises(MissingCredentials):
        await f.on_request(request(("authorization", f"Basic {good[-30:]}")))
    assert len(f._seen) == 1


async def test_tokens_from_cookies_are_never_answered_from_the_header_memo() -> None:
    config = JWTFilterConfig(keys=(KeyConfig(algorithm="HS256", secret=SECRET),), cookie_names=("session",))
    f = JWTFilter(config)
    good, other = token(), token(sub="someone-else")
    await f.on_request(request(("authorization", f"Bearer {good}")))
    with pytest.raises(InvalidToken, match="several different tokens"):
        await f.on_request(request(("authorization", f"Bearer {good}"), ("cookie", f"session={other}")))


async def test_the_verifier_caches_str_and_bytes_tokens_alike() -> None:
    verifier = jwt_filter().verifier
    t = token()
    assert verifier.cached(t) is None and verifier.cached(t.encode()) is None
    from_text = await verifier.verify(t)
    from_bytes = await verifier.verify(t.encode())
    assert verifier.cached(t) is from_text and verifier.cached(t.encode()) is from_bytes
    assert from_text == from_bytes
    with pytest.raises(InvalidToken, match="larger than"):
        await verifier.verify(b"x" * (VerifierConfig().max_token_size + 1))


class _Spoofer(BasePlugin[Any]):
    """A plugin that runs before ``jwt`` and adds an identity header (as a careless one might)."""

    name: ClassVar[str] = "spoofer"
    priority: ClassVar[int] = 5000

    async def on_request(self, request: Request) -> Response | None:
        request.headers.add(b"x-consumer-username", b"admin")
        request.headers.add(b"X_Authenticated_Roles", b"admin")
        return None


async def test_identity_headers_added_before_jwt_are_replaced_on_every_cached_request() -> None:
    """Attacker: spoofed identity headers from the client, and from a plugin before ``jwt``."""
    jwt = {"name": "jwt", "config": {"keys": [{"algorithm": "HS256", "secret": SECRET}]}}
    async with gateway_for(plugins=[{"name": "spoofer"}, jwt], plugin_classes=[_Spoofer]) as gw:
        t = token()
        for _ in range(3):
            response = await gw.client.get(
                "/", headers={"authorization": f"Bearer {t}", "x-consumer-username": "root"}
            )
            assert response.status == 200, response.text
            seen = gw.upstream.requests[-1].headers
            assert "x-consumer-username" not in seen and "x_authenticated_roles" not in seen
            assert seen["x-authenticated-roles"] == "user"
            assert seen["x-authenticated-userid"] == "user-1"


def rbac(config: dict[str, Any]) -> RbacFilter:
    return RbacFilter(Policy.of(config).config)


async def test_rbac_remembers_allowed_methods_only() -> None:
    f = rbac(
        {"rules": [{"methods": ["GET"], "any_of": ["user"]}, {"methods": ["DELETE"], "any_of": ["admin"]}]}
    )
    user = Identity("u", roles=frozenset({"user"}))
    for _ in range(3):
        r = request(method="GET")
        r.identity = user
        await f.on_request(r)
    for _ in range(2):
        r = request(method="DELETE")
        r.identity = user
        with pytest.raises(InsufficientRole):
            await f.on_request(r)
    assert f._allowed[id(user)][2] == {"GET"}
    # Another object equal to it is decided afresh; no identity is a 401.
    r = request(method="GET")
    r.identity = Identity("u", roles=frozenset())
    with pytest.raises(InsufficientRole):
        await f.on_request(r)
    with pytest.raises(AuthenticationRequired):
        await f.on_request(request(method="GET"))


async def test_rbac_with_path_rules_decides_every_path() -> None:
    f = rbac({"rules": [{"paths": ["/open"], "any_of": ["user"]}]})
    user = Identity("u", roles=frozenset({"user"}))
    r = request(path="/open/a")
    r.identity = user
    await f.on_request(r)
    r = request(path="/closed")
    r.identity = user
    with pytest.raises(InsufficientRole):
        await f.on_request(r)
    assert not f._allowed


async def test_rbac_counts_consumer_groups_per_request_with_groups_as_roles() -> None:
    """Operator: a consumer's group grants the role; the same identity without it is refused."""
    f = rbac({"groups_as_roles": True, "rules": [{"any_of": ["ops"]}]})
    token_identity = Identity("u", roles=frozenset())
    with_group = request()
    with_group.identity, with_group.consumer = token_identity, ConsumerConfig(username="c", groups=("ops",))
    await f.on_request(with_group)
    alone = request()
    alone.identity = token_identity
    with pytest.raises(InsufficientRole):
        await f.on_request(alone)
    other = request()
    other.identity, other.consumer = token_identity, ConsumerConfig(username="d", groups=("dev",))
    with pytest.raises(InsufficientRole):
        await f.on_request(other)
    await f.on_request(with_group)


class _Team:
    """A plugin's own consumer object, whose groups may change between requests."""

    def __init__(self) -> None:
        self.groups: list[str] = ["ops"]


async def test_rbac_decides_a_mutable_consumer_afresh_every_time() -> None:
    f = rbac({"groups_as_roles": True, "rules": [{"any_of": ["ops"]}]})
    team, identity = _Team(), Identity("u")
    r = request()
    r.identity, r.consumer = identity, team  # type: ignore[assignment]
    await f.on_request(r)
    team.groups.clear()
    with pytest.raises(InsufficientRole):
        await f.on_request(r)


async def test_identities_made_per_request_cannot_grow_rbac_s_memo() -> None:
    f = rbac({"rules": [{"any_of": ["user"]}]})
    for i in range(_MAX_REMEMBERED + 50):
        r = request()
        r.identity = Identity(str(i), roles=frozenset({"user"}))
        await f.on_request(r)
        assert len(f._allowed) <= _MAX_REMEMBERED


# -- the chain's fast request phase (no coroutine for a token seen before) ---------------------


async def run_phase(phase: Any, r: Request) -> Response | None:
    """What ``Gateway._request_phase`` does with a phase's answer."""
    answer = phase(r)
    if answer is not None and not isinstance(answer, Response):
        answer = await answer
    return answer  # type: ignore[no-any-return]


async def test_the_fast_phase_answers_a_seen_token_at_once_as_on_request_would() -> None:
    f, g = jwt_filter(), jwt_filter()
    phase = f._fast_request_phase()
    assert phase is not None
    t = token()
    first = request(("authorization", f"Bearer {t}"))
    answer = phase(first)
    assert answer is not None  # first sight: the whole way, a coroutine
    await answer
    await g.on_request(request(("authorization", f"Bearer {t}")))
    second = request(("authorization", f"Bearer {t}"))
    assert phase(second) is None  # seen: answered at once
    expected = request(("authorization", f"Bearer {t}"))
    await g.on_request(expected)
    assert second.identity is first.identity and second.identity is not None
    assert second.headers.raw == expected.headers.raw


async def test_the_fast_phase_refuses_an_expired_cached_token() -> None:
    now = [time.time()]
    f = jwt_filter(clock=lambda: now[0])
    phase = f._fast_request_phase()
    t = token(exp=int(now[0]) + 30)
    await run_phase(phase, request(("authorization", f"Bearer {t}")))
    await run_phase(phase, request(("authorization", f"Bearer {t}")))
    now[0] += 31
    with pytest.raises(InvalidToken, match="expired"):
        await run_phase(phase, request(("authorization", f"Bearer {t}")))


async def test_the_fast_phase_takes_the_full_path_for_several_tokens() -> None:
    f = jwt_filter()
    phase = f._fast_request_phase()
    t = token()
    await run_phase(phase, request(("authorization", f"Bearer {t}")))
    with pytest.raises(InvalidToken, match="several"):
        await run_phase(
            phase, request(("authorization", f"Bearer {t}"), ("authorization", f"Bearer {token(sub='x')}"))
        )


async def test_a_subclass_that_changes_on_request_is_called_not_the_fast_phase() -> None:
    from gatekeep import Chain

    calls: list[str] = []

    class Audited(JWTFilter):
        async def on_request(self, request: Request) -> Response | None:
            calls.append(request.path)
            return await super().on_request(request)

    class AuditedRbac(RbacFilter):
        async def on_request(self, request: Request) -> Response | None:
            calls.append("rbac")
            return await super().on_request(request)

    config = JWTFilterConfig(keys=(KeyConfig(algorithm="HS256", secret=SECRET),))
    audited = Audited(config, verifier=JWTVerifier(config.verifier_config()))
    assert audited._fast_request_phase() is None
    audited_rbac = AuditedRbac(Policy.of({"rules": [{"any_of": ["user"]}]}).config)
    chain = Chain([audited, audited_rbac])
    r = request(("authorization", f"Bearer {token()}"), path="/a")
    for _, phase in chain.request:
        await run_phase(phase, r)
    await run_phase(chain.request[0][1], request(("authorization", f"Bearer {token()}"), path="/b"))
    assert calls == ["/a", "rbac", "/b"]


async def test_the_rbac_fast_phase_refuses_as_on_request_does() -> None:
    f = rbac({"rules": [{"any_of": ["admin"]}]})
    phase = f._fast_request_phase()
    assert phase is not None
    r = request()
    r.identity = Identity("u", roles=frozenset({"user"}))
    with pytest.raises(InsufficientRole):
        await run_phase(phase, r)
    with pytest.raises(InsufficientRole):
        await f.on_request(r)
