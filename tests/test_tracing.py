"""W3C trace context: the strict ``traceparent`` parser and the ``tracing`` filter."""

from __future__ import annotations

import re
from typing import ClassVar

import pytest
from hypothesis import given

from gatekeep import AuthError, BaseFilter, Request, Response
from gatekeep.observability import parse_traceparent
from gatekeep.testing import gateway_for
from tests.strategies import traceparent_noise, traceparents

# The recommendation's grammar, written independently of the parser under test.
_GRAMMAR = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z", re.DOTALL)


def reference(value: bytes) -> bool:
    m = _GRAMMAR.match(value)
    if m is None:
        return False
    version, trace_id, parent_id, _, rest = m.groups()
    if version == b"ff" or (version == b"00" and rest is not None):
        return False
    return trace_id != b"0" * 32 and parent_id != b"0" * 16


@given(traceparents())
def test_valid_traceparents_parse(case: tuple[bytes, str, str, int]) -> None:
    value, trace_id, parent_id, flags = case
    assert parse_traceparent(value) == (trace_id, parent_id, flags)


@given(traceparent_noise)
def test_parser_accepts_exactly_the_grammar(value: bytes) -> None:
    assert (parse_traceparent(value) is not None) == reference(value)


@pytest.mark.parametrize(
    "value",
    [
        b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",  # v00 with more
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",  # short flags
        b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",  # v01, no dash after
        b"",
    ],
)
def test_invalid_examples(value: bytes) -> None:
    assert parse_traceparent(value) is None


def test_later_versions_parse_their_first_fields() -> None:
    value = b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds"
    assert parse_traceparent(value) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1)


# -- through the gateway -----------------------------------------------------------

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def upstream_context(gw: object) -> tuple[str, str, str, str, str | None]:
    headers = gw.upstream.requests[-1].headers  # type: ignore[attr-defined]
    parsed = parse_traceparent(headers["traceparent"].encode())
    assert parsed is not None, headers["traceparent"]
    assert headers["traceparent"].startswith("00-")
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    return version, trace_id, span_id, flags, headers.get("tracestate")


@pytest.mark.anyio
async def test_continues_a_valid_trace_with_a_new_span() -> None:
    async with gateway_for(plugins=[{"name": "tracing"}]) as gw:
        sent = [("traceparent", f"00-{TRACE}-{PARENT}-01"), ("tracestate", "rojo=00f067aa0ba902b7,congo=t61")]
        await gw.client.get("/", headers=sent)
        _, trace_id, span_id, flags, tracestate = upstream_context(gw)
        assert trace_id == TRACE and flags == "01"
        assert span_id != PARENT
        assert tracestate == "rojo=00f067aa0ba902b7,congo=t61"
        await gw.client.get("/", headers=sent)
        assert upstream_context(gw)[2] != span_id  # a new span per request


@pytest.mark.anyio
async def test_starts_a_trace_when_absent_invalid_or_repeated() -> None:
    async with gateway_for(plugins=[{"name": "tracing"}]) as gw:
        await gw.client.get("/")
        first = upstream_context(gw)
        assert first[1] != TRACE and first[3] == "01" and first[4] is None
        await gw.client.get(
            "/", headers=[("traceparent", f"00-{TRACE.upper()}-{PARENT}-01"), ("tracestate", "a=b")]
        )
        invalid = upstream_context(gw)
        assert invalid[1] not in (TRACE, first[1])
        assert invalid[4] is None  # tracestate does not outlive its traceparent
        twice = [("traceparent", f"00-{TRACE}-{PARENT}-01"), ("traceparent", f"00-{TRACE}-{PARENT}-00")]
        await gw.client.get("/", headers=twice)
        assert upstream_context(gw)[1] != TRACE
        # One field, one context (duplicates would arrive joined by ", "): a whole traceparent.
        sent = gw.upstream.requests[-1].headers["traceparent"]
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]", sent), sent


@pytest.mark.anyio
async def test_untrusted_incoming_and_sampling_and_echo() -> None:
    config = {"trust_incoming": False, "sample_ratio": 0.0, "echo_downstream": True}
    async with gateway_for(plugins=[{"name": "tracing", "config": config}]) as gw:
        response = await gw.client.get("/", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
        _, trace_id, span_id, flags, _ = upstream_context(gw)
        assert trace_id != TRACE and flags == "00"
        assert response.header("traceparent") == f"00-{trace_id}-{span_id}-00"


class Refuse(BaseFilter):
    name: ClassVar[str] = "refuse"
    priority: ClassVar[int] = 1450  # where jwt runs

    async def on_request(self, request: Request) -> Response | None:
        raise AuthError("no token")


@pytest.mark.anyio
async def test_trace_id_reaches_the_client_on_early_answers_too() -> None:
    tracing = {"name": "tracing", "config": {"echo_downstream": True}}
    async with gateway_for(plugins=[tracing], filters=[Refuse()]) as gw:
        response = await gw.client.get("/", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
        assert response.status == 401
        assert not gw.upstream.requests
        assert (response.header("traceparent") or "").startswith(f"00-{TRACE}-")
