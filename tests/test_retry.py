"""Retries: which requests, on which failures, to which instance, within which budget."""

from __future__ import annotations

import random

import anyio
import pytest

from gatekeep import (
    Headers,
    Instance,
    Request,
    Response,
    RoundRobin,
    UpstreamConnectError,
    UpstreamProtocolError,
)
from gatekeep._http import EMPTY_BODY, is_replayable
from gatekeep.resilience import (
    HealthchecksConfig,
    RetryBudget,
    RetryConfig,
    RetryPolicy,
    UpstreamGuard,
    is_idempotent,
    prepare_body,
)
from gatekeep.resilience._health import CONNECT
from tests._resilience_servers import cluster

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _sent(error: Exception, sent: bool) -> Exception:
    error.request_sent = sent  # type: ignore[attr-defined]
    return error


# -- the sans-IO decisions -------------------------------------------------------


def test_idempotent_methods_and_the_idempotency_key() -> None:
    assert all(is_idempotent(Request(m, "/")) for m in ("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))
    assert not is_idempotent(Request("POST", "/"))
    assert not is_idempotent(Request("PATCH", "/"))
    assert is_idempotent(Request("POST", "/", headers=Headers([(b"idempotency-key", b"k1")])))


def test_a_request_that_reached_an_upstream_is_retried_only_when_idempotent() -> None:
    policy = RetryPolicy(2, RetryConfig())
    refused = _sent(UpstreamConnectError("refused"), False)
    reset = _sent(UpstreamProtocolError("reset"), True)
    assert policy.after_error(0, refused, idempotent=False, replayable=True)
    assert not policy.after_error(0, reset, idempotent=False, replayable=True)
    assert policy.after_error(0, reset, idempotent=True, replayable=True)
    assert not policy.after_error(0, reset, idempotent=True, replayable=False)
    assert not policy.after_error(2, refused, idempotent=True, replayable=True)  # tries used up
    assert not policy.after_error(0, UpstreamConnectError("no flag: counts as sent"), False, True)
    assert not policy.after_error(0, ValueError("not ours"), True, True)


def test_statuses_are_retried_only_for_idempotent_requests() -> None:
    policy = RetryPolicy(1, RetryConfig())
    assert policy.after_status(0, 503, idempotent=True, replayable=True)
    assert not policy.after_status(0, 503, idempotent=False, replayable=True)
    assert not policy.after_status(0, 500, idempotent=True, replayable=True)
    assert not policy.after_status(1, 502, idempotent=True, replayable=True)


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    policy = RetryPolicy(9, RetryConfig(backoff=0.1, max_backoff=0.5), rng=random.Random(3))
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)]:
        delays = [policy.backoff(attempt) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8


def test_the_budget_caps_retries_at_a_share_of_requests_plus_a_floor() -> None:
    clock = Clock()
    budget = RetryBudget(20, 0.5, clock=clock)  # floor: 0.5/s over 10 s = 5
    for _ in range(100):
        budget.record_request()
    granted = sum(budget.try_acquire() for _ in range(100))
    assert granted == 25  # 20 % of 100, plus 5
    clock.now += 11  # the window moved on
    assert budget.try_acquire()
    assert budget.stats() == {"requests": 0, "retries": 1}


async def _body(*chunks: bytes) -> object:
    for c in chunks:
        yield c


async def test_prepare_body_keeps_small_bodies_and_streams_big_ones() -> None:
    small = Request("PUT", "/", headers=Headers([(b"content-length", b"5")]), body=_body(b"he", b"llo"))  # type: ignore[arg-type]
    assert await prepare_body(small, 64)
    assert is_replayable(small.body) and await small.read() == b"hello"

    big = Request("PUT", "/", headers=Headers([(b"content-length", b"100")]), body=_body(b"x" * 100))  # type: ignore[arg-type]
    assert not await prepare_body(big, 64)

    chunked = [(b"transfer-encoding", b"chunked")]
    short = Request("POST", "/", headers=Headers(chunked), body=_body(b"a", b"b"))  # type: ignore[arg-type]
    assert await prepare_body(short, 64)
    assert await short.read() == b"ab"

    long = Request("POST", "/", headers=Headers(chunked), body=_body(b"a" * 40, b"b" * 40, b"c"))  # type: ignore[arg-type]
    assert not await prepare_body(long, 64)
    assert b"".join([c async for c in long.body]) == b"a" * 40 + b"b" * 40 + b"c"  # nothing lost

    assert await prepare_body(Request("GET", "/"), 64)  # no body at all


# -- through a real gateway --------------------------------------------------------


async def test_a_get_answered_503_is_retried_on_another_instance() -> None:
    async with cluster(2, retries=2) as c:
        c.instances[0].status = 503
        for _ in range(10):
            response = await c.client.get("/")
            assert response.status == 200 and response.body == b"i1"
        assert c.instances[0].requests >= 1  # it was tried, and never twice for one request
        assert c.instances[0].requests <= 10


async def test_a_post_answered_503_is_not_retried_but_one_with_an_idempotency_key_is() -> None:
    async with cluster(2, retries=2) as c:
        c.instances[0].status = 503
        statuses = [(await c.client.post("/", body=b"x")).status for _ in range(4)]
        assert sorted(statuses) == [200, 200, 503, 503]  # round robin, no retry
        assert c.instances[0].requests == 2
        for _ in range(4):
            response = await c.client.post("/", body=b"x", headers={"idempotency-key": "k"})
            assert response.status == 200


async def test_a_post_to_a_dead_instance_is_retried_because_it_never_left() -> None:
    async with cluster(2, dead=[0], retries=2) as c:
        for n in range(6):
            response = await c.client.post("/", body=b"order", headers={"x-call-id": f"c{n}"})
            assert response.status == 200
        assert c.instances[1].seen == {f"c{n}": 1 for n in range(6)}


async def test_a_body_too_big_to_keep_is_never_resent() -> None:
    # Unbuffered: a buffered body (docs/configuration.md, "Request bodies") is kept whole and may be resent.
    async with cluster(2, retries=2, retry_policy={"body_limit": 1024}, request_buffering=False) as c:
        c.instances[0].status = c.instances[1].status = 503
        response = await c.client.put("/", body=b"x" * 2048)
        assert response.status == 503
        assert c.instances[0].requests + c.instances[1].requests == 1
        response = await c.client.put("/", body=b"y" * 512)
        assert response.status == 503
        assert c.instances[0].requests + c.instances[1].requests == 1 + 3
        assert c.instances[0].bodies[-1] == b"y" * 512 or c.instances[1].bodies[-1] == b"y" * 512


async def test_a_chunked_body_is_kept_and_resent_whole() -> None:
    async with cluster(2, retries=1) as c:
        c.instances[0].status = 503
        for _ in range(2):
            response = await c.client.put("/", body=b"chunky", headers={"transfer-encoding": "chunked"})
            assert response.status == 200
        assert c.instances[1].bodies == [b"chunky", b"chunky"]


async def test_the_budget_stops_retries_from_multiplying_an_outage() -> None:
    policy = {"budget_percent": 20, "min_retries_per_second": 0, "backoff": 0}
    async with cluster(3, retries=5, retry_policy=policy) as c:
        for inst in c.instances:
            inst.status = 503
        for _ in range(50):
            assert (await c.client.get("/")).status == 503
        attempts = sum(i.requests for i in c.instances)
        assert 50 < attempts <= 60  # without the budget: 300


async def test_per_try_timeout_moves_on_to_another_instance() -> None:
    async with cluster(2, retries=1, retry_policy={"per_try_timeout": 0.3, "backoff": 0}) as c:
        c.instances[0].hang = True
        with anyio.fail_after(10):
            for _ in range(4):
                response = await c.client.get("/")
                assert response.status == 200 and response.body == b"i1"


async def test_the_overall_timeout_bounds_all_tries() -> None:
    policy = {"per_try_timeout": 0.3, "timeout": 0.5, "backoff": 0}
    async with cluster(3, retries=5, retry_policy=policy) as c:
        for inst in c.instances:
            inst.hang = True
        start = anyio.current_time()
        response = await c.client.get("/")
        assert response.status == 504
        assert anyio.current_time() - start < 2.0
        assert sum(i.requests for i in c.instances) == 2


async def test_retries_zero_means_one_try() -> None:
    async with cluster(2, retries=0) as c:
        c.instances[0].status = c.instances[1].status = 503
        assert (await c.client.get("/")).status == 503
        assert c.instances[0].requests + c.instances[1].requests == 1


# -- failover after a failed connect ------------------------------------------------


async def test_a_refused_connect_fails_over_whatever_retries_and_the_budget_say() -> None:
    """It never reached the instance: not a retry, so ``retries = 0`` and an empty
    budget do not stop it (before: half the requests were 502)."""
    policy = {"budget_percent": 0, "min_retries_per_second": 0}
    async with cluster(2, dead=[0], retries=0, retry_policy=policy, healthchecks={"passive": None}) as c:
        for n in range(10):
            response = await c.client.post("/", body=b"order", headers={"x-call-id": f"c{n}"})
            assert response.status == 200
        assert c.instances[1].seen == {f"c{n}": 1 for n in range(10)}
        assert c.gateway.services["svc"].guard.budget.stats()["retries"] == 0


async def test_failovers_zero_turns_it_off() -> None:
    async with cluster(
        2, dead=[0], retries=0, retry_policy={"failovers": 0}, healthchecks={"passive": None}
    ) as c:
        statuses = sorted([(await c.client.get("/")).status for _ in range(4)])
        assert statuses == [200, 200, 502, 502]


async def test_a_streamed_body_not_yet_read_fails_over_too() -> None:
    """A body too big to keep is never re-sent, but after a refused connect not a byte of
    it was read: it goes whole to the other instance."""
    async with cluster(
        2,
        dead=[0],
        retries=0,
        retry_policy={"body_limit": 16},
        request_buffering=False,
        healthchecks={"passive": None},
    ) as c:
        for _ in range(4):
            assert (await c.client.put("/", body=b"x" * 4096)).status == 200
        assert c.instances[1].bodies == [b"x" * 4096] * 4


async def test_failover_tries_each_instance_once_then_answers_502() -> None:
    async with cluster(4, dead=[0, 1, 2, 3], retries=0) as c:
        start = anyio.current_time()
        response = await c.client.post("/", body=b"x")
        assert response.status == 502
        assert "cannot connect" in response.json()["detail"]
        assert anyio.current_time() - start < 2.0


async def test_when_every_healthy_instance_refused_the_ejected_ones_are_the_last_resort() -> None:
    """Envoy's panic mode: an ejected instance (it may be back) is tried before a 502."""
    a, b = Instance("127.0.0.1", 1), Instance("127.0.0.1", 2)
    guard = UpstreamGuard("svc", RoundRobin(), retries=0, healthchecks=HealthchecksConfig())
    assert guard.health is not None
    guard.health.available([a, b])
    guard.health.report(a, CONNECT)  # a is ejected
    assert guard.health.available([a, b]) == [b]
    calls: list[int] = []

    async def send(instance: Instance) -> Response:
        calls.append(instance.port)
        if instance is b:
            error = _sent(UpstreamConnectError("cannot connect: refused"), False)
            error.connect_failed = True  # type: ignore[attr-defined]
            raise error
        return Response(200, Headers(), b"ok", "service")

    response = await guard.call([a, b], Request("POST", "/", body=EMPTY_BODY), send)
    assert (response.status, calls) == (200, [2, 1])


async def test_an_error_after_the_connect_is_no_failover() -> None:
    """A POST that may have reached the instance (reset after the write) is never re-sent."""
    a, b = Instance("127.0.0.1", 1), Instance("127.0.0.1", 2)
    guard = UpstreamGuard("svc", RoundRobin(), retries=2, healthchecks=HealthchecksConfig())
    calls: list[int] = []

    async def send(instance: Instance) -> Response:
        calls.append(instance.port)
        raise _sent(UpstreamProtocolError("connection reset while reading the response"), True)

    with pytest.raises(UpstreamProtocolError):
        await guard.call([a, b], Request("POST", "/", body=EMPTY_BODY), send)
    assert len(calls) == 1
