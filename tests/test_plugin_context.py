"""What ``bind(context)`` hands a plugin, and the typed request context it sees per request."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from gatekeep import (
    BasePlugin,
    ConsumerConfig,
    Gateway,
    NoConfig,
    PluginContext,
    Request,
    Response,
    RouteInfo,
    ServiceInfo,
    UpstreamState,
)
from gatekeep.testing import gateway_for

pytestmark = pytest.mark.anyio


class Recorder(BasePlugin[NoConfig]):
    name: ClassVar[str] = "recorder"

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.context: PluginContext | None = None
        self.seen: list[tuple[RouteInfo | None, ServiceInfo | None]] = []

    def bind(self, context: PluginContext) -> None:
        self.context = context

    async def on_request(self, request: Request) -> Response | None:
        self.seen.append((request.route, request.service))
        return None


class OldStyle(BasePlugin[NoConfig]):
    """A plugin written for the SDK of one release ago: ``bind(gateway)``."""

    name: ClassVar[str] = "old-style"

    def bind(self, gateway: Gateway) -> None:  # type: ignore[override]
        self.gateway = gateway


CONFIG: dict[str, Any] = {
    "gateway": {"request_id_header": "X-Trace-Id", "trusted_proxies": ["10.0.0.0/8"]},
    "services": [
        {
            "name": "orders",
            "url": "{upstream}",
            "routes": [
                {"name": "list", "paths": ["/orders"], "methods": ["get"], "plugins": [{"name": "recorder"}]},
                {"name": "other", "paths": ["/other"]},
            ],
        }
    ],
    "consumers": [{"username": "alice", "id": "c-1"}],
}


async def test_bind_gets_a_narrow_typed_view_of_the_gateway() -> None:
    async with gateway_for(CONFIG, plugin_classes=[Recorder, OldStyle], filters=[OldStyle()]) as gw:
        (recorder,) = [f for f in gw.gateway.filters if isinstance(f, Recorder)]
        context = recorder.context
        assert isinstance(context, PluginContext)
        assert [r.name for r in context.routes] == ["list", "other"]
        listing = context.routes[0]
        assert listing.paths == ("/orders",) and listing.methods == frozenset({"GET"})
        assert listing.plugins == ("old-style", "recorder") and listing.service is context.services["orders"]
        assert context.routes_of(recorder) == (listing,)
        assert isinstance(context.consumers["alice"], ConsumerConfig)
        assert context.consumers["c-1"] is context.consumers["alice"]
        assert context.request_id_header == "x-trace-id"
        assert [str(n) for n in context.trusted_proxies] == ["10.0.0.0/8"]
        assert recorder in context.plugins
        upstream = context.upstreams["orders"]
        assert isinstance(upstream, UpstreamState) and upstream.breaker_state is None
        assert [i.port for i in upstream.instances()] == [gw.upstream_port]
        # Passive health checks are on by default.
        assert upstream.target_health(upstream.instances()[0]) == "healthy"
        assert context.task_group is gw.gateway.task_group is not None
        # The old contract, accepted for one release: ``bind(gateway)`` gets the gateway.
        (old,) = [f for f in gw.gateway.filters if isinstance(f, OldStyle)]
        assert old.gateway is gw.gateway


async def test_the_request_carries_public_descriptions_built_once_per_route() -> None:
    async with gateway_for(CONFIG, plugin_classes=[Recorder]) as gw:
        (recorder,) = [f for f in gw.gateway.filters if isinstance(f, Recorder)]
        for _ in range(2):
            assert (await gw.client.get("/orders")).status == 200
        (route, service), again = recorder.seen
        assert isinstance(route, RouteInfo) and route.name == "list"
        assert isinstance(service, ServiceInfo) and service.name == "orders" and route.service is service
        assert again[0] is route and again[1] is service  # no per-request allocation
