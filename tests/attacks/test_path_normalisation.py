"""Path tricks: a spelling of ``/admin`` never reaches the admin upstream without the key.

Two routes on two upstreams: ``/public`` (open) and ``/admin`` (``key-auth``).
Each target is sent over a raw socket, once without and once with the key,
to the gateway under ``gatekeep serve`` (llhttp) and under the in-process test
server (h11).  The gateway normalises the path before routing
(``gatekeep/_normalise.py``; its own property tests are in
``tests/test_normalise.py``), so a trick either gets a 400 problem+json or
goes to the route its normalised path names - ``/admin`` without the key is
401 - and the upstream receives the normalised path, never the client's
spelling.

Notes on what the router does: paths are case-sensitive, as Kong's are
(``/ADMIN`` is no route: 404); a prefix matches on a segment boundary only, and
``;`` is an ordinary path character, so ``/admin;x=1`` is no route either
(404), while ``/public;/../admin`` is ``/admin``.  ``..;`` is not a
dot-segment: ``/public/..;/admin`` goes to ``/public`` with that path (what a
servlet container behind *public* makes of it is that service's business; the
admin upstream never sees it).
"""

from __future__ import annotations

import json
import re
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio.from_thread
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeep import Gateway, asgi
from gatekeep.testing import EchoUpstream, serve_asgi

from .._servers import free_port, running, upstream_thread

CONFIG = """\
[[services]]
name = "public"
url = "http://127.0.0.1:{public}"

  [[services.routes]]
  name = "public"
  paths = ["/public"]
  strip_path = false

[[services]]
name = "admin"
url = "http://127.0.0.1:{admin}"

  [[services.routes]]
  name = "admin"
  paths = ["/admin"]
  strip_path = false

    [[services.routes.plugins]]
    name = "key-auth"

[[consumers]]
username = "alice"
keyauth_credentials = [{{ key = "alice-key" }}]
"""

KEY: Final = b"apikey: alice-key\r\n"


class Upstreams:
    def __init__(self) -> None:
        self.public = EchoUpstream()
        self.admin = EchoUpstream()


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[Upstreams, int, int]]:
    both = Upstreams()
    with upstream_thread(both.public) as public, upstream_thread(both.admin) as admin:
        yield both, public, admin


@pytest.fixture(scope="module", params=["gatekeep", "test-server"])
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    upstreams: tuple[Upstreams, int, int],
) -> Iterator[tuple[str, int]]:
    name: str = request.param
    directory = tmp_path_factory.mktemp(name)
    config = directory / "gatekeep.toml"
    config.write_text(CONFIG.format(public=upstreams[1], admin=upstreams[2]))
    if name == "gatekeep":
        port = free_port()
        argv = [sys.executable, "-m", "gatekeep", "serve", str(config), "--port", str(port)]
        with running(name, "", app_dir=directory, argv=[*argv, "--log-level", "warning"], port=port):
            yield name, port
        return

    @asynccontextmanager
    async def serving() -> AsyncIterator[int]:
        async with Gateway(str(config)) as gateway, serve_asgi(asgi(gateway)) as port:
            yield port

    with (
        anyio.from_thread.start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(serving()) as port,
    ):
        yield name, port


def ask(port: int, target: bytes, *, key: bool, method: bytes = b"GET") -> tuple[int, dict[str, Any]]:
    """One request with ``Connection: close``: the status and, for a problem, its document."""
    head = b"%s %s HTTP/1.1\r\nhost: gk\r\nconnection: close\r\n%s\r\n" % (
        method,
        target,
        KEY if key else b"",
    )
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    status = int(head_bytes.split(b" ", 2)[1])
    problem = b"content-type: application/problem+json" in head_bytes.lower()
    return status, json.loads(body) if problem else {}


# -- the corpus -----------------------------------------------------------------------------

PUBLIC, ADMIN = "public", "admin"
LONG: Final = b"a" * 8192

# (id, target, where it goes: PUBLIC / ADMIN with the path the upstream gets, or a status)
CASES: list[tuple[str, bytes, str | int, str | None]] = [
    ("dot-dot", b"/public/../admin", ADMIN, "/admin"),
    ("dot-dot-above-root", b"/public/../../../admin", ADMIN, "/admin"),
    ("encoded-dot-dot", b"/public/%2e%2e/admin", ADMIN, "/admin"),
    ("encoded-dot-dot-upper", b"/public/%2E%2E/admin", ADMIN, "/admin"),
    ("half-encoded-dot-dot", b"/public/.%2e/admin", ADMIN, "/admin"),
    ("half-encoded-dot-dot-2", b"/public/%2E./admin", ADMIN, "/admin"),
    ("encoded-unreserved", b"/%61dm%69n", ADMIN, "/admin"),
    ("double-slash", b"//admin", ADMIN, "/admin"),
    ("dot", b"/./admin", ADMIN, "/admin"),
    ("trailing-dot", b"/admin/.", ADMIN, "/admin/"),
    ("trailing-dot-slash", b"/admin/./", ADMIN, "/admin/"),
    ("trailing-dot-dot-inside", b"/admin/x/..", ADMIN, "/admin/"),
    ("trailing-dot-dot-out", b"/admin/..", 404, None),  # "/": no route
    ("public-trailing-dot-dot", b"/public/..", 404, None),
    ("public-trailing-dot", b"/public/.", PUBLIC, "/public/"),
    ("three-dots", b"/public/.../admin", PUBLIC, "/public/.../admin"),  # not a dot-segment
    ("dot-chain", b"/public" + b"/." * 2000 + b"/../admin", ADMIN, "/admin"),
    ("up-down-chain", b"/public" + b"/x/.." * 1000 + b"/../admin", ADMIN, "/admin"),
    ("encoded-slash", b"/public/..%2fadmin", 400, None),
    ("encoded-slash-upper", b"/public%2Fadmin", 400, None),
    ("encoded-dot-dot-slash", b"/public/%2e%2e%2fadmin", 400, None),
    ("backslash", b"/public/..\\admin", 400, None),
    ("backslash-first", b"\\admin", 400, None),
    ("encoded-backslash", b"/public/..%5cadmin", 400, None),
    ("encoded-backslash-first", b"/%5Cadmin", 400, None),
    ("path-parameter", b"/admin;x=1", 404, None),
    ("path-parameter-dot-dot", b"/public;/../admin", ADMIN, "/admin"),
    ("tomcat-dot-dot-semicolon", b"/public/..;/admin", PUBLIC, "/public/..;/admin"),
    ("encoded-nul", b"/admin%00", 400, None),
    ("encoded-nul-dot-dot", b"/public/%00/../admin", 400, None),
    ("overlong-utf8-dot", b"/public/%c0%ae%c0%ae/admin", PUBLIC, "/public/%C0%AE%C0%AE/admin"),
    ("double-encoded-dot", b"/public/%252e%252e/admin", PUBLIC, "/public/%252e%252e/admin"),
    ("upper-case", b"/ADMIN", 404, None),
    ("mixed-case", b"/Admin/x", 404, None),
    ("query", b"/public?/../admin", PUBLIC, "/public"),
    ("fragment", b"/public#/../admin", ADMIN, "/admin"),  # "#" is data in a path: %23
    ("absolute-form", b"http://gk/public/../admin", ADMIN, "/admin"),
    ("long-public-segment", b"/public/" + LONG, PUBLIC, "/public/" + LONG.decode()),
    ("long-segment-dot-dot", b"/public/" + LONG + b"/../../admin", ADMIN, "/admin"),
    ("long-admin-segment", b"/admin/" + LONG, ADMIN, "/admin/" + LONG.decode()),
    ("asterisk", b"*", 400, None),
]
# gatekeep serve bounds the target at 8 KiB ([server] max_target_bytes): 414 before routing.
# llhttp refuses a target that does not start with "/" (or a scheme) before the gateway.
OVERRIDES: dict[tuple[str, str], tuple[str | int, str | None]] = {
    ("gatekeep", "long-public-segment"): (414, None),
    ("gatekeep", "long-segment-dot-dot"): (414, None),
    ("gatekeep", "long-admin-segment"): (414, None),
}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_path_trick_goes_where_its_normalised_path_says(
    server: tuple[str, int],
    upstreams: tuple[Upstreams, int, int],
    case: tuple[str, bytes, str | int, str | None],
) -> None:
    name, port = server
    up = upstreams[0]
    case_id, target, where, path = case
    where, path = OVERRIDES.get((name, case_id), (where, path))
    method = b"OPTIONS" if target == b"*" else b"GET"
    for key in (False, True):
        public, admin = len(up.public.requests), len(up.admin.requests)
        status, problem = ask(port, target, key=key, method=method)
        context = (name, case_id, key, status, problem.get("detail"))
        if isinstance(where, int):
            assert status == where and problem["status"] == where, context
            assert (len(up.public.requests), len(up.admin.requests)) == (public, admin), context
        elif where == PUBLIC:
            assert status == 200, context
            assert len(up.admin.requests) == admin, context
            assert [r.path for r in up.public.requests[public:]] == [path], context
        elif key:
            assert status == 200, context
            assert len(up.public.requests) == public, context
            assert [r.path for r in up.admin.requests[admin:]] == [path], context
        else:
            assert status == 401 and problem["status"] == 401, context
            assert (len(up.public.requests), len(up.admin.requests)) == (public, admin), context


# -- one property ---------------------------------------------------------------------------

SEGMENTS = st.sampled_from(
    ["admin", "public", "x", ".", "..", "%2e", "%2E", "%2e%2e", ".%2e", "%2E.", "", "%2f", "%2F", "a%2fb"]
)


def expected_path(path: str) -> str | None:
    """The path the gateway should route, by the rules of gatekeep/_normalise.py written
    out again here for these segments (``None``: refused, an encoded slash)."""
    if "%2f" in path.lower():
        return None
    segments = re.sub("%2e", ".", path, flags=re.IGNORECASE).split("/")[1:]
    out: list[str] = []
    for segment in segments:
        if segment == "..":
            if out:
                out.pop()
        elif segment not in ("", "."):
            out.append(segment)
    if not out:
        return "/"
    return "/" + "/".join(out) + ("/" if segments[-1] in ("", ".", "..") else "")


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


@settings(max_examples=100, deadline=None)
@given(segments=st.lists(SEGMENTS, max_size=8))
def test_no_mix_of_dots_and_slashes_reaches_admin_without_the_key(
    server: tuple[str, int], upstreams: tuple[Upstreams, int, int], segments: list[str]
) -> None:
    up = upstreams[0]
    target = "/" + "/".join(segments)
    public, admin = len(up.public.requests), len(up.admin.requests)
    status, _ = ask(server[1], target.encode(), key=False)
    assert len(up.admin.requests) == admin, target  # never, whatever the spelling
    path = expected_path(target)
    if path is None:
        assert status == 400, target
    elif _under(path, "/admin"):
        assert status == 401, (target, path)
    elif _under(path, "/public"):
        assert status == 200, (target, path)
        assert [r.path for r in up.public.requests[public:]] == [path], target
    else:
        assert status == 404, (target, path)
