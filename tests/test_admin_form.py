"""Admin API bodies decoded as Kong decodes them (``kong/api/arguments.lua``), and typed by schema."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeep.admin._form import MAX_ARGUMENTS, BadBody, decode_body, decode_pairs, infer
from gatekeep.plugins.rate_limiting import RateLimitingConfig

FORM = "application/x-www-form-urlencoded"


def form(*pairs: tuple[str, str]) -> dict[str, object]:
    return decode_body(FORM, urlencode(pairs).encode())


def test_kongs_spellings_of_arrays_and_records() -> None:
    assert form(("paths[]", "/a"), ("paths[]", "/b")) == {"paths": ["/a", "/b"]}
    assert form(("paths[2]", "/b"), ("paths[1]", "/a")) == {"paths": ["/a", "/b"]}
    assert form(("methods", "GET"), ("methods", "POST")) == {"methods": ["GET", "POST"]}
    assert form(("config.second", "5"), ("config.hour", "1000")) == {
        "config": {"second": "5", "hour": "1000"}
    }
    assert form(("config.key_names[]", "a")) == {"config": {"key_names": ["a"]}}
    assert form(("service.id", "x")) == {"service": {"id": "x"}}
    assert form(("name", "")) == {"name": ""}


def test_values_are_typed_by_the_schema() -> None:
    typed = infer(
        {
            "second": "5",
            "fault_tolerant": "false",
            "minute": "",
            "policy": "redis",
            "hour": "lots",
            "sync_rate": "2",
        },
        RateLimitingConfig,
    )
    assert typed == {
        "second": 5,
        "fault_tolerant": False,
        "minute": None,  # empty is Kong's null
        "policy": "redis",
        "hour": "lots",  # left for the validator to name
        "sync_rate": 2.0,
    }
    assert infer({"methods": "GET"}, {"methods": tuple[str, ...]}) == {"methods": ["GET"]}


def test_json_and_multipart() -> None:
    assert decode_body("application/json", b'{"name": "a", "config": {"second": 5}}') == {
        "name": "a",
        "config": {"second": 5},
    }
    body = (
        b'--XX\r\nContent-Disposition: form-data; name="name"\r\n\r\nrate-limiting\r\n'
        b'--XX\r\nContent-Disposition: form-data; name="config.second"\r\n\r\n5\r\n'
        b'--XX\r\nContent-Disposition: form-data; name="config.limit_by"\r\n\r\nip\r\n--XX--\r\n'
    )
    assert decode_body("multipart/form-data; boundary=XX", body) == {
        "name": "rate-limiting",
        "config": {"second": "5", "limit_by": "ip"},
    }


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"[1, 2]"),
        ("application/json", b"{"),
        (FORM, b"a[99999]=1"),
        (FORM, b"a[1][2]=1"),
        (FORM, b"a=1&a.b=2"),
        (FORM, b"a.b.c.d.e.f.g.h.i=1"),
        (FORM, "&".join(["a=1"] * (MAX_ARGUMENTS + 1)).encode()),
        ("text/xml", b"<a/>"),
        (FORM, b"\xff\xfe=1"),
    ],
)
def test_an_attackers_bodies_are_400s(content_type: str, body: bytes) -> None:
    with pytest.raises(BadBody):
        decode_body(content_type, body)


@given(st.lists(st.tuples(st.text(max_size=20), st.text(max_size=5)), max_size=30))
def test_any_form_decodes_or_is_refused(pairs: list[tuple[str, str]]) -> None:
    try:
        decoded = decode_pairs(pairs)
    except BadBody:
        return
    assert isinstance(decoded, dict)


@given(
    st.binary(max_size=200), st.sampled_from([FORM, "application/json", "multipart/form-data; boundary=b"])
)
def test_any_bytes_decode_or_are_refused(body: bytes, content_type: str) -> None:
    try:
        decoded = decode_body(content_type, body)
    except BadBody:
        return
    assert isinstance(decoded, dict)
