"""Consul's answers as data: the health parser, blocking indexes and durations (sans-IO)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeep.discovery import ConsulResponseError, aggregate_status, next_index, parse_duration, parse_health
from gatekeep.discovery import parse_index as parse_index_header
from tests.strategies import consul_health_entries, json_values

# A trimmed copy of the documented example answer of GET /v1/health/service/<name>.
DOCUMENTED = """
[
  {
    "Node": {
      "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
      "Node": "foobar",
      "Address": "10.1.10.12",
      "Datacenter": "dc1",
      "TaggedAddresses": {"lan": "10.1.10.12", "wan": "10.1.10.12"},
      "Meta": {"instance_type": "t2.medium"}
    },
    "Service": {
      "ID": "redis",
      "Service": "redis",
      "Tags": ["primary"],
      "Address": "10.1.10.12",
      "TaggedAddresses": {
        "lan": {"address": "10.1.10.12", "port": 8000},
        "wan": {"address": "198.18.0.53", "port": 80}
      },
      "Meta": {"redis_version": "4.0"},
      "Port": 8000,
      "Weights": {"Passing": 10, "Warning": 1},
      "Namespace": "default"
    },
    "Checks": [
      {
        "Node": "foobar",
        "CheckID": "service:redis",
        "Name": "Service 'redis' check",
        "Status": "passing",
        "Notes": "",
        "Output": "",
        "ServiceID": "redis",
        "ServiceName": "redis",
        "ServiceTags": ["primary"],
        "Namespace": "default"
      },
      {
        "Node": "foobar",
        "CheckID": "serfHealth",
        "Name": "Serf Health Status",
        "Status": "passing",
        "Notes": "",
        "Output": "",
        "ServiceID": "",
        "ServiceName": "",
        "ServiceTags": [],
        "Namespace": "default"
      }
    ]
  }
]
"""


def test_the_documented_answer() -> None:
    (instance,) = parse_health(DOCUMENTED)
    assert (instance.host, instance.port, instance.weight, instance.id) == ("10.1.10.12", 8000, 10, "redis")
    assert instance.meta == {"redis_version": "4.0"}
    assert instance.scheme == "http"
    # Tagged addresses: lower-case members on this endpoint.
    (wan,) = parse_health(DOCUMENTED, tagged_address="wan", scheme="https")
    assert (wan.host, wan.port, wan.scheme) == ("198.18.0.53", 80, "https")


def test_service_address_falls_back_to_the_node_address() -> None:
    data = json.loads(DOCUMENTED)
    data[0]["Service"]["Address"] = ""
    data[0]["Node"]["Address"] = "10.9.9.9"
    (instance,) = parse_health(data)
    assert instance.host == "10.9.9.9"


def test_a_failing_serf_check_drops_the_instance() -> None:
    data = json.loads(DOCUMENTED)
    data[0]["Checks"][1]["Status"] = "critical"
    assert parse_health(data) == ()
    data[0]["Checks"][1]["Status"] = "warning"
    assert parse_health(data) == ()
    (instance,) = parse_health(data, passing_only=False)
    assert instance.weight == 1  # Weights.Warning


@pytest.mark.parametrize("body", [b"", b"{", b'{"a": 1}', b"[1]", b'[{"Node": 1, "Service": {}}]', b"[[]]"])
def test_malformed_answers_are_a_consul_error(body: bytes) -> None:
    with pytest.raises(ConsulResponseError):
        parse_health(body)


def test_null_is_no_instance() -> None:
    assert parse_health(b"null") == ()
    assert parse_health(b"[]") == ()


def _expected_status(entry: dict[str, Any]) -> str:
    statuses = {c["Status"] for c in entry["Checks"]}
    if statuses - {"passing", "warning"}:
        return "critical"
    return "warning" if "warning" in statuses else "passing"


@given(st.lists(consul_health_entries(), max_size=6), st.booleans(), st.sampled_from([None, "wan_ipv4"]))
def test_parser_follows_the_documented_rules(
    entries: list[dict[str, Any]], passing_only: bool, tagged: str | None
) -> None:
    found = parse_health(json.dumps(entries).encode(), passing_only=passing_only, tagged_address=tagged)
    expected = set()
    for entry in entries:
        status = _expected_status(entry)
        if status == "critical" or (passing_only and status == "warning"):
            continue
        service, node = entry["Service"], entry["Node"]
        host, port = service["Address"] or node["Address"], service["Port"]
        if tagged and service["TaggedAddresses"]:
            host, port = "192.0.2.9", 7000  # member names matched case-insensitively
        if not 0 < port < 65536:
            continue
        weights = service.get("Weights") or {}
        weight = weights.get("Warning" if status == "warning" else "Passing", 1)
        expected.add((host, port, weight, service["ID"]))
    got = {(i.host, i.port, i.weight, i.id) for i in found}
    # Entries identical in (host, port, id) collapse into one.
    assert {(h, p, i) for h, p, _, i in got} == {(h, p, i) for h, p, _, i in expected}
    assert got <= expected
    assert list(found) == sorted(found, key=lambda i: (i.id, i.host, i.port))


@given(json_values)
def test_parser_never_fails_with_anything_but_a_consul_error(value: Any) -> None:
    try:
        parse_health(json.dumps(value).encode())
    except ConsulResponseError:
        pass


@given(st.lists(st.sampled_from(["passing", "warning", "critical", "maintenance", None, 3])))
def test_aggregate_status_is_the_worst(statuses: list[Any]) -> None:
    got = aggregate_status([{"Status": s} for s in statuses])
    if any(s not in ("passing", "warning") for s in statuses):
        assert got == "critical"
    elif "warning" in statuses:
        assert got == "warning"
    else:
        assert got == "passing"


# -- blocking-query indexes (HashiCorp's rules) -----------------------------------


def test_index_rules() -> None:
    assert next_index(0, 42) == 42  # first read
    assert next_index(42, 42) == 42  # wait elapsed, nothing changed
    assert next_index(42, 50) == 50  # changed
    assert next_index(42, 7) == 0  # went backwards: reset, read without blocking
    assert next_index(0, 0) == 1  # never block on 0
    assert next_index(0, -3) == 1
    assert next_index(5, None) == 0  # no header: plain reads (the loop is rate limited)


@given(st.integers(0, 2**64), st.one_of(st.none(), st.integers(-(2**63), 2**64)))
def test_next_index_is_never_below_one_unless_reset(held: int, returned: int | None) -> None:
    got = next_index(held, returned)
    if returned is None:
        assert got == 0
    elif returned <= 0:
        assert got == 1
    elif returned < held:
        assert got == 0
    else:
        assert got == returned


@pytest.mark.parametrize(
    ("value", "expected"),
    [(b"123", 123), (b" 9 ", 9), (b"-1", -1), (b"", None), (b"abc", None), (None, None), ("77", 77)],
)
def test_index_header(value: Any, expected: int | None) -> None:
    assert parse_index_header(value) == expected


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10), ("1m30s", 90), ("250ms", 0.25), ("1h", 3600), ("1.5s", 1.5), ("0", 0), ("500us", 0.0005)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "s", "10 s", "1d", "-1s", "10sx"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
