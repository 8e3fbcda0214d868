"""The ``prometheus`` cardinality budget under a flood of distinct callers (issue 17, point 4).

100 000 distinct callers reach the ``prometheus`` plugin's log phase with
``per_consumer`` on.  The first 10 000 go through the whole pipeline in
process: the ``jwt`` plugin verifies each caller's own token and sets
``request.identity``, the gateway answers, and ``Gateway.log`` runs the log
phase on the exchange, exactly as for a served request.  The other 90 000
are the same handled exchange with a fresh identity each (what the ``jwt``
plugin would have set), through ``Gateway.log`` again: verifying 90 000 more
signatures would add seconds and nothing the first 10 000 do not show.
The exposed series must stay inside the budget (``consumer_label_limit``
subjects plus ``other``) and the plugin's own caches must stay bounded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterator
from typing import ClassVar

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gatekeep import BaseFilter, Exchange, Gateway, Headers, Identity, Request, Response
from gatekeep.plugins.jwt import JWTFilter
from gatekeep.plugins.prometheus import PrometheusFilter

pytestmark = pytest.mark.anyio

CALLERS = 100_000
# Of which this many carry a real token through the whole pipeline.
VERIFIED = 10_000
LIMIT = 50
SECRET = "s" * 32  # HS256 wants at least 32 bytes (RFC 7518 §3.2)


class Answer(BaseFilter):
    """Answers after authentication (the upstream leg is not what is counted here)."""

    name: ClassVar[str] = "answer"
    priority: ClassVar[int] = 500

    async def on_request(self, request: Request) -> Response | None:
        return Response.text("ok")


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def tokens(count: int) -> Iterator[bytes]:
    """``count`` HS256 tokens (RFC 7519 compact form), one distinct subject each.

    Signed with ``hmac`` directly: PyJWT's encoder would take most of the test's time budget.
    """
    header = _b64(b'{"alg":"HS256","typ":"JWT"}')
    exp = int(time.time()) + 3600
    key = SECRET.encode()
    for i in range(count):
        signing_input = header + b"." + _b64(b'{"sub":"caller-%d","exp":%d}' % (i, exp))
        signature = hmac.new(key, signing_input, hashlib.sha256).digest()
        yield b"Bearer " + signing_input + b"." + _b64(signature)


async def test_one_hundred_thousand_subjects_stay_inside_the_budget() -> None:
    config = {
        "services": [
            {"name": "api", "url": "http://127.0.0.1:9", "routes": [{"name": "items", "paths": ["/items"]}]}
        ],
        "plugins": [
            {
                "name": "jwt",
                "config": {"keys": [{"algorithm": "HS256", "secret": SECRET}], "cache_size": 1000},
            },
            {"name": "prometheus", "config": {"per_consumer": True, "consumer_label_limit": LIMIT}},
        ],
    }
    gateway = Gateway(config, filters=[Answer()])
    [prom] = [f for f in gateway.filters if isinstance(f, PrometheusFilter)]
    [jwt] = [f for f in gateway.filters if isinstance(f, JWTFilter)]
    async with gateway:
        for token in tokens(VERIFIED):
            request = Request(
                method="GET",
                path="",
                raw_path=b"/items/1",
                headers=Headers([(b"authorization", token)]),
                client=("127.0.0.1", 1234),
            )
            exchange = Exchange(request)
            response = await gateway.handle(request, exchange)
            await response.aclose()
            await gateway.log(exchange)
        assert exchange.status == 200 and request.identity is not None
        assert request.identity.subject == f"caller-{VERIFIED - 1}"
        for i in range(VERIFIED, CALLERS):
            request.identity = Identity(subject=f"caller-{i}")
            await gateway.log(exchange)
        assert prom.registry is not None and prom.metrics is not None
        text = generate_latest(prom.registry).decode()
        # The metric objects' own children: one per label combination ever used.
        children = {
            "requests": len(prom.metrics.requests._metrics),
            "bandwidth": len(prom.metrics.bandwidth._metrics),
        }
    found = {f.name: f.samples for f in text_string_to_metric_families(text)}
    requests = [s for s in found["gatekeep_http_requests"] if s.name.endswith("_total")]
    # Every request was counted: nothing was dropped to save labels.
    assert sum(s.value for s in requests) == CALLERS
    assert {(s.labels["route"], s.labels["code"]) for s in requests} == {("items", "200")}
    # The budget: the first LIMIT subjects seen have a label of their own, every later one is "other".
    consumers = {s.labels["consumer"]: s.value for s in requests}
    assert set(consumers) == {f"caller-{i}" for i in range(LIMIT)} | {"other"}
    assert consumers["other"] == CALLERS - LIMIT
    bandwidth = {s.labels["consumer"] for s in found["gatekeep_bandwidth_bytes"] if s.name.endswith("_total")}
    assert bandwidth == set(consumers)
    assert children == {"requests": LIMIT + 1, "bandwidth": 2 * (LIMIT + 1)}
    assert sum(len(v) for v in found.values()) < 20 * LIMIT
    # The plugin's caches are bounded by the budget, not by the callers.
    assert len(prom._consumer_labels) == LIMIT
    assert len(prom._cache) == LIMIT + 1
    assert not prom._template_labels and not prom._error_children
    # So is the verified-token cache the identities come from.
    assert jwt.verifier.cache_length <= 1000
