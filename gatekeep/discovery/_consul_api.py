"""Consul's HTTP API as data (sans-IO): health answers, blocking indexes, durations.

Theory of operation
-------------------
``GET /v1/health/service/<name>`` answers a JSON array of
``{"Node": {...}, "Service": {...}, "Checks": [...]}`` entries.  An entry is
usable when none of its checks (the node's ``serfHealth`` with ``ServiceID``
"" included) is ``critical`` -- and, when only passing instances are wanted,
none is ``warning`` either.  The server already filters with ``passing=true``;
checking again here costs nothing and protects against a proxy or an old
agent that ignores the parameter.

The address is ``Service.Address``, falling back to ``Node.Address`` when
empty (HashiCorp's rule), or a named tagged address when configured.  The
members of tagged addresses are spelled ``Address``/``Port`` on some
endpoints and ``address``/``port`` on others, so they are read
case-insensitively.  The weight is ``Service.Weights.Passing`` (``Warning``
for an instance in warning), 1 when absent, as Consul's default.

Blocking queries follow HashiCorp's rules: send back the last
``X-Consul-Index``; if a returned index is lower than the one we hold, reset
to 0 (a plain, non-blocking read restarts the loop); never block on an index
of 0 or less -- a returned index <= 0 becomes 1, which is always safe.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from .._protocols import Instance
from ._errors import ConsulResponseError

__all__ = [
    "HealthEntry",
    "aggregate_status",
    "next_index",
    "parse_duration",
    "parse_health",
    "parse_index",
]

_DURATION: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS: Final = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string as Consul takes it (``"10s"``, ``"1m30s"``, ``"250ms"``).

    Raises:
        ValueError: not a duration.
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"expected a duration such as '10s' or '1m30s', got {text!r}")
    if text == "0":
        return 0.0
    pos = 0
    total = 0.0
    while pos < len(text):
        m = _DURATION.match(text, pos)
        if m is None:
            raise ValueError(f"expected a duration such as '10s' or '1m30s', got {text!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total


def parse_index(value: bytes | str | None) -> int | None:
    """The ``X-Consul-Index`` header as an int (``None`` when absent or not a number)."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if not text or not (text.isdigit() or (text[0] == "-" and text[1:].isdigit())):
        return None
    return int(text)


def next_index(held: int, returned: int | None) -> int:
    """The index to send with the next blocking query.

    ``held`` is the index sent with the query that just returned (0 for a
    plain read), ``returned`` its ``X-Consul-Index``.  0 means "do not
    block".
    """
    if returned is None:
        return 0
    if returned <= 0:
        return 1  # a Consul bug; blocking on 0 would spin, 1 is always safe
    if returned < held:
        return 0  # went backwards (snapshot restore, leader change): restart the loop
    return returned


@attrs.frozen
class HealthEntry:
    """One parsed entry: the instance and its aggregated check status."""

    instance: Instance
    status: str
    node: str
    tags: tuple[str, ...]


def _get_ci(mapping: Mapping[str, Any], name: str) -> Any:
    """``mapping[name]`` with the member name matched case-insensitively."""
    if name in mapping:
        return mapping[name]
    lower = name.lower()
    for key, value in mapping.items():
        if isinstance(key, str) and key.lower() == lower:
            return value
    return None


def aggregate_status(checks: Sequence[Any]) -> str:
    """The worst status of ``checks``: critical > warning > passing.

    Unknown statuses (``maintenance``, garbage) count as critical.
    """
    worst = "passing"
    for check in checks:
        status = check.get("Status") if isinstance(check, Mapping) else None
        if status == "critical" or status not in ("passing", "warning"):
            return "critical"
        if status == "warning":
            worst = "warning"
    return worst


def _tagged(section: Mapping[str, Any], tag: str) -> tuple[str, int | None] | None:
    tagged = _get_ci(section, "TaggedAddresses")
    if not isinstance(tagged, Mapping):
        return None
    value = _get_ci(tagged, tag)
    if isinstance(value, str):  # Node.TaggedAddresses: plain strings
        return (value, None) if value else None
    if isinstance(value, Mapping):  # Service.TaggedAddresses: {Address, Port}
        address = _get_ci(value, "Address")
        port = _get_ci(value, "Port")
        if isinstance(address, str) and address:
            return address, port if isinstance(port, int) and not isinstance(port, bool) else None
    return None


def _str_map(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def _weight(service: Mapping[str, Any], status: str) -> int:
    weights = service.get("Weights")
    if not isinstance(weights, Mapping):
        return 1
    value = weights.get("Warning" if status == "warning" else "Passing")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 1
    return value


def _entry(item: Any, scheme: str, tagged_address: str | None) -> HealthEntry | None:
    if not isinstance(item, Mapping):
        raise ConsulResponseError(f"expected an object in the health answer, got {type(item).__name__}")
    node = item.get("Node")
    service = item.get("Service")
    checks = item.get("Checks")
    if not isinstance(node, Mapping) or not isinstance(service, Mapping):
        raise ConsulResponseError("a health entry lacks its 'Node' or 'Service' object")
    if checks is None:
        checks = []
    if not isinstance(checks, list):
        raise ConsulResponseError("a health entry's 'Checks' is not an array")
    status = aggregate_status(checks)
    port = service.get("Port")
    if isinstance(port, bool) or not isinstance(port, int):
        port = 0
    host: str = ""
    if tagged_address is not None:
        found = _tagged(service, tagged_address) or _tagged(node, tagged_address)
        if found is not None:
            host = found[0]
            port = found[1] if found[1] is not None else port
    if not host:
        address = service.get("Address")
        host = address if isinstance(address, str) else ""
    if not host:
        address = node.get("Address")
        host = address if isinstance(address, str) else ""
    if not host or not 0 < port < 65536:
        return None  # nothing a gateway can connect to (e.g. a port-less registration)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    service_id = service.get("ID")
    node_name = node.get("Node")
    tags = service.get("Tags")
    meta = _str_map(service.get("Meta"))
    instance = Instance(
        host=host,
        port=port,
        scheme=scheme,
        weight=_weight(service, status),
        id=service_id if isinstance(service_id, str) else "",
        meta=meta,
    )
    return HealthEntry(
        instance=instance,
        status=status,
        node=node_name if isinstance(node_name, str) else "",
        tags=tuple(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else (),
    )


def parse_health(
    body: bytes | str | Any,
    *,
    scheme: str = "http",
    passing_only: bool = True,
    tagged_address: str | None = None,
) -> tuple[Instance, ...]:
    """The usable instances in a ``/v1/health/service/<name>`` answer, sorted.

    Args:
        body: the raw JSON (or the already decoded value).
        scheme: the scheme of the instances (``http`` or ``https``).
        passing_only: drop instances in ``warning`` too (``critical`` ones
            are always dropped).
        tagged_address: use this tagged address (``wan``, ``lan_ipv4`` ...)
            when the instance or its node has it.

    Raises:
        ConsulResponseError: not JSON, or not the documented shape.
    """
    if isinstance(body, bytes | str):
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise ConsulResponseError(f"the health answer is not JSON: {exc}") from exc
    else:
        data = body
    if data is None:
        return ()
    if not isinstance(data, list):
        raise ConsulResponseError(
            f"expected a JSON array from the health endpoint, got {type(data).__name__}"
        )
    out: dict[tuple[str, int, str], Instance] = {}
    for item in data:
        entry = _entry(item, scheme, tagged_address)
        if entry is None or entry.status == "critical" or (passing_only and entry.status != "passing"):
            continue
        inst = entry.instance
        out.setdefault((inst.host, inst.port, inst.id), inst)
    return tuple(sorted(out.values(), key=lambda i: (i.id, i.host, i.port)))
