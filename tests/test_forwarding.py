"""Forwarding headers: hop-by-hop removal, Host, X-Forwarded-*, Via, Forwarded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gatekeep import Headers, Request
from gatekeep._edge import Edge
from gatekeep._forwarding import (
    HOP_BY_HOP,
    downstream_response_headers,
    forwarded_element,
    upstream_request_headers,
)

# Header names: the hop-by-hop ones, a few special ones, and arbitrary tokens.
TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12).map(str.encode)
NAMES = st.one_of(
    st.sampled_from(sorted(HOP_BY_HOP | {b"expect", b"host", b"x-forwarded-for", b"via", b"content-length"})),
    TOKEN,
)
VALUES = st.binary(min_size=0, max_size=20).map(lambda b: bytes(c for c in b if 0x20 < c < 0x7F))


@st.composite
def header_lists(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    headers = draw(st.lists(st.tuples(NAMES, VALUES), max_size=12))
    # Connection headers naming other headers, in any case, with odd spacing.
    for _ in range(draw(st.integers(0, 2))):
        named = draw(st.lists(NAMES, max_size=4))
        cased = [draw(st.sampled_from([n, n.upper(), n.title()])) for n in named]
        value = b",".join(b" " * draw(st.integers(0, 2)) + n for n in cased)
        headers.insert(draw(st.integers(0, len(headers))), (b"connection", value))
    return headers


def request(headers: list[tuple[bytes, bytes]], client: str = "10.0.0.7", scheme: str = "https") -> Request:
    return Request(
        "GET",
        "/",
        headers=Headers(headers),
        client=(client, 50000) if client else None,
        scheme=scheme,
        host="api",
    )


def connection_named(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    return {t.strip().lower() for k, v in headers if k == b"connection" for t in v.split(b",") if t.strip()}


@given(header_lists())
def test_no_hop_by_hop_header_survives_upstream(headers: list[tuple[bytes, bytes]]) -> None:
    out = upstream_request_headers(request(headers), host_header=b"svc:8080")
    names = [k for k, _ in out]
    assert not (set(names) & (HOP_BY_HOP | {b"expect"}))
    # a header the client named in Connection never survives (the proxy's own ones are new)
    ours = {b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"via"}
    for name in connection_named(headers) - ours:
        assert name not in names
    client_values = {v for k, v in headers if k == b"via"}
    named = connection_named(headers)
    kept_via = [v for k, v in out[:-1] if k == b"via"]
    if b"via" in named:
        assert kept_via == []
    else:
        assert set(kept_via) <= client_values
    assert names[0] == b"host" and names.count(b"host") == 1
    assert out[0] == (b"host", b"svc:8080")
    assert out[-1] == (b"via", b"1.1 gatekeep")


@given(header_lists())
def test_no_hop_by_hop_header_survives_downstream(headers: list[tuple[bytes, bytes]]) -> None:
    out = downstream_response_headers(headers)
    named = connection_named(headers)
    assert all(k not in HOP_BY_HOP and k not in named for k, _ in out)
    # what is left keeps its order and values
    assert out == [(k, v) for k, v in headers if k not in HOP_BY_HOP and k not in named]


@given(st.lists(st.sampled_from([b"1.2.3.4", b"5.6.7.8, 9.9.9.9", b"unknown"]), max_size=3))
def test_x_forwarded_for_appends_the_client(existing: list[bytes]) -> None:
    headers = [(b"x-forwarded-for", v) for v in existing]
    out = dict(upstream_request_headers(request(headers), host_header=b"h"))
    assert out[b"x-forwarded-for"] == b", ".join([*existing, b"10.0.0.7"])


def test_end_to_end_headers_and_content_length_are_kept_in_order() -> None:
    headers = [
        (b"host", b"public.example"),
        (b"accept", b"*/*"),
        (b"connection", b"keep-alive, X-Secret"),
        (b"x-secret", b"hop"),
        (b"content-length", b"12"),
        (b"te", b"trailers"),
        (b"expect", b"100-continue"),
        (b"proxy-authorization", b"Basic abc"),
        (b"x-request-id", b"r1"),
        (b"via", b"1.0 edge"),
        (b"x-forwarded-proto", b"http"),
    ]
    out = upstream_request_headers(request(headers), host_header=b"public.example", via=b"1.1 gw")
    assert out == [
        (b"host", b"public.example"),
        (b"accept", b"*/*"),
        (b"content-length", b"12"),
        (b"x-request-id", b"r1"),
        (b"via", b"1.0 edge"),
        (b"x-forwarded-for", b"10.0.0.7"),
        (b"x-forwarded-proto", b"https"),  # the client's claim is not trusted
        (b"x-forwarded-host", b"public.example"),
        (b"via", b"1.1 gw"),
    ]


def test_trusted_peer_keeps_its_forwarded_proto_and_host() -> None:
    headers = [(b"x-forwarded-proto", b"https"), (b"x-forwarded-host", b"outer.example"), (b"host", b"inner")]
    out = dict(upstream_request_headers(request(headers, scheme="http"), host_header=b"svc", trusted=True))
    assert out[b"x-forwarded-proto"] == b"https"
    assert out[b"x-forwarded-host"] == b"outer.example"
    out = dict(upstream_request_headers(request(headers, scheme="http"), host_header=b"svc"))
    assert out[b"x-forwarded-proto"] == b"http"
    assert out[b"x-forwarded-host"] == b"inner"


def test_without_a_host_header_the_request_host_is_forwarded() -> None:
    out = dict(upstream_request_headers(request([], client=""), host_header=b"svc"))
    assert out[b"x-forwarded-host"] == b"api"
    assert b"x-forwarded-for" not in out


def test_rfc7239_forwarded_on_request() -> None:
    headers = [(b"host", b"a.example"), (b"forwarded", b"for=192.0.2.1")]
    out = upstream_request_headers(request(headers, client="2001:db8::1"), host_header=b"svc", forwarded=True)
    assert [v for k, v in out if k == b"forwarded"] == [
        b"for=192.0.2.1",
        b'for="[2001:db8::1]";proto=https;host="a.example"',
    ]
    assert forwarded_element("", "http", b"") == b"for=unknown;proto=http"
    assert forwarded_element("1.2.3.4", "http", b'x"y') == b'for=1.2.3.4;proto=http;host="x\\"y"'


def test_downstream_keeps_content_length_drops_transfer_encoding() -> None:
    headers = [
        (b"content-type", b"text/plain"),
        (b"content-length", b"5"),
        (b"transfer-encoding", b"chunked"),
        (b"connection", b"close, x-internal"),
        (b"x-internal", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    ]
    assert downstream_response_headers(headers) == [
        (b"content-type", b"text/plain"),
        (b"content-length", b"5"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    ]


def test_request_headers_are_not_mutated() -> None:
    headers = [(b"connection", b"x"), (b"x", b"1")]
    req = request(list(headers))
    upstream_request_headers(req, host_header=b"h")
    assert req.headers.raw == headers


# -- with the gateway's edge step in front (gatekeep._edge) ---------------------------

SPELLINGS = st.sampled_from(
    [
        b"x-consumer-username",
        b"X_Consumer_Username",
        b"x_authenticated_roles",
        b"X-Anonymous-Consumer",
        b"x-credential-identifier",
        b"X-Request-ID",
        b"x_request_id",
        b"x-forwarded-for",
        b"forwarded",
    ]
)
EDGE_NAMES = st.one_of(NAMES, SPELLINGS)
# One for every example, so that the names it learnt as harmless are put to the test too.
EDGE = Edge()
ADDED = [
    (b"x-consumer-username", b"guest"),
    (b"x-anonymous-consumer", b"true"),
    (b"x-credential-identifier", b"c1"),
]


@st.composite
def edge_header_lists(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    # Host is checked by the edge step (test_host_and_target): left out here.
    headers = [h for h in draw(st.lists(st.tuples(EDGE_NAMES, VALUES), max_size=12)) if h[0] != b"host"]
    for _ in range(draw(st.integers(0, 2))):
        named = draw(st.lists(EDGE_NAMES, max_size=5))
        value = b",".join(b" " * draw(st.integers(0, 2)) + n for n in named)
        headers.insert(draw(st.integers(0, len(headers))), (b"connection", value))
    return headers


@given(edge_header_lists())
def test_after_the_edge_step_the_gateways_own_headers_always_reach_the_upstream(
    headers: list[tuple[bytes, bytes]],
) -> None:
    req = request(headers)
    if {b"content-length", b"transfer-encoding"} <= {k for k, _ in headers}:
        # Both framings: refused, and the connection closed (tests/attacks/test_smuggling.py).
        refusal = EDGE.apply(req)
        assert refusal is not None and ("Connection", "close") in refusal.headers
        return
    assert EDGE.apply(req) is None
    # What the auth filters and the request-id step add after the edge step.
    req.headers.raw.extend([*ADDED, (b"x-request-id", b"rid")])
    out = upstream_request_headers(req, host_header=b"svc")
    names = [k for k, _ in out]
    for pair in [*ADDED, (b"x-request-id", b"rid")]:
        assert pair in out
    assert not (set(names) & (HOP_BY_HOP | {b"expect"}))
    # Nothing the client sent in the identity families survives, in any spelling.
    assert sorted(
        k for k in names if k.replace(b"_", b"-").startswith((b"x-consumer-", b"x-anonymous-"))
    ) == [
        b"x-anonymous-consumer",
        b"x-consumer-username",
    ]
    assert all(b"_" not in k for k in names)
    assert dict(out)[b"x-forwarded-for"] == b"10.0.0.7"  # the peer: no trusted proxies configured
