"""Identity spoofing at the edge (issue 11, rows 2, 3, 4 and 8).

A client with no credentials tries to look like someone else to the service
behind the gateway: identity headers in another spelling (``_`` for ``-``,
which WSGI servers read as the same header), ``Connection`` options that
remove the gateway's own identity and request-id headers, method-override
headers that change the method after authorization, and ``X-Forwarded-For``
to be counted as many clients by ``rate-limiting``.  Every request crosses
real loopback sockets to a real upstream.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from gatekeep.service import HeaderTrust, WSGIAuthMiddleware, identity_from_environ
from gatekeep.testing import ClientResponse, gateway_for

pytestmark = pytest.mark.anyio

SPOOFED = [
    ("X_Consumer_Username", "root"),
    ("X_Authenticated_Roles", "admin"),
    ("x_consumer_id", "1"),
    ("X_CREDENTIAL_IDENTIFIER", "stolen"),
    ("X-Anonymous-Whatever", "false"),
    ("x_authenticated_userid", "root"),
    ("X-Consumer-Groups", "admins"),
]


def _problem(response: ClientResponse, status: int) -> dict[str, Any]:
    assert response.status == status, response.text
    assert response.header("content-type") == "application/problem+json"
    doc: dict[str, Any] = response.json()
    assert doc["status"] == status
    return doc


def _identityish(name: str) -> bool:
    name = name.lower().replace("_", "-")
    return name.startswith(("x-consumer-", "x-authenticated-", "x-credential-", "x-anonymous-"))


# -- row 2: identity headers in every spelling ---------------------------------------


async def test_identity_headers_in_any_spelling_never_reach_the_upstream() -> None:
    async with gateway_for() as gw:
        response = await gw.client.get("/", headers=SPOOFED)
        assert response.status == 200
        seen = gw.upstream.requests[-1].headers
        assert not [name for name in seen if _identityish(name)], seen


async def test_identity_spellings_with_underscores_are_stripped_even_when_underscores_are_allowed() -> None:
    config = {
        "gateway": {"headers_with_underscores": "allow"},
        "services": [{"name": "up", "url": "{upstream}", "routes": [{"paths": ["/"]}]}],
    }
    async with gateway_for(config) as gw:
        response = await gw.client.get(
            "/",
            headers=[
                *SPOOFED,
                ("my_header", "kept"),
                ("X_Request_ID", "forged"),
                ("x_forwarded_for", "6.6.6.6"),
            ],
        )
        assert response.status == 200
        seen = gw.upstream.requests[-1].headers
        assert seen["my_header"] == "kept"
        assert not [name for name in seen if _identityish(name)], seen
        # The "_" spelling of a header the gateway sets is never passed on.
        assert "x_request_id" not in seen and "x_forwarded_for" not in seen
        assert seen["x-request-id"] != "forged"


async def test_headers_with_underscores_are_dropped_by_default_and_can_be_refused() -> None:
    async with gateway_for() as gw:
        response = await gw.client.get("/", headers=[("my_header", "x"), ("my-header", "y")])
        assert response.status == 200
        seen = gw.upstream.requests[-1].headers
        assert "my_header" not in seen and seen["my-header"] == "y"
    config = {
        "gateway": {"headers_with_underscores": "reject"},
        "services": [{"name": "up", "url": "{upstream}", "routes": [{"paths": ["/"]}]}],
    }
    async with gateway_for(config) as gw:
        doc = _problem(await gw.client.get("/", headers=[("my_header", "x")]), 400)
        assert "my_header" in doc["detail"]
        assert gw.upstream.requests == []
        assert (await gw.client.get("/", headers=[("my-header", "x")])).status == 200


def _wsgi_service(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    identity = identity_from_environ(environ)
    body = (
        f"subject={identity.subject} roles={sorted(identity.roles)}" if identity is not None else "anonymous"
    ).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def wsgiref_service() -> Iterator[int]:
    """The issue's service: ``WSGIAuthMiddleware`` trusting the gateway's headers, under wsgiref."""
    app = WSGIAuthMiddleware(_wsgi_service, trust=HeaderTrust(trusted_peers=["127.0.0.1"]))
    server: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_wsgi_service_behind_the_gateway_sees_no_spoofed_identity(wsgiref_service: int) -> None:
    config = {
        "services": [
            {"name": "orders", "url": f"http://127.0.0.1:{wsgiref_service}", "routes": [{"paths": ["/"]}]}
        ],
    }
    for gateway in ({}, {"headers_with_underscores": "allow"}):
        async with gateway_for({**config, "gateway": gateway}) as gw:
            response = await gw.client.get(
                "/orders", headers=[("X_Consumer_Username", "root"), ("X_Authenticated_Roles", "admin")]
            )
            assert response.status == 200, response.text
            # Before the fix: "subject=root roles=['admin']" from a client with no credentials.
            assert response.text == "anonymous"


async def test_wsgi_service_still_sees_the_real_consumer(wsgiref_service: int) -> None:
    config = {
        "services": [
            {"name": "orders", "url": f"http://127.0.0.1:{wsgiref_service}", "routes": [{"paths": ["/"]}]}
        ],
        "plugins": [{"name": "key-auth"}],
        "consumers": [{"username": "alice", "keyauth_credentials": [{"key": "k-alice"}]}],
    }
    async with gateway_for(config) as gw:
        response = await gw.client.get(
            "/",
            headers=[
                ("apikey", "k-alice"),
                ("X_Consumer_Username", "root"),
                ("X_Authenticated_Roles", "admin"),
            ],
        )
        assert response.text == "subject=alice roles=[]"


# -- row 3: Connection cannot remove what the gateway adds ------------------------------

NAMED = (
    "X-Consumer-Username, X-Authenticated-Userid, X-Credential-Identifier, X-Request-ID, X-Anonymous-Consumer"
)

ANONYMOUS = {
    "services": [{"name": "api", "url": "{upstream}", "routes": [{"paths": ["/"]}]}],
    "plugins": [{"name": "key-auth", "config": {"anonymous": "guest"}}],
    "consumers": [
        {"username": "guest"},
        {"username": "reporting", "keyauth_credentials": [{"key": "k-123", "id": "reporting-2024"}]},
    ],
}


async def test_connection_cannot_remove_the_anonymous_marker_or_the_request_id() -> None:
    async with gateway_for(ANONYMOUS) as gw:
        response = await gw.client.get("/", headers=[("Connection", NAMED), ("X-Request-ID", "r-1")])
        assert response.status == 200
        seen = gw.upstream.requests[-1].headers
        assert seen["x-anonymous-consumer"] == "true"
        assert seen["x-consumer-username"] == "guest"
        assert seen["x-request-id"] == "r-1" == response.header("x-request-id")
        assert "connection" not in seen


async def test_connection_cannot_remove_a_real_consumers_headers() -> None:
    async with gateway_for(ANONYMOUS) as gw:
        response = await gw.client.get(
            "/", headers=[("Connection", f"keep-alive, {NAMED}"), ("apikey", "k-123")]
        )
        assert response.status == 200
        seen = gw.upstream.requests[-1].headers
        assert seen["x-consumer-username"] == "reporting"
        assert seen["x-credential-identifier"] == "reporting-2024"
        assert "x-anonymous-consumer" not in seen
        assert seen["x-request-id"] == response.header("x-request-id")


async def test_connection_still_removes_the_clients_own_hop_by_hop_headers() -> None:
    async with gateway_for() as gw:
        response = await gw.client.get(
            "/",
            headers=[
                ("Connection", "X-Hop, x_other, Via, Host, X-Forwarded-Proto"),
                ("X-Hop", "1"),
                ("X-Kept", "2"),
                ("Keep-Alive", "timeout=5"),
            ],
        )
        assert response.status == 200
        seen = gw.upstream.requests[-1].headers
        assert "x-hop" not in seen and "keep-alive" not in seen and "connection" not in seen
        assert seen["x-kept"] == "2"
        # The proxy's own headers are there, whatever Connection said.
        assert "gatekeep" in seen["via"] and seen["x-forwarded-proto"] == "http" and seen["host"]


# -- row 8: method override ----------------------------------------------------------

OVERRIDES = [("X-HTTP-Method-Override", "GET"), ("X-HTTP-Method", "DELETE"), ("X-Method-Override", "PUT")]


def _override_config(mode: str | None) -> dict[str, Any]:
    gateway = {} if mode is None else {"method_override_headers": mode}
    return {
        "gateway": gateway,
        "services": [{"name": "up", "url": "{upstream}", "routes": [{"paths": ["/"]}]}],
    }


async def test_method_override_headers_are_stripped_by_default() -> None:
    async with gateway_for(_override_config(None)) as gw:
        response = await gw.client.post("/orders", headers=[*OVERRIDES, ("x_http_method_override", "GET")])
        assert response.status == 200
        seen = gw.upstream.requests[-1]
        assert seen.method == "POST"
        assert not [n for n in seen.headers if "method" in n], seen.headers


async def test_method_override_headers_can_be_refused_or_forwarded() -> None:
    async with gateway_for(_override_config("refuse")) as gw:
        for pair in OVERRIDES:
            doc = _problem(await gw.client.post("/orders", headers=[pair]), 400)
            assert pair[0].lower() in doc["detail"].lower()
        assert gw.upstream.requests == []
        assert (await gw.client.post("/orders")).status == 200
    async with gateway_for(_override_config("forward")) as gw:
        assert (await gw.client.post("/orders", headers=OVERRIDES)).status == 200
        seen = gw.upstream.requests[-1].headers
        assert seen["x-http-method-override"] == "GET" and seen["x-method-override"] == "PUT"


# -- row 4: the client address comes from trusted proxies only -----------------------


def _limited(trusted: list[str]) -> dict[str, Any]:
    return {
        "gateway": {"trusted_proxies": trusted},
        "services": [{"name": "up", "url": "{upstream}", "routes": [{"paths": ["/"]}]}],
        # The issue used second = 2; a minute keeps the test free of clock edges.
        "plugins": [{"name": "rate-limiting", "config": {"minute": 2, "limit_by": "ip"}}],
    }


async def test_rotating_x_forwarded_for_from_an_untrusted_peer_does_not_escape_the_ip_limit() -> None:
    async with gateway_for(_limited([])) as gw:
        statuses = [
            (await gw.client.get("/", headers=[("X-Forwarded-For", f"6.6.6.{n}")])).status for n in range(8)
        ]
        assert statuses.count(200) == 2, statuses
        assert statuses.count(429) == 6
        # The upstream is told who the peer really was, nothing the client claimed.
        assert gw.upstream.requests[-1].headers["x-forwarded-for"] == "127.0.0.1"


async def test_behind_a_trusted_proxy_each_real_client_has_its_own_bucket() -> None:
    async with gateway_for(_limited(["127.0.0.1/32"])) as gw:

        async def status(xff: str) -> int:
            return (await gw.client.get("/", headers=[("X-Forwarded-For", xff)])).status

        # The proxy appends the address it saw; a client rotating what it sent itself gains nothing.
        assert [await status(f"1.1.1.{n}, 203.0.113.1") for n in range(3)] == [200, 200, 429]
        assert [await status("203.0.113.2") for _ in range(3)] == [200, 200, 429]
        seen = gw.upstream.requests[-1].headers
        assert seen["x-forwarded-for"] == "203.0.113.2, 127.0.0.1"


@pytest.mark.parametrize(
    ("peer", "xff", "client"),
    [
        ("10.0.0.1", None, "10.0.0.1"),  # a trusted proxy that forwarded nothing is the client
        ("10.0.0.1", "203.0.113.7", "203.0.113.7"),
        ("10.0.0.1", "6.6.6.6, 203.0.113.7, 10.0.0.2", "203.0.113.7"),  # trusted hops are skipped
        ("10.0.0.1", "10.0.0.3, 10.0.0.2", "10.0.0.3"),  # all trusted: the left-most
        ("10.0.0.1", "6.6.6.6, not-an-ip, 10.0.0.2", "10.0.0.2"),  # garbage ends the walk
        ("10.0.0.1", "junk", "10.0.0.1"),
        ("10.0.0.1", "[2001:db8::7]:4711", "2001:db8::7"),
        ("10.0.0.1", "203.0.113.7:4711", "203.0.113.7"),
        ("2001:db8:ffff::1", "2001:db8::7", "2001:db8::7"),
        ("192.0.2.1", "203.0.113.7", "192.0.2.1"),  # an untrusted peer's claim is ignored
    ],
)
def test_the_client_address_is_the_right_most_untrusted_x_forwarded_for_entry(
    peer: str, xff: str | None, client: str
) -> None:
    import ipaddress

    from gatekeep import Headers, Request
    from gatekeep._edge import Edge

    edge = Edge(
        trusted_proxies=[ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:ffff::/48")]
    )
    headers = Headers([(b"x-forwarded-for", xff.encode())] if xff else [])
    request = Request("GET", "", headers=headers, raw_path=b"/", client=(peer, 1))
    assert edge.apply(request) is None
    assert request.client_ip == client and request.peer_ip == peer
    if peer.startswith("192."):
        assert request.headers.raw == []  # and it is not passed on
