"""The upstream stage of one service: pick, guard, send, judge, maybe retry.

``UpstreamGuard.call(instances, request, send)`` is what the gateway runs for
a proxied request.  It composes the sans-IO parts:

1. the service breaker (when open: ``CircuitOpen``, 503 with ``Retry-After``);
2. the pick set: discovery's instances minus ejected / actively unhealthy ones
   (``HealthTracker``) minus those whose own breaker is open, minus the
   instances already tried when another is left; then ``Balancer.pick`` and
   the instance breaker's ``allow``;
3. ``send(instance)`` (the gateway's pooled HTTP call), under the per-try and
   overall timeouts when configured;
4. the outcome, to the balancer (``observe``, for an ``ObservingBalancer``:
   latency to the response head, ok or not), the instance breaker, passive
   health checks and, once per request, the service breaker;
5. a *failover* when the try failed to connect (refused, unreachable,
   connect timeout, TLS handshake; ``connect_failed``): the instance never
   saw the request, so it goes at once to an instance not tried yet, for any
   method, up to ``retry_policy.failovers`` times and at most once per
   instance, outside ``retries`` and the budget (a dead instance must not
   cost a share of the traffic while the budget is spent: Envoy's and
   nginx's ``proxy_next_upstream error`` do the same).  The failed connect
   also goes to passive health, which ejects the instance (by default after
   one failed connect);
6. otherwise a retry when ``RetryPolicy`` says it is safe and the
   ``RetryBudget`` has room, after a jittered backoff.

Instances already tried are left out of the pick set while others are left;
when only tried ones are left among the healthy, the ejected / unhealthy
untried ones are the last resort (Envoy's panic mode) before giving up.

A ``CountingBalancer``'s ``release`` runs when the response body is closed
(or at once for a try that failed or is retried).  Everything else is decided
by the sans-IO cores; this class only sequences them and owns the sleeps.

Protocols only.  The balancer and the breakers may be user objects
(``Gateway(balancer=, breaker=)``): the guard calls what ``Balancer`` and
``Breaker`` declare, and the optional extras (``ObservingBalancer``,
``CountingBalancer``, ``ObservableBreaker``) only when the object has them --
decided once, when the guard gets the object.  A breaker without the extras
is wrapped once in ``_PlainBreaker`` (the documented defaults), so the
request path never asks what an object can do.
"""

from __future__ import annotations

import contextlib
import functools
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .._balancer import InstanceKey
from .._errors import NoHealthyUpstream, UpstreamError, UpstreamTimeout
from .._http import EMPTY_BODY, Request, Response
from .._protocols import (
    Balancer,
    Breaker,
    BreakerChange,
    CountingBalancer,
    Instance,
    ObservableBreaker,
    ObservingBalancer,
)
from .._upstream import body_untouched, connect_failed, request_sent
from ._breaker import CircuitBreaker, circuit_open
from ._config import BreakerConfig, HealthchecksConfig, RetryConfig
from ._health import OK, ActiveChecker, HealthTracker, outcome_of
from ._retry import IDEMPOTENT_METHODS, RetryBudget, RetryPolicy, is_idempotent, prepare_body

__all__ = ["UpstreamGuard"]

Send = Callable[[Instance], Awaitable[Response]]

_DEFAULT_RETRY = RetryConfig()
_NO_HEALTHCHECKS = HealthchecksConfig()


class UpstreamGuard:
    """Balancing, breakers, health and retries for one service.

    Args:
        name: the service name.
        balancer: a ``Balancer`` (also told latencies and releases when it is
            an ``ObservingBalancer`` / ``CountingBalancer``).
        retries: extra tries after the first (Kong's ``retries``).
        retry: backoff, timeouts and budget.
        breaker: breaker thresholds, ``None`` for no breakers.
        healthchecks: active and passive health checks.
        scheme, tls: how active probes reach the instances.
        clock: a monotonic clock; rng: the random source for backoff jitter.
        make_breaker: builds the breakers instead of ``CircuitBreaker``: called
            with ``None`` for the service's breaker and with each instance for
            its own (``Gateway(breaker=...)``); ``None`` means no breaker there.
    """

    def __init__(
        self,
        name: str,
        balancer: Balancer,
        *,
        retries: int = 0,
        retry: RetryConfig = _DEFAULT_RETRY,
        breaker: BreakerConfig | None = None,
        healthchecks: HealthchecksConfig = _NO_HEALTHCHECKS,
        scheme: str = "http",
        tls: Any = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        make_breaker: Callable[[Instance | None], Breaker | None] | None = None,
    ) -> None:
        self.name = name
        self._make_breaker = make_breaker
        self.balancer = balancer
        # The optional balancer protocols, asked once here, never per request.
        self._observe: Callable[[Instance, float, bool], None] | None = (
            balancer.observe if isinstance(balancer, ObservingBalancer) else None
        )
        self._release: Callable[[Instance], None] = (
            balancer.release if isinstance(balancer, CountingBalancer) else _no_release
        )
        self.policy = RetryPolicy(retries, retry, rng=rng)
        self.retries = retries
        self.budget = RetryBudget(retry.budget_percent, retry.min_retries_per_second, clock=clock)
        self._per_try = retry.per_try_timeout
        self._overall = retry.timeout
        self._body_limit = retry.body_limit
        self._failovers = retry.failovers
        self._prepare = bool(retries or retry.failovers)
        self._clock = clock
        self.breaker_config = breaker
        self._failure_statuses = frozenset(breaker.failure_statuses if breaker else (500, 502, 503, 504))
        self._callbacks: list[BreakerChange] = []
        self._dispatching = False  # the breakers call ``_changed`` (once the first watcher came)
        self.breaker: ObservableBreaker | None = None
        if make_breaker is not None:
            self.breaker = observable(make_breaker(None))
        elif breaker is not None and breaker.per_service:
            self.breaker = CircuitBreaker(breaker, clock=clock, name=name)
        if self.breaker is None:
            self.call = self._tries  # type: ignore[method-assign]
        self._per_instance = make_breaker is not None or (breaker is not None and breaker.per_instance)
        # Per instance (``instance_key``): its breaker and the instance.
        self.instance_breakers: dict[InstanceKey, ObservableBreaker] = {}
        self._breaker_instances: dict[InstanceKey, Instance] = {}
        self._unclosed = 0  # instance breakers not closed now
        self.health: HealthTracker | None = None
        self.checker: ActiveChecker | None = None
        if healthchecks.active is not None or healthchecks.passive is not None:
            self.health = HealthTracker(healthchecks, clock=clock, name=name)
            if healthchecks.active is not None:
                self.checker = ActiveChecker(
                    self.health, healthchecks.active, scheme=scheme, tls=tls, clock=clock
                )

    # -- observation -----------------------------------------------------------

    def on_change(self, callback: BreakerChange) -> Callable[[], None]:
        """Call ``callback(breaker, old, new)`` on state changes of this service's breakers.

        Returns what stops it.  The breakers know one callback of the guard's, which calls
        the current ones: a guard kept across reloads does not collect its watchers' callbacks.
        """
        if not self._dispatching:
            self._dispatching = True
            if self.breaker is not None:
                self.breaker.on_change(self._changed)
            for b in self.instance_breakers.values():
                b.on_change(self._changed)
        self._callbacks.append(callback)
        return functools.partial(self._off, callback)

    def _off(self, callback: BreakerChange) -> None:
        with contextlib.suppress(ValueError):  # stopped already
            self._callbacks.remove(callback)

    def _changed(self, breaker: Any, old: Any, new: Any) -> None:
        for callback in tuple(self._callbacks):
            callback(breaker, old, new)

    def breaker_for(self, instance: Instance) -> ObservableBreaker | None:
        """The breaker of ``instance`` (made on first use), ``None`` without per-instance breakers."""
        if not self._per_instance:
            return None
        key = (instance.scheme, instance.host, instance.port, instance.id)
        b = self.instance_breakers.get(key)
        if b is None:
            if self._make_breaker is not None:
                b = observable(self._make_breaker(instance)) or _NO_BREAKER
            else:
                assert self.breaker_config is not None
                b = CircuitBreaker(
                    self.breaker_config, clock=self._clock, name=f"{self.name}/{instance.address}"
                )
            b.on_change(self._count_unclosed)
            if self._dispatching:
                b.on_change(self._changed)
            self.instance_breakers[key] = b
            self._breaker_instances[key] = instance
        return b

    def stats(self) -> dict[str, Any]:
        """Breaker states and instance health, for metrics and admin endpoints."""
        instances: dict[str, dict[str, str]] = {}
        for key, b in self.instance_breakers.items():
            address = self._breaker_instances[key].address
            instances.setdefault(address, {})["breaker"] = b.state
        if self.health is not None:
            for address, health in self.health.stats().items():
                instances.setdefault(address, {})["health"] = health
        return {
            "breaker": self.breaker.state if self.breaker is not None else None,
            "instances": instances,
            "budget": self.budget.stats(),
        }

    def _count_unclosed(self, breaker: Any, old: Any, new: Any) -> None:
        # By name: a user ``ObservableBreaker`` may name its states with plain strings.
        if str(old) == "closed":
            self._unclosed += 1
        elif str(new) == "closed":
            self._unclosed -= 1

    # -- lifespan --------------------------------------------------------------

    async def start(
        self, task_group: TaskGroup, pool: Any, instances: Callable[[], Sequence[Instance]]
    ) -> None:
        """Start active health checks (if configured) on ``task_group``."""
        if self.checker is not None:
            task_group.start_soon(self.checker.run, pool, instances, name=f"gatekeep healthcheck {self.name}")

    def stop(self) -> None:
        if self.checker is not None:
            self.checker.stop()

    # -- the call ----------------------------------------------------------------

    async def call(self, instances: Sequence[Instance], request: Request, send: Send) -> Response:
        """Send ``request`` to one of ``instances`` through ``send``, guarded; see the module docstring.

        (Without a service breaker, ``call`` is ``_tries`` itself: one
        coroutine less on every request.)

        Raises:
            CircuitOpen: the service's breaker, or every instance's, is open.
            NoHealthyUpstream: every instance is unhealthy.
            UpstreamError: the last try failed.
        """
        sb = self.breaker
        if sb is not None and not sb.allow():
            raise circuit_open(f"service {self.name!r}", sb.retry_after())
        try:
            response = await self._tries(instances, request, send)
        except UpstreamError:
            if sb is not None:
                sb.on_failure()
            raise
        except BaseException:
            if sb is not None:
                sb.on_cancel()
            raise
        if sb is not None:
            if response.status in self._failure_statuses:
                sb.on_failure()
            else:
                sb.on_success()
        return response

    async def _tries(self, instances: Sequence[Instance], request: Request, send: Send) -> Response:
        policy = self.policy
        clock = self._clock
        replayable = False
        idempotent = False
        deadline = 0.0
        if self._prepare:
            replayable = request.body is EMPTY_BODY or await prepare_body(request, self._body_limit)
            if self.retries:
                self.budget.record_request()
                idempotent = request.method in IDEMPOTENT_METHODS or is_idempotent(request)
                if self._overall is not None:
                    deadline = clock() + self._overall
        tried: list[Instance] = []
        attempt = 0
        failovers = len(instances) - 1
        if self._failovers < failovers:
            failovers = self._failovers
        observe = self._observe
        release = self._release
        health = self.health
        # Only a deadline and the balancer's latencies need the clock around a try.
        timed = observe is not None or bool(deadline)
        while True:
            if tried or self._unclosed or self._per_instance:
                instance, ib = self._pick(instances, request, tried)
            else:
                # ``_pick``'s first try without breakers, inline.
                candidates = instances
                if health is not None:
                    candidates = health.available(instances)
                    if not candidates:
                        raise NoHealthyUpstream(f"service {self.name!r}: every instance is unhealthy")
                instance = self.balancer.pick(candidates, request)
                ib = None
            start = clock() if timed else 0.0
            try:
                limit = self._per_try
                if deadline:
                    left = deadline - start
                    limit = left if limit is None else min(limit, left)
                if limit is None:
                    response = await send(instance)
                else:
                    response = await _send_within(send, instance, limit)
            except UpstreamError as exc:
                elapsed = clock() - start if observe is not None else 0.0
                release(instance)
                if observe is not None:
                    observe(instance, elapsed, False)
                if ib is not None:
                    ib.on_failure()
                if health is not None:
                    health.report(instance, outcome_of(exc))
                if (
                    failovers > 0
                    and connect_failed(exc)
                    and not request_sent(exc)
                    and (replayable or body_untouched(exc))
                    and (not deadline or clock() < deadline)
                ):
                    failovers -= 1
                    tried.append(instance)
                    continue
                if (
                    policy.after_error(attempt, exc, idempotent, replayable)
                    and (not deadline or clock() < deadline)
                    and self.budget.try_acquire()
                ):
                    attempt += 1
                    tried.append(instance)
                    await anyio.sleep(policy.backoff(attempt))
                    continue
                raise
            except BaseException:
                release(instance)
                if ib is not None:
                    ib.on_cancel()
                raise
            status = response.status
            failed = status in self._failure_statuses
            if observe is not None:
                observe(instance, clock() - start, not failed)
            if ib is not None:
                if failed:
                    ib.on_failure()
                else:
                    ib.on_success()
            if health is not None:
                health.report(instance, OK, status)
            if (
                status in policy.statuses
                and policy.after_status(attempt, status, idempotent, replayable)
                and (not deadline or clock() < deadline)
                and self.budget.try_acquire()
            ):
                await response.aclose()
                release(instance)
                attempt += 1
                tried.append(instance)
                await anyio.sleep(policy.backoff(attempt))
                continue
            if release is not _no_release:
                _release_on_close(response, release, instance)
            return response

    def _pick(
        self, instances: Sequence[Instance], request: Request, tried: list[Instance]
    ) -> tuple[Instance, ObservableBreaker | None]:
        candidates = instances
        if self.health is not None:
            candidates = self.health.available(candidates)
            if not candidates:
                raise NoHealthyUpstream(f"service {self.name!r}: every instance is unhealthy")
            if tried and candidates is not instances and all(i in tried for i in candidates):
                # Every healthy instance failed this request: the excluded ones are the last resort.
                candidates = [i for i in instances if i not in tried] or candidates
        if self._unclosed:
            closed = [i for i in candidates if self.breaker_for(i).available()]  # type: ignore[union-attr]
            if not closed:
                wait = min(self.breaker_for(i).retry_after() for i in candidates)  # type: ignore[union-attr]
                raise circuit_open(f"every instance of service {self.name!r}", wait)
            candidates = closed
        if tried:
            rest = [i for i in candidates if i not in tried]
            if rest:
                candidates = rest
        balancer = self.balancer
        if not self._per_instance:
            return balancer.pick(candidates, request), None
        while True:
            instance: Instance = balancer.pick(candidates, request)
            ib = self.breaker_for(instance)
            assert ib is not None
            if ib.allow():
                return instance, ib
            # Half-open with every probe slot taken: try another.
            self._release(instance)
            candidates = [i for i in candidates if i != instance]
            if not candidates:
                raise circuit_open(f"every instance of service {self.name!r}", ib.retry_after())


def _no_release(instance: Instance) -> None:
    return None


class _PlainBreaker:
    """A ``Breaker`` without the ``ObservableBreaker`` extras, given their defaults.

    Wrapped once, when the guard gets the breaker: the request path then
    calls the same methods on every breaker.  No state is known (the metrics
    show none), ``available`` leaves the choice to ``allow``, a refusal says
    ``Retry-After: 1`` and there is no probe slot to give back.
    """

    __slots__ = ("allow", "breaker", "on_failure", "on_success")

    def __init__(self, breaker: Breaker) -> None:
        self.breaker = breaker
        # Bound once: the wrapper adds no call of its own on the request path.
        self.allow = breaker.allow
        self.on_success = breaker.on_success
        self.on_failure = breaker.on_failure

    @property
    def state(self) -> str:
        return ""

    def available(self) -> bool:
        return True

    def retry_after(self) -> float:
        return 0.0

    def on_cancel(self) -> None:
        return None

    def on_change(self, callback: BreakerChange) -> None:
        return None

    def __repr__(self) -> str:
        return f"<breaker {self.breaker!r}>"


class _NoBreaker(_PlainBreaker):
    """An instance the breaker factory gave no breaker: always allowed."""

    __slots__ = ()

    def __init__(self) -> None:
        self.breaker = None  # type: ignore[assignment]
        self.allow = _yes
        self.on_success = self.on_failure = _nothing


def _yes() -> bool:
    return True


def _nothing() -> None:
    return None


_NO_BREAKER = _NoBreaker()


def observable(breaker: Breaker | None) -> ObservableBreaker | None:
    """``breaker`` as an ``ObservableBreaker`` (wrapped with the defaults when it is not one)."""
    if breaker is None or isinstance(breaker, ObservableBreaker):
        return breaker
    return _PlainBreaker(breaker)


async def _send_within(send: Send, instance: Instance, seconds: float) -> Response:
    try:
        with anyio.fail_after(max(seconds, 0.0)):
            return await send(instance)
    except TimeoutError as exc:
        error = UpstreamTimeout(f"try timeout: no response head from {instance.address} within {seconds:g} s")
        error.request_sent = True  # type: ignore[attr-defined]  # unknown, so: assume it arrived
        raise error from exc


def _release_on_close(response: Response, release: Callable[[Instance], None], instance: Instance) -> None:
    # Deferred after the pool's clean-up, so it runs before it (LIFO), as the slot frees first.
    async def close() -> None:
        release(instance)

    response.defer(close)
