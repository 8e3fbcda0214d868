"""Bucket keys from client-controlled parts: injective, bounded, brace-free."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeep.ratelimit import bucket_key
from gatekeep.ratelimit._keys import MAX_KEY_LENGTH

parts = st.lists(
    st.text(max_size=100) | st.sampled_from(["", ":", "%3A", "#", "{", "}", "a:b", "b:c"]), min_size=1
)


@given(parts, parts)
def test_distinct_parts_make_distinct_keys(a: list[str], b: list[str]) -> None:
    if a != b:
        assert bucket_key(*a) != bucket_key(*b)


@given(parts)
def test_keys_are_bounded_storable_and_brace_free(p: list[str]) -> None:
    key = bucket_key(*p)
    assert len(key.encode()) <= MAX_KEY_LENGTH
    assert "{" not in key and "}" not in key


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("a:b", "c"), ("a", "b:c")),
        (("a", ""), ("a",)),
        (("",), ("", "")),
        (("a%3Ab",), ("a:b",)),
        (("x" * 65,), ("#" + "0" * 32,)),
        (("user", "alice"), ("user:alice",)),
    ],
)
def test_collision_cases(a: tuple[str, ...], b: tuple[str, ...]) -> None:
    assert bucket_key(*a) != bucket_key(*b)


def test_readable_when_it_can_be() -> None:
    assert bucket_key("consumer", "alice") == "consumer:alice"
    assert bucket_key("ip", "2001:db8::1") == "ip:2001%3Adb8%3A%3A1"
    assert bucket_key("path", "/a b/{id}") == "path:/a%20b/%7Bid%7D"


def test_long_parts_and_long_keys_are_hashed() -> None:
    assert bucket_key("h", "v" * 1000).startswith("h:#")
    assert len(bucket_key("h", "v" * 1000)) == 2 + 1 + 32
    many = bucket_key(*(["p" * 60] * 10))
    assert many.startswith("##") and len(many) == 34


def test_lone_surrogates_are_hashed_not_stored() -> None:
    key = bucket_key("h", "\udc80")
    key.encode()  # storable in Redis
    assert key != bucket_key("h", "\udc81")


def test_at_least_one_part() -> None:
    with pytest.raises(ValueError, match="at least one part"):
        bucket_key()
