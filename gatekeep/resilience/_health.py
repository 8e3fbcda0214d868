"""Health of a service's instances: active probes and passive outlier ejection.

Theory of operation
-------------------
``HealthTracker`` is the sans-IO core.  It keeps, per instance, counters of
consecutive outcomes and two verdicts:

*active* (``healthchecks.active``): an instance starts healthy; it turns
unhealthy after ``unhealthy.http_failures`` / ``tcp_failures`` /
``timeouts`` consecutive failed probes of that kind, and healthy again after
``healthy.successes`` consecutive good probes (Kong's counters).

*passive* (``healthchecks.passive``): live traffic reports each call.  After
``unhealthy.http_failures`` consecutive answers with an unhealthy status, or
``tcp_failures`` consecutive connection failures, or ``timeouts`` consecutive
timeouts, or ``connect_failures`` consecutive failed connects (a refused or
timed-out connect counts as a ``TCP`` or ``TIMEOUT`` failure as well), the
instance is *ejected* for ``base_ejection_time`` × (times ejected), at most
``max_ejection_time``; it returns by itself when that time passed.  A
threshold of 0 turns its kind off.  By default (no ``passive`` table) only
failed connects count, one is enough: nginx's ``max_fails=1`` for connect
errors, with Envoy's growing ejection time.  The ejection count shrinks by
one per ``base_ejection_time`` spent back in service, so an instance that
recovered for good starts over.  At most ``max_ejection_percent`` % of the
instances are ejected at once, and never the last one: the gateway must not take a whole service down by its
own judgement (a failure that reaches every instance is the breaker's
business).

``available(instances)`` returns the instances neither ejected nor actively
unhealthy; when nothing is excluded it returns its argument as is (the hot
path does one truth test).

``ActiveChecker`` is the I/O shell: on the gateway's lifespan task group it
GETs ``http_path`` of every instance, each at its own interval
(``healthy.interval`` while healthy, ``unhealthy.interval`` while not), at
most ``concurrency`` at a time, through the gateway's upstream pool.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import anyio

from .._balancer import InstanceKey, instance_key
from .._errors import UpstreamConnectError, UpstreamError, UpstreamTimeout
from .._http import empty_body
from .._protocols import Instance
from .._upstream import Timeouts, TLSSettings, connect_failed
from ._config import ActiveHealthcheck, HealthchecksConfig, PassiveHealthcheck

__all__ = [
    "CONNECT",
    "CONNECT_TIMEOUT",
    "HTTP",
    "OK",
    "TCP",
    "TIMEOUT",
    "ActiveChecker",
    "HealthTracker",
    "outcome_of",
]

log = logging.getLogger("gatekeep.health")

# Outcome kinds.
OK: Final = "ok"
HTTP: Final = "http"
TCP: Final = "tcp"
TIMEOUT: Final = "timeout"
# A connect that failed (refused, unreachable, TLS) or timed out: counted as
# ``CONNECT`` and as ``TCP`` or ``TIMEOUT``.
CONNECT: Final = "connect"
CONNECT_TIMEOUT: Final = "connect-timeout"


def outcome_of(exc: BaseException) -> str:
    """The failure kind of an upstream error."""
    if connect_failed(exc):
        return CONNECT_TIMEOUT if isinstance(exc, UpstreamTimeout) else CONNECT
    if isinstance(exc, UpstreamTimeout):
        return TIMEOUT
    return TCP


class _Target:
    __slots__ = (
        "active_counts",
        "active_healthy",
        "ejected_until",
        "ejections",
        "instance",
        "passive_counts",
        "returned_at",
    )

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.active_healthy = True
        self.active_counts = {OK: 0, HTTP: 0, TCP: 0, TIMEOUT: 0}
        self.passive_counts = {HTTP: 0, TCP: 0, TIMEOUT: 0, CONNECT: 0}
        self.ejected_until = 0.0
        self.ejections = 0
        self.returned_at = 0.0


class HealthTracker:
    """The health verdicts of one service's instances (see the module docstring)."""

    __slots__ = (
        "_active",
        "_callbacks",
        "_clock",
        "_counting",
        "_next_return",
        "_out",
        "_passive",
        "_passive_statuses",
        "_targets",
        "_thresholds",
        "_total",
        "name",
    )

    def __init__(
        self,
        config: HealthchecksConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        name: str = "",
    ) -> None:
        self._active: ActiveHealthcheck | None = config.active
        passive = config.passive
        self._thresholds: dict[str, int] = {}
        if passive is not None:
            u = passive.unhealthy
            self._thresholds = {
                HTTP: u.http_failures,
                TCP: u.tcp_failures,
                TIMEOUT: u.timeouts,
                CONNECT: u.connect_failures,
            }
            if not any(self._thresholds.values()):
                passive = None  # every kind off: nothing to count
        self._passive: PassiveHealthcheck | None = passive
        # Statuses that count as failures; none when http_failures is off, so
        # that every answer takes the fast path in ``report``.
        self._passive_statuses = frozenset(
            passive.unhealthy.http_statuses if passive is not None and passive.unhealthy.http_failures else ()
        )
        # Targets with a failure counted since their last good answer.
        self._counting: set[InstanceKey] = set()
        self._clock = clock
        self.name = name
        self._targets: dict[InstanceKey, _Target] = {}
        # Instances excluded now (ejected or actively unhealthy).
        self._out: set[InstanceKey] = set()
        self._next_return = math.inf
        self._total = 0
        self._callbacks: list[Callable[[Instance, str, str], None]] = []

    # -- verdicts ------------------------------------------------------------

    def available(self, instances: Sequence[Instance]) -> Sequence[Instance]:
        """``instances`` without the ejected and actively unhealthy ones."""
        self._total = len(instances)
        if not self._out:
            return instances
        if self._clock() >= self._next_return:
            self._return_due()
        out = self._out
        if not out:
            return instances
        return [i for i in instances if (i.scheme, i.host, i.port, i.id) not in out]

    def health(self, instance: Instance) -> str:
        """``"healthy"``, ``"unhealthy"`` (active checks), ``"ejected"`` (passive), or
        ``"healthchecks_off"`` (Kong's states, for ``gatekeep_upstream_target_health``)."""
        if self._active is None and self._passive is None:
            return "healthchecks_off"
        target = self._targets.get(instance_key(instance))
        if target is None:
            return "healthy"
        if target.ejected_until and self._clock() < target.ejected_until:
            return "ejected"
        return "healthy" if target.active_healthy else "unhealthy"

    def stats(self) -> dict[str, str]:
        """Per instance address: its ``health``."""
        return {t.instance.address: self.health(t.instance) for t in self._targets.values()}

    def on_change(self, callback: Callable[[Instance, str, str], None]) -> None:
        """Call ``callback(instance, old_health, new_health)`` when a verdict changes."""
        self._callbacks.append(callback)

    # -- passive: live traffic -----------------------------------------------

    def report(self, instance: Instance, kind: str, status: int = 0) -> None:
        """One live call's outcome: ``OK`` with its status, or a failure kind (``outcome_of``)."""
        passive = self._passive
        if passive is None:
            return
        if kind == OK:
            if status not in self._passive_statuses:
                counting = self._counting
                if counting:  # else nothing to reset: the common case, no lookup
                    key = instance_key(instance)
                    if key in counting:
                        counting.discard(key)
                        _reset(self._targets[key].passive_counts)
                return
            kind = HTTP
        target = self._target(instance)
        counts = target.passive_counts
        if kind == CONNECT or kind == CONNECT_TIMEOUT:
            counts[CONNECT] += 1
            kind = TCP if kind == CONNECT else TIMEOUT
        else:
            counts[CONNECT] = 0  # it connected: a failure of another kind
        counts[kind] += 1
        self._counting.add(instance_key(instance))
        thresholds = self._thresholds
        for counted, threshold in thresholds.items():
            if threshold and counts[counted] >= threshold:
                self._eject(instance, target, passive)
                return

    def _eject(self, instance: Instance, target: _Target, passive: PassiveHealthcheck) -> None:
        now = self._clock()
        if now < target.ejected_until:
            return  # already out (a late report)
        self._return_due()
        total = max(self._total, len(self._targets))
        ejected = sum(1 for t in self._targets.values() if t.ejected_until > now)
        cap = min(int(total * passive.max_ejection_percent / 100), total - 1)
        if ejected + 1 > cap:
            return  # keep counting; maybe later
        base = passive.base_ejection_time
        if target.ejections:
            target.ejections = max(0, target.ejections - int((now - target.returned_at) / base))
        target.ejections += 1
        target.ejected_until = now + min(base * target.ejections, passive.max_ejection_time)
        _reset(target.passive_counts)
        self._counting.discard(instance_key(instance))
        old = "healthy" if target.active_healthy else "unhealthy"
        self._out.add(instance_key(instance))
        self._next_return = min(self._next_return, target.ejected_until)
        log.warning(
            "service %r: ejected %s for %.0f s (ejection %d)",
            self.name,
            instance.address,
            target.ejected_until - now,
            target.ejections,
        )
        self._changed(instance, old, "ejected")

    def _return_due(self) -> None:
        now = self._clock()
        nxt = math.inf
        for key, target in self._targets.items():
            until = target.ejected_until
            if not until:
                continue
            if now >= until:
                target.ejected_until = 0.0
                target.returned_at = now
                new = "healthy" if target.active_healthy else "unhealthy"
                if target.active_healthy:
                    self._out.discard(key)
                self._changed(target.instance, "ejected", new)
            else:
                nxt = min(nxt, until)
        self._next_return = nxt

    # -- active: probes ------------------------------------------------------

    def probe_result(self, instance: Instance, kind: str) -> None:
        """One active probe's outcome: ``OK``, ``HTTP`` (an unhealthy status), ``TCP``, ``TIMEOUT``."""
        active = self._active
        if active is None:
            return
        target = self._target(instance)
        counts = target.active_counts
        if kind == OK:
            counts[HTTP] = counts[TCP] = counts[TIMEOUT] = 0
            counts[OK] += 1
            if not target.active_healthy and counts[OK] >= active.healthy.successes:
                target.active_healthy = True
                if not (target.ejected_until and self._clock() < target.ejected_until):
                    self._out.discard(instance_key(instance))
                    self._changed(instance, "unhealthy", "healthy")
            return
        counts[OK] = 0
        counts[kind] += 1
        unhealthy = active.unhealthy
        threshold = {HTTP: unhealthy.http_failures, TCP: unhealthy.tcp_failures, TIMEOUT: unhealthy.timeouts}
        if target.active_healthy and counts[kind] >= threshold[kind]:
            target.active_healthy = False
            counts[HTTP] = counts[TCP] = counts[TIMEOUT] = 0
            key = instance_key(instance)
            was_out = key in self._out
            self._out.add(key)
            log.warning("service %r: %s failed its health checks", self.name, instance.address)
            if not was_out:
                self._changed(instance, "healthy", "unhealthy")

    def active_healthy(self, instance: Instance) -> bool:
        target = self._targets.get(instance_key(instance))
        return target is None or target.active_healthy

    # -- internals -------------------------------------------------------------

    def _target(self, instance: Instance) -> _Target:
        key = instance_key(instance)
        target = self._targets.get(key)
        if target is None:
            target = self._targets[key] = _Target(instance)
        return target

    def _changed(self, instance: Instance, old: str, new: str) -> None:
        for callback in self._callbacks:
            callback(instance, old, new)


def _reset(counts: dict[str, int]) -> None:
    counts[HTTP] = counts[TCP] = counts[TIMEOUT] = counts[CONNECT] = 0


class ActiveChecker:
    """Probes a service's instances on the gateway's task group (see the module docstring)."""

    def __init__(
        self,
        tracker: HealthTracker,
        config: ActiveHealthcheck,
        *,
        scheme: str,
        tls: TLSSettings | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tracker = tracker
        self.config = config
        self.scheme = config.type or scheme
        self.tls = tls
        if self.scheme == "https" and not config.https_verify_certificate:
            base = tls or TLSSettings()
            self.tls = TLSSettings(
                verify=False,
                ca_file=base.ca_file,
                cert_file=base.cert_file,
                key_file=base.key_file,
                server_name=base.server_name,
            )
        t = config.timeout
        self.timeouts = Timeouts(connect=t, read=t, write=t, pool=t)
        self._clock = clock
        self._target = config.http_path.encode("latin-1")
        self._healthy = frozenset(config.healthy.http_statuses)
        self._unhealthy = frozenset(config.unhealthy.http_statuses)
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    async def probe(self, pool: Any, instance: Instance) -> str:
        """GET the health path of ``instance`` once; return the outcome kind."""
        if instance.scheme != self.scheme:
            instance = Instance(instance.host, instance.port, self.scheme, instance.weight, instance.id)
        headers = [(b"host", instance.address.encode("latin-1")), (b"user-agent", b"gatekeep-healthcheck")]
        try:
            with anyio.fail_after(self.config.timeout):
                response = await pool.send(
                    instance,
                    "GET",
                    self._target,
                    headers,
                    empty_body(),
                    timeouts=self.timeouts,
                    tls=self.tls,
                    retry_safe=True,
                )
                try:
                    async for _ in response.iter_body():
                        pass
                finally:
                    await response.aclose()
        except TimeoutError:
            return TIMEOUT
        except UpstreamTimeout:
            return TIMEOUT
        except (UpstreamConnectError, UpstreamError):
            return TCP
        status: int = response.status
        if status in self._healthy:
            return OK
        if status in self._unhealthy:
            return HTTP
        return OK

    async def run(self, pool: Any, instances: Callable[[], Sequence[Instance]]) -> None:
        """Probe until cancelled or stopped."""
        config = self.config
        due: dict[InstanceKey, float] = {}
        limiter = anyio.CapacityLimiter(config.concurrency)
        tracker = self.tracker

        async def one(instance: Instance) -> None:
            async with limiter:
                kind = await self.probe(pool, instance)
            if self._stopped:
                return
            tracker.probe_result(instance, kind)
            interval = (
                config.healthy.interval if tracker.active_healthy(instance) else config.unhealthy.interval
            )
            due[instance_key(instance)] = self._clock() + interval

        while not self._stopped:
            now = self._clock()
            current = {instance_key(i): i for i in instances()}
            for gone in [k for k in due if k not in current]:
                del due[gone]
            ready = [i for k, i in current.items() if due.get(k, 0.0) <= now]
            if ready:
                async with anyio.create_task_group() as tg:
                    for instance in ready:
                        due[instance_key(instance)] = math.inf  # in flight
                        tg.start_soon(one, instance)
            now = self._clock()
            nxt = min(due.values(), default=now + config.healthy.interval)
            await anyio.sleep(max(0.01, min(nxt - now, config.healthy.interval, config.unhealthy.interval)))
