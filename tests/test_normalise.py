"""Request path normalisation: the examples of docs/routing.md, then properties."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gatekeep import BadRequest, normalise_path

from . import strategies as gs


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"/", "/"),
        (b"/orders", "/orders"),
        (b"/orders/", "/orders/"),
        (b"/orders/1/items", "/orders/1/items"),
        (b"/static/app.min.js", "/static/app.min.js"),
        (b"/.well-known/jwks.json", "/.well-known/jwks.json"),
        # Unreserved escapes are decoded, others kept with upper-case hex.
        (b"/%6Frders", "/orders"),
        (b"/%6frders", "/orders"),
        (b"/a%7Eb%2D%5f", "/a~b-_"),
        (b"/a%3ab", "/a%3Ab"),
        (b"/a%20b", "/a%20b"),
        (b"/100%25", "/100%25"),
        (b"/a%0ab", "/a%0Ab"),
        # Raw bytes that may not appear in a path are encoded.
        ("/café".encode(), "/caf%C3%A9"),
        (b"/a b", "/a%20b"),
        (b"/a?b#c", "/a%3Fb%23c"),
        (b"/{id}", "/%7Bid%7D"),
        # Sub-delims stay raw.
        (b"/a;b=c,d@e:f", "/a;b=c,d@e:f"),
        # Dot-segments.
        (b"/orders/../admin", "/admin"),
        (b"/orders/./1", "/orders/1"),
        (b"/a/b/..", "/a/"),
        (b"/a/b/.", "/a/b/"),
        (b"/..", "/"),
        (b"/../../etc/passwd", "/etc/passwd"),
        (b"/a/%2e%2e/b", "/b"),
        (b"/a/%2E./b", "/b"),
        (b"/a/.%2e", "/"),
        (b"/a/..b/c", "/a/..b/c"),
        (b"/a/.b", "/a/.b"),
        # Empty segments.
        (b"//orders///1", "/orders/1"),
        (b"/orders//", "/orders/"),
        (b"//", "/"),
        (b"/a//../b", "/b"),
    ],
)
def test_examples(raw: bytes, expected: str) -> None:
    assert normalise_path(raw) == expected


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "must start with '/'"),
        (b"orders", "must start with '/'"),
        (b"*", "must start with '/'"),
        (b"http://example.com/", "must start with '/'"),
        (b"/%zz", "malformed percent-escape"),
        (b"/%4", "malformed percent-escape"),
        (b"/a%", "malformed percent-escape"),
        (b"/%%41", "malformed percent-escape"),
        (b"/a%2Fb", "encoded slash"),
        (b"/a%2fb", "encoded slash"),
        (b"/..%2f..%2fetc", "encoded slash"),
        (b"/a%5Cb", "encoded backslash"),
        (b"/a%5cb", "encoded backslash"),
        (b"/a%00", "encoded NUL"),
        (b"/a\\b", "backslash"),
        (b"/a\x00b", "control character (0x00)"),
        (b"/a\r\nb", "control character (0x0D)"),
        (b"/a\tb", "control character (0x09)"),
        (b"/a\x7fb", "control character (0x7F)"),
    ],
)
def test_refused(raw: bytes, why: str) -> None:
    with pytest.raises(BadRequest, match="(?i)" + re.escape(why)) as info:
        normalise_path(raw)
    assert info.value.status == 400


def _accepted(raw: bytes) -> str | None:
    try:
        return normalise_path(raw)
    except BadRequest:
        return None


@given(gs.canonical_paths())
def test_canonical_paths_are_fixed_points(path: str) -> None:
    assert normalise_path(path.encode()) == path


@given(st.one_of(gs.messy_raw_paths(), gs.any_raw_paths))
@example(b"/a/./b/../../c//")
@example(b"/%2e%2E/x")
def test_idempotent_and_canonical(raw: bytes) -> None:
    out = _accepted(raw)
    if out is None:
        return
    assert out.isascii()
    assert out.startswith("/")
    for bad in ("//", "/./", "/../"):
        assert bad not in out
    assert not out.endswith(("/.", "/.."))
    assert normalise_path(out.encode()) == out


@given(gs.any_raw_paths)
def test_only_bad_request_escapes(raw: bytes) -> None:
    # Anything else would be a 500 for the client.
    _accepted(raw)


@given(st.integers(min_value=1, max_value=6), st.lists(gs.segments, max_size=4), st.data())
def test_dot_dot_never_climbs_above_root(ups: int, tail: list[str], data: st.DataObject) -> None:
    dots = [data.draw(st.sampled_from([b"..", b"%2e%2e", b".%2E", b"%2E."])) for _ in range(ups)]
    raw = b"/" + b"/".join([*dots, *(s.encode() for s in tail)])
    assert normalise_path(raw) == ("/" + "/".join(tail) if tail else "/")


@given(gs.canonical_paths(), st.lists(gs.segments, min_size=1, max_size=3))
def test_dot_dot_removes_exactly_what_it_follows(base: str, extra: list[str]) -> None:
    inside = base.rstrip("/") + "/" + "/".join(extra) + "/.." * len(extra)
    assert normalise_path(inside.encode()) == base.rstrip("/") + "/"


@given(gs.canonical_paths().flatmap(lambda p: st.tuples(st.just(p), gs.spellings(p))))
def test_encoded_unreserved_is_the_same_path(pair: tuple[str, bytes]) -> None:
    path, spelled = pair
    assert normalise_path(spelled) == path


def test_escape_of_o_is_o() -> None:
    assert normalise_path(b"/%6F") == normalise_path(b"/o") == normalise_path(b"/%6f") == "/o"
