"""The ``access-log`` filter: one JSON line per request on ``gatekeep.access``."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any, ClassVar

import anyio
import pytest

from gatekeep import AuthError, BaseFilter, Request, Response
from gatekeep.testing import gateway_for

pytestmark = pytest.mark.anyio


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def access() -> Iterator[Collect]:
    logger = logging.getLogger("gatekeep.access")
    handler = Collect()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


async def lines(handler: Collect, n: int) -> list[dict[str, Any]]:
    # The log phase runs after the client has its answer.
    with anyio.fail_after(5):
        while len(handler.records) < n:  # noqa: ASYNC110 - polls state another task changes
            await anyio.sleep(0.01)
    return [json.loads(r.getMessage()) for r in handler.records]


class Who(BaseFilter):
    name: ClassVar[str] = "who"
    priority: ClassVar[int] = 1000

    async def on_request(self, request: Request) -> Response | None:
        if request.path == "/private":
            raise AuthError("no token")
        request.consumer = "alice"
        return None


async def test_one_json_line_per_request(access: Collect) -> None:
    plugins = [{"name": "access-log"}, {"name": "tracing"}]
    async with gateway_for(plugins=plugins, filters=[Who()]) as gw:
        await gw.client.post("/orders?secret=1", body=b"12345", headers={"x-request-id": "req-1"})
        await gw.client.get("/private")
        first, second = await lines(access, 2)
        upstream_trace = gw.upstream.requests[-1].headers["traceparent"].split("-")[1]
    assert first["request_id"] == "req-1"
    assert first["trace_id"] == upstream_trace
    assert first["method"] == "POST" and first["path"] == "/orders"  # no query string
    assert first["status"] == 200 and first["source"] == "service"
    assert first["route"] == "all" and first["service"] == "upstream"
    assert first["upstream"] == f"127.0.0.1:{gw.upstream_port}"
    assert first["consumer"] == "alice"
    assert first["bytes_in"] == 5 and first["bytes_out"] > 0
    latency = first["latency_ms"]
    assert latency["request"] >= latency["upstream"] > 0
    assert latency["gateway"] == pytest.approx(latency["request"] - latency["upstream"], abs=0.01)
    assert first["client_ip"] == "127.0.0.1"
    assert first["time"].endswith("Z")
    assert second["status"] == 401 and second["source"] == "gateway"
    assert second["upstream"] is None and second["latency_ms"]["upstream"] is None
    assert second["error"] == "AuthError"
    assert len(second["trace_id"]) == 32
    # The fields ride on the record too, for structured handlers.
    assert access.records[0].access["status"] == 200  # type: ignore[attr-defined]


async def test_nothing_is_logged_when_the_logger_is_off(access: Collect) -> None:
    logging.getLogger("gatekeep.access").setLevel(logging.WARNING)
    async with gateway_for(plugins=[{"name": "access-log"}]) as gw:
        assert (await gw.client.get("/")).status == 200
        await anyio.sleep(0.1)
    assert access.records == []


async def test_logger_and_level_are_configurable(access: Collect) -> None:
    other = logging.getLogger("my.access")
    handler = Collect()
    other.addHandler(handler)
    other.setLevel(logging.DEBUG)
    try:
        plugins = [{"name": "access-log", "config": {"logger": "my.access", "level": "DEBUG"}}]
        async with gateway_for(plugins=plugins) as gw:
            await gw.client.get("/")
            [line] = await lines(handler, 1)
        assert line["status"] == 200
        assert handler.records[0].levelno == logging.DEBUG
        assert access.records == []
    finally:
        other.removeHandler(handler)
