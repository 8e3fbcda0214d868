"""The circuit breaker's state machine (sans-IO, fake clock), and the 503 it causes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gatekeep import CircuitOpen
from gatekeep.resilience import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    TRANSITIONS,
    BreakerConfig,
    CircuitBreaker,
    circuit_open,
)
from tests.strategies import breaker_configs


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _breaker(**kw: float) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(BreakerConfig(**kw), clock=clock, name="t"), clock  # type: ignore[arg-type]


def test_the_table_names_every_move() -> None:
    assert TRANSITIONS == {
        (CLOSED, "trip"): OPEN,
        (OPEN, "cool"): HALF_OPEN,
        (HALF_OPEN, "recover"): CLOSED,
        (HALF_OPEN, "relapse"): OPEN,
    }
    assert [str(s) for s in (CLOSED, OPEN, HALF_OPEN)] == ["closed", "open", "half-open"]


def test_trips_on_consecutive_failures_and_a_success_resets_the_streak() -> None:
    b, _ = _breaker(consecutive_failures=3, minimum_calls=1000)
    for _ in range(2):
        b.on_failure()
    b.on_success()
    for _ in range(2):
        b.on_failure()
    assert b.state == "closed"
    b.on_failure()
    assert b.state == "open"
    assert not b.allow()


def test_trips_on_failure_rate_only_after_the_minimum_calls() -> None:
    b, clock = _breaker(consecutive_failures=0, failure_rate=0.5, minimum_calls=10, window=10)
    for _ in range(4):
        b.on_success()
        b.on_failure()
    assert b.state == "closed"  # 8 calls: below the minimum
    b.on_success()
    b.on_failure()
    assert b.state == "open"  # 10 calls, 5 failed


def test_old_calls_leave_the_rolling_window() -> None:
    b, clock = _breaker(consecutive_failures=0, failure_rate=0.5, minimum_calls=4, window=10)
    b.on_failure()
    b.on_failure()
    b.on_failure()
    clock.now += 11  # those three are gone
    b.on_success()
    b.on_success()
    b.on_success()
    b.on_failure()
    assert b.state == "closed"  # 1 of 4 in the window
    assert b.stats()["calls"] == 4


def test_open_then_half_open_admits_a_bounded_number_of_probes_then_closes() -> None:
    b, clock = _breaker(consecutive_failures=1, open_for=30, half_open_probes=2)
    changes: list[tuple[str, str]] = []
    b.on_change(lambda br, old, new: changes.append((str(old), str(new))))
    b.on_failure()
    assert b.retry_after() == 30
    clock.now += 29.5
    assert not b.allow()
    assert b.retry_after() == pytest.approx(0.5)
    clock.now += 0.5
    assert b.allow() and b.allow()
    assert b.state == "half-open"
    assert not b.allow()  # both probe slots taken
    b.on_success()
    assert b.state == "half-open"
    b.on_success()
    assert b.state == "closed"
    assert changes == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]


def test_a_failed_probe_reopens_for_another_full_period() -> None:
    b, clock = _breaker(consecutive_failures=1, open_for=10, half_open_probes=1)
    b.on_failure()
    clock.now += 10
    assert b.allow()
    b.on_failure()
    assert b.state == "open"
    assert b.retry_after() == 10


def test_a_cancelled_probe_gives_its_slot_back() -> None:
    b, clock = _breaker(consecutive_failures=1, open_for=1, half_open_probes=1)
    b.on_failure()
    clock.now += 1
    assert b.allow()
    assert not b.allow()
    b.on_cancel()
    assert b.allow()


def test_reports_while_open_are_ignored() -> None:
    b, clock = _breaker(consecutive_failures=1, open_for=5)
    b.on_failure()
    b.on_success()  # a call admitted before the trip ends late
    b.on_failure()
    assert b.state == "open" and b.retry_after() == 5


def test_circuit_open_is_a_503_problem_with_retry_after_in_whole_seconds() -> None:
    error = circuit_open("service 'orders'", 2.2)
    assert isinstance(error, CircuitOpen) and error.status == 503
    assert ("retry-after", "3") in error.headers
    assert circuit_open("x", 0.0).headers == [("retry-after", "1")]


@given(config=breaker_configs(), outcomes=st.lists(st.booleans(), max_size=200))
def test_closed_breaker_trips_exactly_when_a_rule_says_so(
    config: BreakerConfig, outcomes: list[bool]
) -> None:
    clock = Clock()
    b = CircuitBreaker(config, clock=clock)
    streak = calls = failures = 0
    for ok in outcomes:
        assert b.allow()
        calls += 1
        if ok:
            streak = 0
            b.on_success()
        else:
            streak += 1
            failures += 1
            b.on_failure()
        by_streak = 0 < config.consecutive_failures <= streak
        by_rate = calls >= config.minimum_calls and failures >= config.failure_rate * calls
        if by_streak or by_rate:
            assert b.state == "open"
            return
        assert b.state == "closed"


class BreakerMachine(RuleBasedStateMachine):
    """The breaker against a small model: states, probe slots and timing."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.config = BreakerConfig(
            consecutive_failures=3,
            failure_rate=0.5,
            window=10,
            minimum_calls=6,
            open_for=5,
            half_open_probes=2,
        )
        self.b = CircuitBreaker(self.config, clock=self.clock)
        self.in_flight = 0  # calls allowed and not yet reported
        self.moves: list[tuple[str, str]] = []
        self.b.on_change(lambda br, old, new: self.moves.append((str(old), str(new))))

    @rule(seconds=st.floats(min_value=0, max_value=8))
    def wait(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def call(self) -> None:
        before = self.b.state
        allowed = self.b.allow()
        if before == "closed":
            assert allowed
        if before == "open":
            assert allowed == (self.b.state == "half-open")
        if allowed:
            self.in_flight += 1

    @precondition(lambda self: self.in_flight > 0)
    @rule(ok=st.booleans())
    def report(self, ok: bool) -> None:
        self.in_flight -= 1
        before = self.b.state
        if ok:
            self.b.on_success()
        else:
            self.b.on_failure()
        after = self.b.state
        if before == "half-open" and not ok:
            assert after == "open"
        if before == "open":
            assert after in ("open", "half-open")  # ignored (time may have moved it on)

    @precondition(lambda self: self.in_flight > 0)
    @rule()
    def cancel(self) -> None:
        self.in_flight -= 1
        self.b.on_cancel()

    @invariant()
    def moves_follow_the_table(self) -> None:
        allowed = {(str(a), str(n)) for (a, _), n in TRANSITIONS.items()}
        assert set(self.moves) <= allowed
        for (_, new), (old, _) in zip(self.moves, self.moves[1:], strict=False):
            assert new == old

    @invariant()
    def open_means_refusing_until_the_period_ends(self) -> None:
        if self.b.state == "open":
            assert 0 < self.b.retry_after() <= self.config.open_for + 1e-9
            assert not self.b.available()

    @invariant()
    def half_open_never_exceeds_its_probes(self) -> None:
        if self.b.st is HALF_OPEN:
            assert 0 <= self.b._probes <= self.config.half_open_probes


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(max_examples=50, stateful_step_count=40, deadline=None)


# -- through a real gateway --------------------------------------------------------


@pytest.mark.anyio
async def test_an_open_service_breaker_fails_fast_with_503_and_retry_after() -> None:
    from tests._resilience_servers import cluster

    breaker = {"consecutive_failures": 2, "open_for": 30, "per_instance": False}
    async with cluster(1, retries=0, breaker=breaker) as c:
        c.instances[0].status = 500
        assert (await c.client.get("/")).status == 500
        assert (await c.client.get("/")).status == 500
        response = await c.client.get("/")
        assert response.status == 503
        assert response.header("content-type") == "application/problem+json"
        assert response.json()["type"].endswith("circuit-open")
        assert 29 <= int(response.header("retry-after") or 0) <= 30
        assert c.instances[0].requests == 2  # failed fast: the upstream was spared


@pytest.mark.anyio
async def test_an_open_instance_breaker_takes_the_instance_out_of_the_pick_set() -> None:
    from tests._resilience_servers import cluster

    breaker = {"consecutive_failures": 2, "open_for": 30, "per_service": False}
    async with cluster(2, retries=0, breaker=breaker) as c:
        guard = c.gateway.services["svc"].guard
        assert guard is not None
        changes: list[str] = []
        guard.on_change(lambda b, old, new: changes.append(f"{b.name}:{old}->{new}"))
        c.instances[0].status = 500
        for _ in range(4):
            await c.client.get("/")
        assert c.instances[0].requests == 2
        for _ in range(6):
            assert (await c.client.get("/")).body == b"i1"
        assert changes == [f"svc/127.0.0.1:{c.ports[0]}:closed->open"]
        assert guard.stats()["instances"][f"127.0.0.1:{c.ports[0]}"]["breaker"] == "open"


def test_bad_resilience_config_is_refused_with_every_path() -> None:
    from gatekeep import ConfigError, load_config

    service = {
        "name": "s",
        "url": "http://127.0.0.1:1",
        "routes": [{"paths": ["/"]}],
        "retries": -1,
        "breaker": {"failure_rate": 2, "open_for": 0},
        "healthchecks": {"active": {"http_path": "health"}, "passive": {"max_ejection_percent": 120}},
        "retry_policy": {"statuses": [700]},
    }
    with pytest.raises(ConfigError) as info:
        load_config({"services": [service]})
    paths = {e.path for e in info.value.errors}
    assert paths == {
        "services[0].retries",
        "services[0].breaker.failure_rate",
        "services[0].breaker.open_for",
        "services[0].healthchecks.active.http_path",
        "services[0].healthchecks.passive.max_ejection_percent",
        "services[0].retry_policy.statuses",
    }
    hashing = {"name": "s", "url": "http://127.0.0.1:1", "routes": [{"paths": ["/"]}]}
    with pytest.raises(ConfigError, match="hash_on_header"):
        load_config({"services": [{**hashing, "balancer": "consistent-hashing", "hash_on": "header"}]})
