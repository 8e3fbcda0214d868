"""Limits and metrics keyed by who is calling (issue 13, point 1): ``limit_by = "subject"``,
``limit_by = "claim"``, ``per_consumer`` metrics by subject, and the warnings when a
consumer-keyed setting can never see a consumer."""

from __future__ import annotations

import logging
import time
from typing import Any

import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gatekeep import ConfigError, check_config, load_config
from gatekeep.testing import Harness, gateway_for

pytestmark = pytest.mark.anyio

# A static HS256 key of 32 random-looking bytes (RFC 7518 §3.2), no consumers: what the issue tried.
SECRET = "k3y-of-thirty-two-bytes-for-hs256!"
URL = "http://127.0.0.1:9"  # for configs that are only checked


def token(sub: str | None = "alice", **claims: Any) -> str:
    if sub is not None:
        claims["sub"] = sub
    claims.setdefault("exp", int(time.time()) + 300)
    return jwt.encode(claims, SECRET, algorithm="HS256")


def bearer(value: str) -> dict[str, str]:
    return {"authorization": f"Bearer {value}"}


def config(
    limit: dict[str, Any], *, prometheus: dict[str, Any] | None = None, url: str = "{upstream}"
) -> dict[str, Any]:
    plugins: list[dict[str, Any]] = [
        {"name": "jwt", "config": {"keys": [{"algorithm": "HS256", "secret": SECRET}]}},
        {"name": "rate-limiting", "config": {"second": 5, **limit}},
    ]
    if prometheus is not None:
        plugins.append({"name": "prometheus", "config": prometheus})
    return {
        "services": [{"name": "orders", "url": url, "routes": [{"name": "orders", "paths": ["/"]}]}],
        "plugins": plugins,
    }


async def statuses(gw: Harness, n: int, headers: dict[str, str]) -> list[int]:
    return [(await gw.client.get("/orders", headers=headers)).status for _ in range(n)]


# -- limit_by = "subject" ------------------------------------------------------------------


async def test_the_sixth_request_of_one_subject_is_refused_while_another_subject_passes() -> None:
    async with gateway_for(config({"limit_by": "subject"})) as gw:
        assert await statuses(gw, 6, bearer(token("alice"))) == [200] * 5 + [429]
        assert await statuses(gw, 1, bearer(token("bob"))) == [200]  # one client address, own bucket


async def test_by_consumer_without_consumers_is_by_ip_as_documented() -> None:
    # The surprise, kept as Kong does it (and warned about, below): one address, one bucket.
    async with gateway_for(config({})) as gw:
        assert await statuses(gw, 5, bearer(token("alice"))) == [200] * 5
        assert await statuses(gw, 1, bearer(token("bob"))) == [429]


async def test_an_attacker_cannot_share_a_victims_bucket_from_another_issuer() -> None:
    # Same subject, another 'iss': another bucket (a token's subject is only unique per issuer).
    async with gateway_for(config({"limit_by": "subject"})) as gw:
        assert await statuses(gw, 5, bearer(token("alice"))) == [200] * 5
        assert await statuses(gw, 1, bearer(token("alice", iss="https://other.example"))) == [200]
        assert await statuses(gw, 1, bearer(token("alice"))) == [429]


# -- limit_by = "claim" --------------------------------------------------------------------


async def test_a_claim_path_keys_the_bucket() -> None:
    async with gateway_for(config({"limit_by": "claim", "claim": "tenant.id"})) as gw:
        acme = bearer(token("alice", tenant={"id": "acme"}))
        acme_bob = bearer(token("bob", tenant={"id": "acme"}))
        initech = bearer(token("carol", tenant={"id": 42}))  # an integer claim counts too
        assert await statuses(gw, 3, acme) + await statuses(gw, 3, acme_bob) == [200] * 5 + [429]
        assert await statuses(gw, 1, initech) == [200]


async def test_a_claim_that_is_not_a_string_falls_back_to_the_client_address() -> None:
    # An attacker who varies an object or array claim does not get a fresh bucket per request.
    async with gateway_for(config({"limit_by": "claim", "claim": ["tenant", "id"]})) as gw:
        results = []
        for i in range(6):
            results += await statuses(gw, 1, bearer(token("mallory", tenant={"id": {"n": i}})))
        assert results == [200] * 5 + [429]


def test_limit_by_claim_needs_a_claim_path() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(config({"limit_by": "claim"}, url=URL))
    assert [e.path for e in caught.value.errors] == ["plugins[1].config"]
    assert "needs claim" in caught.value.errors[0].message
    with pytest.raises(ConfigError) as caught:
        load_config(config({"limit_by": "claim", "claim": "tenant..id"}, url=URL))
    assert [e.path for e in caught.value.errors] == ["plugins[1].config.claim"]


# -- per_consumer metrics by subject ---------------------------------------------------------


async def test_per_consumer_metrics_label_the_subject_when_no_consumer_is_named() -> None:
    prometheus = {"per_consumer": True, "consumer_label_limit": 2}
    async with gateway_for(config({"limit_by": "subject", "second": 100}, prometheus=prometheus)) as gw:
        for sub in ("alice", "bob", "carol"):
            assert (await gw.client.get("/orders", headers=bearer(token(sub)))).status == 200
        text = (await gw.client.get("/metrics")).text
    consumers = {
        s.labels["consumer"]
        for family in text_string_to_metric_families(text)
        if family.name == "gatekeep_http_requests"
        for s in family.samples
    }
    assert consumers == {"alice", "bob", "other"}  # the cardinality budget holds for subjects too


# -- the warnings: a consumer-keyed setting that can never see a consumer --------------------


def test_check_warns_when_limit_by_consumer_can_never_see_a_consumer() -> None:
    report = check_config(config({}, url=URL))
    assert [(w.path, w.message.split(",")[0]) for w in report.warnings] == [
        ("plugins[1].config.limit_by", "limit_by 'consumer'")
    ]
    assert "limit_by = 'subject'" in report.warnings[0].message
    with_consumers = {**config({}, url=URL), "consumers": [{"username": "alice"}]}
    assert check_config(with_consumers).warnings == ()
    assert check_config(config({"limit_by": "subject"}, url=URL)).warnings == ()


def test_check_warns_when_per_consumer_metrics_can_never_see_anyone() -> None:
    bare = {
        "services": [{"name": "s", "url": "http://127.0.0.1:9", "routes": [{"paths": ["/"]}]}],
        "plugins": [{"name": "prometheus", "config": {"per_consumer": True}}],
    }
    (warning,) = check_config(bare).warnings
    assert warning.path == "plugins[0].config.per_consumer"


async def test_the_gateway_logs_the_warning_when_it_is_built(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gatekeep.config"):
        async with gateway_for(config({})):
            pass
    assert any(
        r.name == "gatekeep.config" and "plugins[1].config.limit_by: limit_by 'consumer'" in r.getMessage()
        for r in caplog.records
    )


def test_the_documented_example_checks_without_a_warning() -> None:
    import tomllib

    from tests._docs import blocks

    (example,) = [b for b in blocks("rate-limiting.md", "toml") if 'limit_by = "subject"' in b]
    report = check_config(tomllib.loads(example))
    assert report.warnings == ()
