"""Hypothesis strategies shared by the test modules.

Each section belongs to a topic; add new ones below, with a short comment.
"""

from __future__ import annotations

import string

from hypothesis import strategies as st

# -- paths and routes (normalisation, router) ---------------------------------

UNRESERVED = string.ascii_letters + string.digits + "-._~"
SUB_DELIMS = "!$&'()*+,;=:@"

# A canonical path segment: not empty, not a dot-segment, only characters
# that stay as they are through normalisation.
segments = st.text(alphabet=UNRESERVED + SUB_DELIMS, min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..")
)

# A segment made only of characters that never need quoting in a template or a
# regex (handy for building route patterns).
plain_segments = st.text(alphabet=string.ascii_lowercase + string.digits + "-_", min_size=1, max_size=10)


@st.composite
def canonical_paths(draw: st.DrawFn, segment: st.SearchStrategy[str] = segments) -> str:
    """A path that ``normalise_path`` returns unchanged."""
    parts = draw(st.lists(segment, max_size=6))
    if not parts:
        return "/"
    return "/" + "/".join(parts) + ("/" if draw(st.booleans()) else "")


def _escape(char: str, upper: bool) -> str:
    text = f"%{ord(char):02x}"
    return text.upper() if upper else text


@st.composite
def spellings(draw: st.DrawFn, path: str) -> bytes:
    """Another way to write ``path``: some unreserved characters percent-encoded."""
    out = []
    for char in path:
        if char in UNRESERVED and draw(st.booleans()):
            out.append(_escape(char, draw(st.booleans())))
        else:
            out.append(char)
    return "".join(out).encode("ascii")


# Pieces of messy raw paths: canonical segments, dot-segments (plain and
# encoded), empty segments, kept escapes in either case, raw bytes to encode.
_raw_pieces = st.one_of(
    segments.map(lambda s: s.encode()),
    st.sampled_from([b".", b"..", b"", b"%2e", b"%2E%2e", b".%2E", b"%7e", b"%41"]),
    st.sampled_from([b"%3a", b"%3F", b"%20", b"%c3%a9", b"%25", b"%0a"]),
    st.binary(min_size=1, max_size=3).filter(lambda b: all(x >= 0x80 for x in b)),
    st.sampled_from([b" ", b"?", b"#", b"{x}", b"[", b"|", b'"']),
)


@st.composite
def messy_raw_paths(draw: st.DrawFn) -> bytes:
    """Raw request paths that normalisation accepts but must rewrite."""
    parts = draw(st.lists(st.lists(_raw_pieces, min_size=1, max_size=3).map(b"".join), max_size=8))
    return b"/" + b"/".join(parts)


# Anything at all after a leading slash, to check that nothing but BadRequest
# ever escapes normalisation.
any_raw_paths = st.binary(max_size=40).map(lambda b: b"/" + b)


# -- RBAC (tests/test_rbac_engine.py) ------------------------------------------

rbac_roles = st.sampled_from(["admin", "user", "viewer", "auditor", "ops", "guest"])
rbac_scopes = st.sampled_from(["orders:read", "orders:write", "openid", "profile"])


@st.composite
def rbac_hierarchies(draw: st.DrawFn) -> dict[str, list[str]]:
    """Acyclic role hierarchies: a role only includes roles later in a random order."""
    order = draw(st.permutations(["admin", "user", "viewer", "auditor", "ops", "guest"]))
    out: dict[str, list[str]] = {}
    for i, role in enumerate(order):
        later = order[i + 1 :]
        if later and draw(st.booleans()):
            out[role] = draw(st.lists(st.sampled_from(later), min_size=1, max_size=3, unique=True))
    return out


@st.composite
def rbac_rules(draw: st.DrawFn) -> dict[str, list[str]]:
    """One ``rbac`` rule as config data."""
    rule: dict[str, list[str]] = {}
    if draw(st.booleans()):
        rule["methods"] = draw(st.lists(st.sampled_from(["GET", "POST", "DELETE"]), min_size=1, unique=True))
    if draw(st.booleans()):
        rule["paths"] = draw(
            st.lists(
                st.sampled_from(["/orders", "=/orders", "/orders/{id}", "/admin"]),
                min_size=1,
                max_size=2,
                unique=True,
            )
        )
    for key, names in (
        ("any_of", rbac_roles),
        ("all_of", rbac_roles),
        ("scopes_any", rbac_scopes),
        ("scopes_all", rbac_scopes),
    ):
        if draw(st.integers(0, 2)) == 0:
            rule[key] = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    return rule


# -- resilience (circuit breakers) ---------------------------------------------


@st.composite
def breaker_configs(draw: st.DrawFn) -> object:
    """A ``BreakerConfig`` with small thresholds, so that trips happen within a few calls."""
    from gatekeep.resilience import BreakerConfig

    return BreakerConfig(
        consecutive_failures=draw(st.integers(0, 8)),
        failure_rate=draw(st.sampled_from([0.1, 0.25, 0.5, 0.75, 1.0])),
        window=draw(st.sampled_from([1.0, 10.0, 60.0])),
        minimum_calls=draw(st.integers(1, 30)),
        open_for=draw(st.floats(0.5, 60)),
        half_open_probes=draw(st.integers(1, 5)),
    )


# -- W3C trace context (tracing filter) -----------------------------------------

_LOWER_HEX = "0123456789abcdef"


def _hex(size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=_LOWER_HEX, min_size=size, max_size=size)


@st.composite
def traceparents(draw: st.DrawFn) -> tuple[bytes, str, str, int]:
    """A valid ``traceparent`` and its trace id, parent id and flags (any version but ff,
    later versions possibly followed by more fields)."""
    version = draw(_hex(2).filter(lambda v: v != "ff"))
    trace_id = draw(_hex(32).filter(lambda v: v != "0" * 32))
    parent_id = draw(_hex(16).filter(lambda v: v != "0" * 16))
    flags = draw(st.integers(0, 255))
    value = f"{version}-{trace_id}-{parent_id}-{flags:02x}"
    if version != "00" and draw(st.booleans()):
        value += "-" + draw(st.text(alphabet=_LOWER_HEX + "-", max_size=20))
    return value.encode(), trace_id, parent_id, flags


# Mostly near-misses of a traceparent: valid ones with one character changed, cut or extended.
traceparent_noise = st.one_of(
    st.binary(max_size=80),
    st.tuples(traceparents(), st.integers(0, 79), st.binary(min_size=1, max_size=1)).map(
        lambda t: t[0][0][: t[1]] + t[2] + t[0][0][t[1] + 1 :]
    ),
    st.tuples(traceparents(), st.integers(0, 60)).map(lambda t: t[0][0][: t[1]]),
    st.tuples(traceparents(), st.binary(min_size=1, max_size=4)).map(lambda t: t[0][0] + t[1]),
)


# -- discovery: DNS SRV records and Consul health answers -----------------------

from gatekeep.discovery import SrvRecord  # noqa: E402 - this section's own import

_srv_targets = st.one_of(st.sampled_from(["a.node", "b.node", "c.node", "d.node", "e.node"]), st.just("."))

srv_records = st.lists(
    st.builds(
        SrvRecord,
        st.integers(0, 3),
        st.sampled_from([0, 0, 1, 2, 5, 10, 100, 65535]),
        st.integers(1, 65535),
        _srv_targets,
    ),
    max_size=8,
)

_consul_status = st.sampled_from(["passing", "warning", "critical", "maintenance"])
_consul_names = st.text(alphabet=string.ascii_lowercase + string.digits + "-", min_size=1, max_size=8)
_consul_addresses = st.sampled_from(["", "10.0.0.1", "10.0.0.2", "2001:db8::1", "node.example"])


@st.composite
def consul_health_entries(draw: st.DrawFn) -> dict[str, object]:
    """One entry of ``/v1/health/service/<name>`` in Consul's documented shape."""
    node = draw(_consul_names)
    service_id = draw(_consul_names)
    node_address = draw(_consul_addresses.filter(bool))
    service_address = draw(_consul_addresses)
    port = draw(st.integers(0, 65535))
    weights = draw(
        st.one_of(
            st.none(),
            st.fixed_dictionaries({"Passing": st.integers(1, 100), "Warning": st.integers(0, 100)}),
        )
    )
    checks = [
        {
            "Node": node,
            "CheckID": "serfHealth",
            "Name": "Serf Health Status",
            "Status": draw(_consul_status),
            "Notes": "",
            "Output": "",
            "ServiceID": "",
            "ServiceName": "",
            "ServiceTags": [],
        }
    ]
    checks += [
        {
            "Node": node,
            "CheckID": f"service:{service_id}:{n + 1}",
            "Name": "check",
            "Status": draw(_consul_status),
            "Notes": "",
            "Output": "",
            "ServiceID": service_id,
            "ServiceName": "svc",
            "ServiceTags": [],
        }
        for n in range(draw(st.integers(0, 3)))
    ]
    tagged_key = draw(st.sampled_from(["Address", "address", "ADDRESS"]))
    service: dict[str, object] = {
        "ID": service_id,
        "Service": "svc",
        "Tags": draw(st.lists(_consul_names, max_size=3)),
        "Address": service_address,
        "TaggedAddresses": {"wan_ipv4": {tagged_key: "192.0.2.9", "port": 7000}}
        if draw(st.booleans())
        else {},
        "Meta": draw(st.dictionaries(_consul_names, _consul_names, max_size=2)),
        "Port": port,
    }
    if weights is not None:
        service["Weights"] = weights
    return {
        "Node": {
            "ID": "",
            "Node": node,
            "Address": node_address,
            "Datacenter": "dc1",
            "TaggedAddresses": {"lan": node_address, "wan": node_address},
            "Meta": {},
        },
        "Service": service,
        "Checks": checks,
    }


# Any JSON value: what a broken proxy or a wrong endpoint might answer.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


# -- WebSocket extensions (permessage-deflate negotiation, RFC 7692) --------------------------

_extension_pieces = st.one_of(
    st.sampled_from(
        [
            "permessage-deflate",
            "x-webkit-deflate-frame",
            "server_no_context_takeover",
            "client_no_context_takeover",
            "server_max_window_bits",
            "client_max_window_bits",
            "=",
            "8",
            "12",
            "15",
            "16",
            "010",
            '"10"',
            '"',
            "\\",
            ";",
            ",",
            " ",
        ]
    ),
    st.text(alphabet=string.printable, max_size=3),
)
# A Sec-WebSocket-Extensions field value, well formed or not.
extension_fields = st.lists(_extension_pieces, max_size=16).map(
    lambda parts: "".join(parts).encode("latin-1")
)
