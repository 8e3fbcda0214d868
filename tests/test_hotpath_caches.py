"""The pipeline's per-request caches (issue 17): what they remember is what would have been
computed, a client varying its input cannot grow them, and the lean wire's packed commands
are the commands redis-py would have sent."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gatekeep import Headers, Identity, Limit, RedisRateLimiter, Request
from gatekeep.authz import InsufficientRole, Policy
from gatekeep.plugins.rate_limiting import _MAX_KEYS, RateLimitingConfig, RateLimitingFilter
from gatekeep.ratelimit import bucket_key
from gatekeep.ratelimit._redis import _MAX_PACKED_KEYS

HOUR = 3600.0


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    try:
        yield c
    finally:
        await c.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("key", ["ip:10.0.0.1", "", "a}b", "grüße", "\udc80", "x" * 300])
async def test_the_lean_wire_writes_the_keys_and_counts_redis_py_writes(
    client: aioredis.Redis, key: str
) -> None:
    limits = [Limit(rate=5, period=1.0), Limit(rate=100, period=60.0, burst=120)]
    lean = RedisRateLimiter(client, prefix="lean:")
    plain = RedisRateLimiter(client, prefix="plain:", batch=False)  # redis-py's packer
    try:
        assert lean._wire is not None and plain._wire is None
        for cost in (1, 3, 0, 9):
            ours, theirs = await lean.acquire(key, limits, cost), await plain.acquire(key, limits, cost)
            assert (ours.allowed, ours.remaining) == (theirs.allowed, theirs.remaining)
        taken, ours = await lean.lease(key, limits, 1, 4)
        given, theirs = await plain.lease(key, limits, 1, 4)
        assert (taken, ours.allowed, ours.remaining) == (given, theirs.allowed, theirs.remaining)
    finally:
        await lean.aclose()
        await plain.aclose()
    found = [k for k in await client.keys("*") if isinstance(k, bytes)]
    lean_keys = sorted(k.removeprefix(b"lean:") for k in found if k.startswith(b"lean:"))
    plain_keys = sorted(k.removeprefix(b"plain:") for k in found if k.startswith(b"plain:"))
    assert lean_keys == plain_keys and len(lean_keys) == 2


@pytest.mark.anyio
async def test_a_client_varying_its_key_cannot_grow_the_packed_keys(client: aioredis.Redis) -> None:
    """Attacker: one new key per request; every key still has its own bucket."""
    limiter = RedisRateLimiter(client, prefix="many:")
    limits = [Limit(rate=3, period=HOUR)]
    try:
        for i in range(_MAX_PACKED_KEYS + 500):
            assert (await limiter.acquire(f"ip:10.{i}", limits)).remaining == (2,)
            assert len(limiter._packed) <= _MAX_PACKED_KEYS
        assert (await limiter.acquire("ip:10.0", limits)).remaining == (1,)
    finally:
        await limiter.aclose()


@pytest.mark.anyio
async def test_a_client_varying_its_header_cannot_grow_the_filters_keys() -> None:
    """Attacker: a new limit_by header value per request; buckets stay apart, the cache bounded."""
    limiter = RateLimitingFilter(
        RateLimitingConfig(minute=2, limit_by="header", header_name="X-Tenant", hide_client_headers=True)
    )
    for i in range(_MAX_KEYS + 300):
        value = f"t:{i}" if i % 2 else f"t{{{i}}}"
        request = Request("GET", "/", headers=Headers([(b"x-tenant", value.encode())]), client=("1.2.3.4", 1))
        assert await limiter.on_request(request) is None
        assert len(limiter._keys) <= _MAX_KEYS
    for (scope, kind, identifier), key in limiter._keys.items():
        assert key == bucket_key(scope, kind, identifier)


def test_grants_are_remembered_per_identity_object_only() -> None:
    policy = Policy.of({"rules": [{"any_of": ["user"]}]})
    user = Identity("a", roles=frozenset({"user"}))
    for _ in range(3):
        policy.authorize(user, "GET", "/")
    # An identity equal in every field but another object is looked at afresh.
    nobody = Identity("a", roles=frozenset())
    with pytest.raises(InsufficientRole):
        policy.authorize(nobody, "GET", "/")
    # Consumer groups count as roles (groups_as_roles): never answered from the cache.
    policy.authorize(nobody, "GET", "/", ["user"])
    with pytest.raises(InsufficientRole):
        policy.authorize(nobody, "GET", "/", [])


def test_identities_made_per_request_cannot_grow_the_grants() -> None:
    policy = Policy.of({"rules": [{"any_of": ["user"]}]})
    for i in range(3000):
        policy.authorize(Identity(str(i), roles=frozenset({"user"})), "GET", "/")
    assert len(policy._grants) <= 1024
