"""What a filter sees of an ASGI scope: every field of ``Request`` from its own part of the scope.

``request_from_scope`` builds the request on every call; it passes the fields
positionally for speed, so each one is checked here with a value no other field
has.  ``gatekeep serve`` builds it from the parsed head instead
(``request_from_head``): the same request, checked against the head's scope.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gatekeep import Gateway, Request, asgi
from gatekeep._front._protocol import RequestHead
from gatekeep._http import EMPTY_BODY

CONFIG = {"services": [{"name": "s", "url": "http://127.0.0.1:9", "routes": [{"paths": ["/"]}]}]}


def scope(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.0",
        "server": ("10.9.9.9", 8443),
        "client": ("10.1.2.3", 40000),
        "scheme": "https",
        "method": "PATCH",
        "root_path": "",
        "path": "/a b",
        "raw_path": b"/a%20b?q=1",
        "query_string": b"q=1",
        "headers": [(b"host", b"API.Example.com:8443"), (b"accept", b"*/*")],
    }
    base.update(changes)
    return base


def test_every_field_comes_from_its_own_part_of_the_scope() -> None:
    app = asgi(Gateway(CONFIG))
    request = app.request_from_scope(scope(), EMPTY_BODY)
    assert request.method == "PATCH"
    assert request.path == ""  # normalised by the gateway, from raw_path
    assert request.raw_path == b"/a%20b"
    assert request.query_string == b"q=1"
    assert request.headers.raw == [(b"host", b"API.Example.com:8443"), (b"accept", b"*/*")]
    assert request.body is EMPTY_BODY
    assert request.scheme == "https"
    assert request.host == "api.example.com"
    assert request.client == ("10.1.2.3", 40000)
    assert request.server == ("10.9.9.9", 8443)
    assert request.http_version == "1.0"
    assert request.state == {}
    assert (request.request_id, request.params, request.consumer, request.route) == ("", {}, None, None)


def test_the_defaults_of_a_minimal_scope_and_the_tls_extension() -> None:
    app = asgi(Gateway(CONFIG))
    minimal = {
        "type": "http",
        "method": "GET",
        "path": "/x",
        "headers": [],
        "server": ("gw.internal", 80),
        "extensions": {"tls": {"client_cert_chain": []}},
    }
    request = app.request_from_scope(minimal, EMPTY_BODY)
    assert (request.scheme, request.query_string, request.http_version) == ("http", b"", "1.1")
    assert request.host == "gw.internal"  # no Host header: the server's name
    assert request.raw_path == b"/x"
    assert request.client is None
    assert request.state == {"tls": {"client_cert_chain": []}}


def test_a_client_given_as_a_list_and_an_ipv6_host() -> None:
    app = asgi(Gateway(CONFIG))
    request = app.request_from_scope(
        scope(client=["::1", 5], headers=[(b"host", b"[::1]:8080")], raw_path=b"/"), EMPTY_BODY
    )
    assert request.client == ("::1", 5)
    assert request.host == "[::1]"
    assert request.raw_path == b"/"


def reference_host(value: bytes) -> str:
    """The host name of a ``Host`` value, written here independently: port cut off, lowered."""
    text = value.decode("latin-1")
    if text.startswith("["):
        return (text.partition("]")[0] + "]").lower()  # an IPv6 literal, closed
    return text.rsplit(":", 1)[0].lower()


@given(st.binary(min_size=1, max_size=30) | st.builds(lambda b: b"[" + b, st.binary(max_size=30)))
def test_the_host_is_the_same_the_first_time_and_every_time_after(value: bytes) -> None:
    app = asgi(Gateway(CONFIG))
    first = app.request_from_scope(scope(headers=[(b"host", value)]), EMPTY_BODY).host
    again = app.request_from_scope(scope(headers=[(b"host", value)]), EMPTY_BODY).host  # remembered
    assert first == again == reference_host(value)


def test_the_remembered_host_names_stay_bounded() -> None:
    from gatekeep.adapters import _asgi

    app = asgi(Gateway(CONFIG))
    for n in range(3 * _asgi._HOSTS_LIMIT):
        assert app.request_from_scope(scope(headers=[(b"host", b"h%d.example:1" % n)]), EMPTY_BODY).host == (
            f"h{n}.example"
        )
    assert len(_asgi._HOSTS) <= _asgi._HOSTS_LIMIT


class _Shared:
    lifespan_state: dict[str, Any] = {}


class _Conn:
    """What a ``RequestHead`` reads of its connection (``HTTPConnection``'s fields)."""

    def __init__(self, client: Any, server: Any, scheme: str, tls: Any) -> None:
        self.client, self.server, self.scheme, self.tls = client, server, scheme, tls
        self.shared = _Shared()


_fields = st.binary(max_size=12)
_heads = st.builds(
    lambda method, version, path, query, headers, host, client, server, tls: RequestHead(
        method,
        version,
        path,
        query,
        path,
        [(b"host", host)] + headers if host is not None else headers,
        host,
        _Conn(client, server, "https" if tls else "http", {"server_cert": None} if tls else None),
    ),
    st.sampled_from(["GET", "POST", "PURGE"]),
    st.sampled_from(["1.0", "1.1"]),
    st.builds(lambda b: b"/" + b.replace(b"?", b""), _fields),  # (the parser cut the query off)
    _fields,
    st.lists(st.tuples(st.sampled_from([b"accept", b"x-a"]), _fields), max_size=3),
    st.none() | _fields | st.builds(lambda b: b"[" + b, _fields),
    st.none() | st.tuples(st.sampled_from(["10.0.0.1", "::1"]), st.integers(1, 65535)),
    st.none() | st.tuples(st.sampled_from(["10.9.9.9", "Example.COM"]), st.integers(1, 65535)),
    st.booleans(),
)


def fields(request: Request) -> tuple[Any, ...]:
    return (
        request.method,
        request.path,
        request.query_string,
        list(request.headers.raw),
        request.body,
        request.scheme,
        request.host,
        request.raw_path,
        request.client,
        request.server,
        request.http_version,
        request.state,
    )


@given(_heads)
def test_the_front_servers_head_makes_the_request_its_scope_would(head: RequestHead) -> None:
    # ``gatekeep serve`` builds requests from the parsed head (no scope); any other server's
    # scope goes through ``request_from_scope``: the same request either way.
    app = asgi(Gateway(CONFIG))
    assert fields(app.request_from_head(head, EMPTY_BODY)) == fields(
        app.request_from_scope(head.scope(), EMPTY_BODY)
    )
