"""Registering a service with the local Consul agent, and leaving on shutdown.

The body is exactly the JSON of ``PUT /v1/agent/service/register`` (Consul's
field names, CamelCase), checked here first so that a typo fails with the
field's path instead of a terse 400 from the agent::

    body = {
        "ID": "order-service-1",
        "Name": "order-service",
        "Address": "10.0.0.5",
        "Port": 8443,
        "Check": {"HTTP": "https://10.0.0.5:8443/health", "Interval": "10s", "Timeout": "2s"},
    }
    async with registered("http://127.0.0.1:8500", body):
        ...  # serve; deregistered on the way out

For TTL checks the context manager runs a heartbeat
(``PUT /v1/agent/check/pass/<check id>`` every TTL/3) on its own task group,
and registers again when the agent forgot the service (an agent restart
without persisted state answers 404 to the heartbeat).  Check ids follow the
agent's rule: ``service:<id>`` for one check, ``service:<id>:<n>`` (from 1)
when there are several, unless a check names its own ``CheckID``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
import anyio.from_thread
import attrs

from .._errors import ConfigError
from .._structure import Errors, join
from .._upstream import TLSSettings
from ._config import ConsulTLSConfig
from ._consul import ConsulClient
from ._consul_api import parse_duration
from ._errors import ConsulError, ConsulHTTPError

__all__ = [
    "Registration",
    "check_ids",
    "deregister",
    "register",
    "registered",
    "registered_sync",
    "validate_registration",
]

log = logging.getLogger("gatekeep.discovery")

Tls = TLSSettings | ConsulTLSConfig | None

_STR, _BOOL, _INT, _DURATION, _STRS, _STRMAP, _MAP = "str", "bool", "int", "duration", "strs", "strmap", "map"

_SERVICE_FIELDS: Final[Mapping[str, str]] = {
    "Name": _STR,
    "ID": _STR,
    "Tags": _STRS,
    "Address": _STR,
    "Port": _INT,
    "Meta": _STRMAP,
    "Weights": "weights",
    "Check": "check",
    "Checks": "checks",
    "EnableTagOverride": _BOOL,
    "Kind": _STR,
    "TaggedAddresses": _MAP,
    "SocketPath": _STR,
    "Proxy": _MAP,
    "Connect": _MAP,
    "Namespace": _STR,
    "Partition": _STR,
    "Locality": _MAP,
}

_CHECK_FIELDS: Final[Mapping[str, str]] = {
    "CheckID": _STR,
    "ID": _STR,
    "Name": _STR,
    "Notes": _STR,
    "Status": _STR,
    "HTTP": _STR,
    "Method": _STR,
    "Header": _MAP,
    "Body": _STR,
    "DisableRedirects": _BOOL,
    "TLSServerName": _STR,
    "TLSSkipVerify": _BOOL,
    "TCP": _STR,
    "TCPUseTLS": _BOOL,
    "UDP": _STR,
    "GRPC": _STR,
    "GRPCUseTLS": _BOOL,
    "H2PING": _STR,
    "H2PingUseTLS": _BOOL,
    "TTL": _DURATION,
    "Args": _STRS,
    "DockerContainerID": _STR,
    "Shell": _STR,
    "AliasNode": _STR,
    "AliasService": _STR,
    "OSService": _STR,
    "Interval": _DURATION,
    "Timeout": _DURATION,
    "DeregisterCriticalServiceAfter": _DURATION,
    "SuccessBeforePassing": _INT,
    "FailuresBeforeWarning": _INT,
    "FailuresBeforeCritical": _INT,
    "OutputMaxSize": _INT,
}

# The field that makes each kind of check; all but TTL and alias checks need an Interval.
_KINDS: Final = (
    "HTTP",
    "TCP",
    "TTL",
    "GRPC",
    "H2PING",
    "UDP",
    "Args",
    "OSService",
    "AliasService",
    "AliasNode",
)
_NO_INTERVAL: Final = frozenset({"TTL", "AliasService", "AliasNode"})


def _host_port(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def _check_value(kind: str, value: Any, path: str, errors: Errors) -> bool:
    ok = True
    if kind == _STR:
        ok = isinstance(value, str)
        expected = "a string"
    elif kind == _BOOL:
        ok = isinstance(value, bool)
        expected = "a boolean"
    elif kind == _INT:
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer"
    elif kind == _STRS:
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        expected = "an array of strings"
    elif kind == _STRMAP:
        ok = isinstance(value, Mapping) and all(isinstance(v, str) for v in value.values())
        expected = "an object of strings"
    elif kind == _MAP:
        ok = isinstance(value, Mapping)
        expected = "an object"
    elif kind == _DURATION:
        try:
            parse_duration(value)
        except ValueError as exc:
            errors.add(path, str(exc))
            return False
        return True
    else:  # pragma: no cover - the tables above only use known kinds
        raise AssertionError(kind)
    if not ok:
        errors.add(path, f"expected {expected}, got {json.dumps(value, default=repr)[:60]}")
    return ok


def _check_fields(data: Mapping[str, Any], table: Mapping[str, str], path: str, errors: Errors) -> None:
    for key, value in data.items():
        kind = table.get(key)
        if kind is None:
            hint = next((k for k in table if k.lower() == str(key).lower().replace("_", "")), None)
            suggestion = f"; did you mean {hint!r}?" if hint else ""
            errors.add(join(path, str(key)), f"unknown field (Consul's names are CamelCase){suggestion}")
        elif kind in (_STR, _BOOL, _INT, _STRS, _STRMAP, _MAP, _DURATION):
            _check_value(kind, value, join(path, key), errors)


def _validate_check(check: Any, path: str, errors: Errors) -> None:
    if not isinstance(check, Mapping):
        errors.add(path, "expected an object")
        return
    _check_fields(check, _CHECK_FIELDS, path, errors)
    kinds = [k for k in _KINDS if k in check]
    if len(kinds) != 1:
        found = ", ".join(kinds) or "none"
        errors.add(
            path, f"a check needs exactly one of HTTP, TCP, TTL, GRPC, H2PING, UDP, Args ... (got {found})"
        )
        return
    kind = kinds[0]
    if kind in _NO_INTERVAL:
        if "Interval" in check and kind == "TTL":
            errors.add(join(path, "Interval"), "a TTL check has no 'Interval' (the service reports in)")
    elif "Interval" not in check:
        errors.add(join(path, "Interval"), f"is required for a {kind} check")
    http = check.get("HTTP")
    if isinstance(http, str):
        parts = urlsplit(http)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            errors.add(join(path, "HTTP"), f"expected an http:// or https:// URL, got {http!r}")
    tcp = check.get("TCP")
    if isinstance(tcp, str) and not _host_port(tcp):
        errors.add(join(path, "TCP"), f"expected 'host:port', got {tcp!r}")
    status = check.get("Status")
    if isinstance(status, str) and status not in ("passing", "warning", "critical"):
        errors.add(join(path, "Status"), f"must be 'passing', 'warning' or 'critical', got {status!r}")
    for field in ("Interval", "Timeout", "TTL"):
        value = check.get(field)
        if isinstance(value, str):
            try:
                if parse_duration(value) <= 0:
                    errors.add(join(path, field), f"must be more than 0, got {value!r}")
            except ValueError:
                pass  # already reported


def validate_registration(body: Any) -> dict[str, Any]:
    """Check a ``PUT /v1/agent/service/register`` body; return it as a plain dict.

    Raises:
        ConfigError: every problem, each with the path of its field
            (``Check.Interval: is required for a HTTP check``).
    """
    errors = Errors()
    if not isinstance(body, Mapping):
        errors.add("", "the registration body must be an object (Consul's service definition)")
        raise ConfigError(errors)
    _check_fields(body, _SERVICE_FIELDS, "", errors)
    name = body.get("Name")
    if "Name" not in body:
        errors.add("Name", "is required")
    elif isinstance(name, str) and not name.strip():
        errors.add("Name", "must not be empty")
    service_id = body.get("ID")
    if isinstance(service_id, str) and ("/" in service_id or not service_id.strip()):
        errors.add("ID", f"must be a non-empty id without '/', got {service_id!r}")
    port = body.get("Port")
    if isinstance(port, int) and not isinstance(port, bool) and not 0 <= port < 65536:
        errors.add("Port", f"must be 0-65535, got {port}")
    weights = body.get("Weights")
    if "Weights" in body:
        if not isinstance(weights, Mapping):
            errors.add("Weights", "expected an object with 'Passing' and 'Warning'")
        else:
            for key, value in weights.items():
                wpath = join("Weights", str(key))
                if key not in ("Passing", "Warning"):
                    errors.add(wpath, "unknown field (expected 'Passing' or 'Warning')")
                elif isinstance(value, bool) or not isinstance(value, int):
                    errors.add(wpath, "expected an integer")
                elif value < (1 if key == "Passing" else 0):
                    errors.add(wpath, f"must be at least {1 if key == 'Passing' else 0}, got {value}")
    if "Check" in body:
        _validate_check(body["Check"], "Check", errors)
    checks = body.get("Checks")
    if "Checks" in body:
        if not isinstance(checks, list | tuple):
            errors.add("Checks", "expected an array of checks")
        else:
            for i, check in enumerate(checks):
                _validate_check(check, join("Checks", i), errors)
    if errors:
        raise ConfigError(errors)
    clean: dict[str, Any] = json.loads(json.dumps(body))  # a plain, JSON-clean copy
    return clean


def _all_checks(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    out = [body["Check"]] if isinstance(body.get("Check"), Mapping) else []
    out += [c for c in body.get("Checks") or () if isinstance(c, Mapping)]
    return out


def check_ids(body: Mapping[str, Any]) -> list[str]:
    """The check ids the agent gives the checks of ``body`` (its own rule)."""
    service_id = body.get("ID") or body["Name"]
    checks = _all_checks(body)
    ids = []
    for n, check in enumerate(checks, start=1):
        given = check.get("CheckID") or check.get("ID")
        if given:
            ids.append(str(given))
        elif len(checks) == 1:
            ids.append(f"service:{service_id}")
        else:
            ids.append(f"service:{service_id}:{n}")
    return ids


@attrs.frozen
class Registration:
    """A service registered with an agent: its id and its TTL checks (id, TTL seconds)."""

    agent: str
    service_id: str
    check_ids: tuple[str, ...]
    ttl_checks: tuple[tuple[str, float], ...]


def _client(agent: str, token: str | None, tls: Tls) -> ConsulClient:
    return ConsulClient(agent, token=token, tls=tls)


async def _register(client: ConsulClient, body: dict[str, Any], replace_existing_checks: bool) -> None:
    query = [("replace-existing-checks", "true")] if replace_existing_checks else []
    await client.request("PUT", "/v1/agent/service/register", query, body=json.dumps(body).encode())


def _registration(agent: str, body: Mapping[str, Any]) -> Registration:
    ids = check_ids(body)
    ttl = tuple(
        (cid, parse_duration(check["TTL"]))
        for cid, check in zip(ids, _all_checks(body), strict=True)
        if "TTL" in check
    )
    return Registration(agent, str(body.get("ID") or body["Name"]), tuple(ids), ttl)


async def register(
    agent: str,
    body: Mapping[str, Any],
    *,
    token: str | None = None,
    tls: Tls = None,
    replace_existing_checks: bool = False,
) -> Registration:
    """Register a service with the agent at ``agent`` (``http://127.0.0.1:8500``).

    Raises:
        ConfigError: the body is not a valid service definition.
        ConsulError: the agent refused it or could not be reached.
    """
    clean = validate_registration(body)
    client = _client(agent, token, tls)
    try:
        await _register(client, clean, replace_existing_checks)
    finally:
        await client.aclose()
    return _registration(agent, clean)


async def deregister(agent: str, service_id: str, *, token: str | None = None, tls: Tls = None) -> None:
    """Remove a service from the agent (a no-op for an unknown id, as in Consul).

    Raises:
        ConsulError: the agent refused or could not be reached.
    """
    client = _client(agent, token, tls)
    try:
        await client.request("PUT", f"/v1/agent/service/deregister/{service_id}")
    finally:
        await client.aclose()


async def _heartbeat(
    client: ConsulClient, body: dict[str, Any], check_id: str, interval: float, replace: bool
) -> None:
    failing = False
    wait = interval
    while True:
        await anyio.sleep(wait)
        wait = interval
        try:
            await client.request("PUT", f"/v1/agent/check/pass/{check_id}", read_timeout=10.0)
        except ConsulError as exc:
            if isinstance(exc, ConsulHTTPError) and exc.code == 404:
                # The agent forgot us (restarted without its state): register again.
                log.warning("consul lost check %r; registering %r again", check_id, body["Name"])
                try:
                    await _register(client, body, replace)
                    wait = 0
                    continue
                except ConsulError as again:
                    exc = again
            if not failing:
                log.warning("TTL heartbeat %r failed: %s", check_id, exc)
            failing = True
        else:
            if failing:
                log.warning("TTL heartbeat %r works again", check_id)
            failing = False


@asynccontextmanager
async def registered(
    agent: str,
    body: Mapping[str, Any],
    *,
    token: str | None = None,
    tls: Tls = None,
    heartbeat: float | None = None,
    replace_existing_checks: bool = False,
) -> AsyncIterator[Registration]:
    """Register while the context is open; deregister on the way out.

    TTL checks get a heartbeat every ``heartbeat`` seconds (default: a third
    of their TTL).  Use it in an ASGI lifespan, or in a script under
    ``anyio.run`` (``registered_sync`` for plain synchronous code).

    Raises:
        ConfigError: the body is not a valid service definition.
        ConsulError: the agent refused the registration or could not be reached.
    """
    clean = validate_registration(body)
    registration = _registration(agent, clean)
    client = _client(agent, token, tls)
    try:
        await _register(client, clean, replace_existing_checks)
        try:
            async with anyio.create_task_group() as tg:
                for check_id, ttl in registration.ttl_checks:
                    every = heartbeat if heartbeat is not None else max(ttl / 3, 0.05)
                    await client.request("PUT", f"/v1/agent/check/pass/{check_id}")
                    tg.start_soon(_heartbeat, client, clean, check_id, every, replace_existing_checks)
                try:
                    yield registration
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                try:
                    await client.request("PUT", f"/v1/agent/service/deregister/{registration.service_id}")
                except ConsulError as exc:
                    log.warning("could not deregister %r: %s", registration.service_id, exc)
    finally:
        with anyio.CancelScope(shield=True):
            await client.aclose()


@contextmanager
def registered_sync(agent: str, body: Mapping[str, Any], **kwargs: Any) -> Iterator[Registration]:
    """``registered`` for synchronous code: the heartbeat runs in a background event loop thread."""
    with anyio.from_thread.start_blocking_portal() as portal:
        cm = registered(agent, body, **kwargs)
        with portal.wrap_async_context_manager(cm) as registration:
            yield registration
