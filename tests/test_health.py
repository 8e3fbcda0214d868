"""Health checks: passive outlier ejection and active probes."""

from __future__ import annotations

import anyio
import pytest

from gatekeep import Instance
from gatekeep.resilience import HealthchecksConfig, HealthTracker
from gatekeep.resilience._config import ActiveHealthcheck, PassiveHealthcheck, PassiveUnhealthy
from gatekeep.resilience._health import CONNECT, CONNECT_TIMEOUT, HTTP, OK, TCP, TIMEOUT
from tests._resilience_servers import cluster

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _tracker(**passive: object) -> tuple[HealthTracker, Clock, list[Instance]]:
    clock = Clock()
    config = HealthchecksConfig(
        passive=PassiveHealthcheck(
            unhealthy=PassiveUnhealthy(http_failures=3, tcp_failures=2, timeouts=2),
            **passive,  # type: ignore[arg-type]
        )
    )
    tracker = HealthTracker(config, clock=clock, name="svc")
    instances = [Instance("10.0.0.1", p) for p in (1, 2, 3, 4)]
    assert tracker.available(instances) is instances
    return tracker, clock, instances


def test_consecutive_5xx_eject_an_instance_and_a_good_answer_resets_the_count() -> None:
    tracker, clock, inst = _tracker()
    tracker.report(inst[0], OK, 503)
    tracker.report(inst[0], OK, 500)
    tracker.report(inst[0], OK, 200)
    tracker.report(inst[0], OK, 503)
    tracker.report(inst[0], OK, 404)  # not an unhealthy status: resets too
    assert tracker.available(inst) == inst
    for _ in range(3):
        tracker.report(inst[0], OK, 502)
    assert tracker.available(inst) == inst[1:]
    assert tracker.health(inst[0]) == "ejected"
    assert tracker.stats()["10.0.0.1:1"] == "ejected"


def test_ejection_time_grows_with_repeats_up_to_a_cap_and_shrinks_after_good_behaviour() -> None:
    tracker, clock, inst = _tracker(base_ejection_time=10, max_ejection_time=25)
    durations = []
    for _ in range(4):
        tracker.report(inst[0], TCP)
        tracker.report(inst[0], TCP)
        start = clock.now
        while tracker.available(inst) != inst:
            clock.now += 1
        durations.append(clock.now - start)
    assert durations == [10, 20, 25, 25]
    clock.now += 100  # ten base periods back in service: the count is forgotten
    tracker.report(inst[0], TIMEOUT)
    tracker.report(inst[0], TIMEOUT)
    start = clock.now
    while tracker.available(inst) != inst:
        clock.now += 1
    assert clock.now - start == 10


def test_at_most_max_ejection_percent_are_ejected_and_never_all() -> None:
    tracker, clock, inst = _tracker(max_ejection_percent=50)
    for i in inst:
        tracker.report(i, TCP)
        tracker.report(i, TCP)
    assert len(tracker.available(inst)) == 2  # 50 % of 4

    tracker, clock, inst = _tracker(max_ejection_percent=100)
    for i in inst:
        tracker.report(i, TCP)
        tracker.report(i, TCP)
    assert len(tracker.available(inst)) == 1  # never the last one

    tracker, clock, inst = _tracker(max_ejection_percent=100)
    single = inst[:1]
    tracker.available(single)
    for _ in range(10):
        tracker.report(single[0], TCP)
    assert tracker.available(single) == single


def test_by_default_one_failed_connect_ejects_and_nothing_else_does() -> None:
    """No ``passive`` table: connect failures only, one is enough (nginx's max_fails=1)."""
    clock = Clock()
    tracker = HealthTracker(HealthchecksConfig(), clock=clock, name="svc")
    inst = [Instance("10.0.0.1", p) for p in (1, 2, 3, 4)]
    tracker.available(inst)
    for _ in range(20):  # answers and failures after a connection: never ejected by default
        tracker.report(inst[0], OK, 503)
        tracker.report(inst[0], TCP)
        tracker.report(inst[0], TIMEOUT)
    assert tracker.available(inst) is inst
    tracker.report(inst[1], CONNECT_TIMEOUT)
    assert tracker.available(inst) == [inst[0], inst[2], inst[3]]
    tracker.report(inst[2], CONNECT)
    assert tracker.available(inst) == [inst[0], inst[3]]
    tracker.report(inst[3], CONNECT)  # max_ejection_percent = 50: two of four at most
    assert tracker.available(inst) == [inst[0], inst[3]]
    clock.now += 30  # base_ejection_time
    assert tracker.available(inst) == inst


def test_connect_failures_count_as_tcp_or_timeout_failures_and_an_answer_resets_them() -> None:
    tracker, clock, inst = _tracker_with(connect_failures=3, tcp_failures=2, timeouts=2)
    tracker.report(inst[0], CONNECT)
    tracker.report(inst[0], OK, 200)  # resets every count
    tracker.report(inst[0], CONNECT)
    assert tracker.available(inst) is inst
    tracker.report(inst[0], TCP)  # it connected: the connect streak ends, the tcp one goes on
    assert tracker.available(inst) == inst[1:]
    tracker.report(inst[1], CONNECT_TIMEOUT)
    tracker.report(inst[1], TIMEOUT)
    assert tracker.health(inst[1]) == "ejected"


def test_a_threshold_of_zero_turns_its_kind_off() -> None:
    tracker, clock, inst = _tracker_with(connect_failures=0, tcp_failures=0, timeouts=2, http_failures=0)
    for _ in range(10):
        tracker.report(inst[0], CONNECT)
        tracker.report(inst[0], OK, 500)
    assert tracker.available(inst) is inst
    tracker.report(inst[0], CONNECT_TIMEOUT)
    tracker.report(inst[0], CONNECT_TIMEOUT)
    assert tracker.available(inst) == inst[1:]
    unhealthy = PassiveUnhealthy(http_failures=0, tcp_failures=0, timeouts=0, connect_failures=0)
    off = HealthTracker(HealthchecksConfig(passive=PassiveHealthcheck(unhealthy=unhealthy)))
    assert off.health(inst[0]) == "healthchecks_off"


def _tracker_with(**unhealthy: int) -> tuple[HealthTracker, Clock, list[Instance]]:
    clock = Clock()
    passive = PassiveHealthcheck(unhealthy=PassiveUnhealthy(**unhealthy), max_ejection_percent=100)
    tracker = HealthTracker(HealthchecksConfig(passive=passive), clock=clock, name="svc")
    instances = [Instance("10.0.0.1", p) for p in (1, 2, 3, 4)]
    tracker.available(instances)
    return tracker, clock, instances


def test_active_thresholds_and_state_changes() -> None:
    clock = Clock()
    config = HealthchecksConfig(active=ActiveHealthcheck())
    tracker = HealthTracker(config, clock=clock)
    changes: list[tuple[int, str, str]] = []
    tracker.on_change(lambda i, old, new: changes.append((i.port, old, new)))
    a, b = Instance("h", 1), Instance("h", 2)
    tracker.probe_result(a, HTTP)
    assert tracker.available([a, b]) == [a, b]
    tracker.probe_result(a, HTTP)  # unhealthy.http_failures = 2
    assert tracker.available([a, b]) == [b]
    assert tracker.health(a) == "unhealthy"
    tracker.probe_result(a, OK)
    assert tracker.health(a) == "unhealthy"
    tracker.probe_result(a, OK)  # healthy.successes = 2
    assert tracker.health(a) == "healthy"
    assert changes == [(1, "healthy", "unhealthy"), (1, "unhealthy", "healthy")]
    off = HealthTracker(HealthchecksConfig(passive=None))
    assert off.health(a) == "healthchecks_off"
    # By default passive ejection watches failed connects: the state is known.
    assert HealthTracker(HealthchecksConfig()).health(a) == "healthy"


async def test_passive_ejection_through_the_gateway_then_the_instance_returns() -> None:
    checks = {"passive": {"unhealthy": {"http_failures": 2}, "base_ejection_time": 0.5}}
    async with cluster(3, retries=0, healthchecks=checks) as c:
        c.instances[0].status = 500
        for _ in range(12):
            await c.client.get("/")
        assert c.instances[0].requests == 2  # ejected after its second 500
        guard = c.gateway.services["svc"].guard
        assert guard is not None and guard.health is not None
        assert guard.stats()["instances"][f"127.0.0.1:{c.ports[0]}"]["health"] == "ejected"
        c.instances[0].status = 200
        await anyio.sleep(0.6)
        for _ in range(6):
            assert (await c.client.get("/")).status == 200
        assert c.instances[0].requests > 2


async def test_active_checks_take_an_instance_out_and_bring_it_back() -> None:
    checks = {
        "active": {
            "http_path": "/health",
            "timeout": 1,
            "healthy": {"interval": 0.05, "successes": 2},
            "unhealthy": {"interval": 0.05, "http_failures": 2},
        }
    }
    async with cluster(3, healthchecks=checks) as c:
        tracker = c.gateway.services["svc"].guard.health  # type: ignore[union-attr]
        assert tracker is not None
        events = {"unhealthy": anyio.Event(), "healthy": anyio.Event()}
        tracker.on_change(lambda i, old, new: events[new].set() if i.port == c.ports[1] else None)
        c.instances[1].health_status = 503
        with anyio.fail_after(5):
            await events["unhealthy"].wait()
        before = c.instances[1].requests
        for _ in range(9):
            assert (await c.client.get("/")).status == 200
        assert c.instances[1].requests == before
        c.instances[1].health_status = 200
        with anyio.fail_after(5):
            await events["healthy"].wait()
        assert tracker.health(Instance("127.0.0.1", c.ports[1])) == "healthy"
        for _ in range(9):
            await c.client.get("/")
        assert c.instances[1].requests > before
        assert all(i.health_checks >= 2 for i in c.instances)


async def test_every_instance_actively_unhealthy_is_a_503() -> None:
    checks = {"active": {"http_path": "/health", "unhealthy": {"interval": 0.05, "http_failures": 1}}}
    async with cluster(2, healthchecks=checks) as c:
        for inst in c.instances:
            inst.health_status = 500
        for _ in range(250):
            response = await c.client.get("/")
            if response.status != 200:
                break
            await anyio.sleep(0.02)
        assert response.status == 503
        assert response.json()["type"].endswith("no-healthy-upstream")
