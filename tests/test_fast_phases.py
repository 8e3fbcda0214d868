"""Phases that answer at once: built-in plugins whose phase never waits give the chain a plain
function (no coroutine per request); the gateway awaits a phase's answer only when it is an
awaitable.  A subclass that changes the phase is called as written, and what a client and the
metrics see is the same either way."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from gatekeep import BaseFilter, Chain, Exchange, Request, Response
from gatekeep.plugins.prometheus import PrometheusConfig, PrometheusFilter
from gatekeep.plugins.rate_limiting import RateLimitingConfig, RateLimitingFilter
from gatekeep.testing import gateway_for

pytestmark = pytest.mark.anyio


def test_the_chain_takes_the_fast_phases_of_built_in_plugins() -> None:
    limiter = RateLimitingFilter(RateLimitingConfig(minute=5))
    metrics = PrometheusFilter(PrometheusConfig())
    chain = Chain([limiter, metrics])
    assert limiter._add_headers in chain.response
    assert metrics._observe in chain.log


def test_a_subclass_that_changes_a_phase_is_called_as_written() -> None:
    class Limiter(RateLimitingFilter):
        async def on_response(self, request: Request, response: Response) -> Response | None:
            return await super().on_response(request, response)

    class Metrics(PrometheusFilter):
        async def on_log(self, exchange: Exchange) -> None:
            await super().on_log(exchange)

    limiter, metrics = Limiter(RateLimitingConfig(minute=5)), Metrics(PrometheusConfig())
    chain = Chain([limiter, metrics])
    assert chain.response == [limiter.on_response]
    assert chain.log == [metrics.on_log]


async def test_limit_headers_and_metrics_through_the_fast_phases() -> None:
    plugins: list[dict[str, Any]] = [
        {"name": "rate-limiting", "config": {"minute": 2}},
        {"name": "prometheus", "config": {"status_code_metrics": True, "bandwidth_metrics": True}},
    ]
    async with gateway_for(plugins=plugins) as gw:
        first = await gw.client.get("/")
        assert first.status == 200
        assert first.header("x-ratelimit-remaining-minute") == "1"
        assert first.header("ratelimit-limit") == "2"
        second = await gw.client.post("/", body=b"12345")
        assert second.header("x-ratelimit-remaining-minute") == "0"
        assert (await gw.client.get("/")).status == 429
        scrape = (await gw.client.get("/metrics")).text
        counted = [line for line in scrape.splitlines() if line.startswith("gatekeep_http_requests_total{")]
        assert any('code="200"' in line for line in counted) and any('code="429"' in line for line in counted)
        ingress = [
            line
            for line in scrape.splitlines()
            if line.startswith("gatekeep_bandwidth_bytes_total{") and 'direction="ingress"' in line
        ]
        assert ingress and any(float(line.rsplit(" ", 1)[1]) >= 5 for line in ingress), ingress


class _Stamp(BaseFilter):
    """A response phase that answers at once (``_fast_response_phase``, as built-in plugins do):
    it stamps a header, or raises when told to."""

    def __init__(self, name: str, priority: int, fail: bool = False) -> None:
        super().__init__(None)
        self.name = name  # type: ignore[misc]
        self.priority = priority  # type: ignore[misc]
        self.fail = fail

    async def on_response(self, request: Request, response: Response) -> Response | None:
        return self._stamp(request, response)

    def _fast_response_phase(self) -> Any:
        return self._stamp

    def _stamp(self, request: Request, response: Response) -> None:
        if self.fail:
            raise RuntimeError("stamp broke")
        response.headers.add(b"x-stamp", self.name.encode())


class _Replace(BaseFilter):
    """A third-party response phase: a coroutine that replaces the answer."""

    name = "replace"
    priority = 500

    async def on_response(self, request: Request, response: Response) -> Response | None:
        replaced = Response.text("replaced", 203)
        replaced.headers.raw += [(b"x-stamp", v) for v in response.headers.get_all(b"x-stamp")]
        return replaced


async def test_response_phases_answering_at_once_and_later_mix_in_order() -> None:
    # Reverse priority on the way back: low (fast) stamps, the coroutine replaces, high stamps the new one.
    filters = [_Stamp("low", 10), _Replace(None), _Stamp("high", 1000)]
    assert Chain(filters).response[0] == filters[0]._stamp  # the fast phase is what runs
    async with gateway_for(filters=filters) as gw:
        answer = await gw.client.get("/")
    assert answer.status == 203 and answer.text == "replaced"
    assert answer.header_all("x-stamp") == ["low", "high"]


@pytest.mark.parametrize("where", ["first", "after a coroutine"])
async def test_a_fast_response_phase_that_raises_is_a_problem_not_a_traceback(where: str) -> None:
    broken = _Stamp("broken", 10 if where == "first" else 1000, fail=True)
    async with gateway_for(filters=[broken, _Replace(None)]) as gw:
        answer = await gw.client.get("/")
    assert answer.status == 500
    assert answer.header("content-type") == "application/problem+json"
    assert "traceback" not in answer.text.lower() and "stamp broke" not in answer.text


class _Log(BaseFilter):
    """A log phase, fast (``_fast_log_phase``: no coroutine) or a coroutine, that notes its name
    in ``seen``, or raises when told to."""

    def __init__(self, name: str, priority: int, seen: list[str], *, fast: bool, fail: bool = False) -> None:
        super().__init__(None)
        self.name = name  # type: ignore[misc]
        self.priority = priority  # type: ignore[misc]
        self.seen, self.fast, self.fail = seen, fast, fail

    async def on_log(self, exchange: Exchange) -> None:
        await anyio.lowlevel.checkpoint()  # a phase that waits
        self._note(exchange)

    def _fast_log_phase(self) -> Any:
        return self._note if self.fast else None

    def _note(self, exchange: Exchange) -> None:
        if self.fail:
            raise RuntimeError(f"{self.name} broke")
        self.seen.append(f"{self.name}:{exchange.status}")


@pytest.mark.parametrize(
    "kinds",
    [
        ("fast", "fast", "fast"),
        ("fast", "slow", "fast"),
        ("slow", "fast", "slow"),
        ("fast", "failing-fast", "slow"),
        ("slow", "failing-slow", "fast"),
    ],
)
async def test_log_phases_fast_and_waiting_all_run_in_order_and_one_that_fails_stops_none(
    kinds: tuple[str, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []
    filters = [
        _Log(f"p{n}", 100 - n, seen, fast=kind.endswith("fast"), fail=kind.startswith("failing"))
        for n, kind in enumerate(kinds)
    ]
    async with gateway_for(filters=filters) as gw:
        assert (await gw.client.get("/")).status == 200
        with anyio.fail_after(5):
            while len(seen) < sum(not k.startswith("failing") for k in kinds):  # noqa: ASYNC110
                await anyio.sleep(0.01)
    assert seen == [f"p{n}:200" for n, kind in enumerate(kinds) if not kind.startswith("failing")]
    assert ("log filter failed" in caplog.text) == any(k.startswith("failing") for k in kinds)
