"""The Admin API's ``GET /explain``: what the running gateway would do with a request, without doing it.

``/explain?method=GET&host=api.example.com&path=/orders/1&header=X-Version:2``
answers, for the gateway's *active* config (``config_hash`` says which one):

* ``route``: the route the proxy would take (``CompiledRouter.explain``, the
  same walk as ``match``), its service, the path/host/method rule that
  matched, its params and the path the upstream would see; ``candidates``:
  every other route considered and why it was not taken (a failed method or
  header condition, outranked by precedence, another host, the nearest paths
  when none matches), and ``status``: 404 or 405 (with ``allow``) when the
  proxy would refuse the request itself;
* ``plugins``: the chain that would run, in order, with each plugin's scope,
  priority, phases and config path; the consumer-scoped plugins that replace
  or join it once a consumer authenticates (which depends on the credentials,
  so they are listed apart), and the plugins a more specific entry disables;
* ``upstream``: the service's balancer and breaker and each instance that
  discovery knows now, with its health, its breaker and whether the balancer
  may pick it.

It reads the gateway's compiled objects (one ``Compiled``, so a reload in
between cannot mix two configs) and changes nothing: no request is proxied,
no breaker or consumer chain is created.  Reading a breaker's state may move
an open breaker whose cool-down is over to half-open, as any read of it does
(``/metrics`` too).  A bad query is a Kong-style 400 schema violation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

import attrs

from .._edge import _valid_authority
from .._errors import BadRequest
from .._filter import _overrides
from .._http import is_header_name
from .._normalise import normalise_path
from ..discovery import no_instances
from ._errors import AdminError, SchemaViolation

__all__ = ["Explainer", "ExplainQuery", "parse_explain_query"]

MAX_HEADERS = 64
MAX_VALUE = 8192
_FIELDS = frozenset({"method", "host", "path", "header"})
_PHASES = ("on_request", "on_response", "on_log")
_LISTED = 50  # at most this many consumer-scoped plugins and instances are listed


@attrs.frozen
class ExplainQuery:
    """A checked ``/explain`` query: the request the proxy would see after normalisation."""

    method: str
    host: str
    path: str
    raw_path: str
    headers: tuple[tuple[bytes, bytes], ...]


def parse_explain_query(raw: bytes) -> ExplainQuery:
    """Check an ``/explain`` query string.

    Raises:
        SchemaViolation: a field is missing, unknown, too long or not what the proxy would accept.
        AdminError: too many fields.
    """
    try:
        pairs = parse_qsl(
            raw.decode("latin-1"),
            keep_blank_values=True,
            encoding="latin-1",
            errors="strict",
            max_num_fields=MAX_HEADERS + len(_FIELDS),
        )
    except ValueError:
        raise AdminError(f"too many query fields (at most {MAX_HEADERS} 'header' fields)") from None
    fields: dict[str, str] = {}
    values: dict[str, str] = {}
    headers: list[tuple[bytes, bytes]] = []
    for name, value in pairs:
        if name not in _FIELDS:
            fields[name[:64]] = "unknown field"
            continue
        if len(value) > MAX_VALUE:
            fields[name] = f"longer than {MAX_VALUE} characters"
            continue
        if name == "header":
            header, problem = _header(value)
            if problem is not None:
                fields["header"] = problem
            elif header is not None:
                headers.append(header)
        elif name in values:
            fields[name] = "given twice"
        else:
            values[name] = value
    method = values.get("method", "GET") or "GET"
    if not is_header_name(method.encode("latin-1")):
        fields["method"] = f"{method[:64]!r} is not an HTTP method (a token)"
    host = values.get("host", "")
    from_header = [v for n, v in headers if n == b"host"]
    if from_header:
        if host or len(from_header) > 1:
            fields["host"] = "give the host once, as 'host=' or as one 'header=Host:...'"
        host = from_header[0].decode("latin-1")
        headers = [(n, v) for n, v in headers if n != b"host"]
    if host and not _valid_authority(host.encode("latin-1")):
        fields["host"] = f"{host[:64]!r} is not a valid Host (the proxy answers 400)"
    raw_path = values.get("path")
    path = ""
    if raw_path is None or not raw_path:
        fields["path"] = "required field missing"
    else:
        raw_path = raw_path.partition("?")[0]
        if not raw_path.startswith("/"):
            fields["path"] = "must start with '/' (the path as a client sends it, percent-encoded)"
        else:
            try:
                path = normalise_path(raw_path.encode("latin-1"))
            except BadRequest as exc:
                fields["path"] = f"the proxy refuses this path (400): {exc.detail}"
    if fields:
        raise SchemaViolation(fields)
    assert raw_path is not None
    return ExplainQuery(method, host, path, raw_path, tuple(headers))


def _header(value: str) -> tuple[tuple[bytes, bytes] | None, str | None]:
    name, colon, text = value.partition(":")
    name = name.strip()
    if not colon or not name:
        return None, f"{value[:64]!r} is not 'Name:Value'"
    encoded = name.lower().encode("latin-1")
    if not is_header_name(encoded):
        return None, f"{name[:64]!r} is not a header name (a token)"
    if any(c in text for c in "\r\n\x00"):
        return None, f"the value of {name[:64]!r} holds a CR, LF or NUL"
    return (encoded, text.strip().encode("latin-1")), None


def _scope(entry: Any) -> str:
    parts = [
        part
        for part, value in (("route", entry.route), ("service", entry.service), ("consumer", entry.consumer))
        if value is not None
    ]
    return "+".join(parts) or "global"


class Explainer:
    """``/explain`` over ``gateway``'s running config; ``explainer(raw_query) -> answer``."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway

    def __call__(self, raw_query: bytes) -> dict[str, Any]:
        query = parse_explain_query(raw_query)
        gateway = self.gateway
        compiled = gateway.compiled  # one config throughout, even if a reload swaps it meanwhile
        status = gateway.config_status() if hasattr(gateway, "config_status") else {}
        answer: dict[str, Any] = {
            "config_hash": status.get("config_hash"),
            "request": {
                "method": query.method,
                "host": query.host,
                "path": query.path,
                "raw_path": query.raw_path,
                "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in query.headers],
            },
        }
        endpoint = compiled.endpoints.get(query.path)
        if endpoint is not None:
            answer.update(
                status=None,
                outcome=f"answered by the gateway's own endpoint {query.path!r} (a plugin's), before routing",
                route=None,
                candidates=[],
                plugins=self._chain(compiled, compiled.global_chain if endpoint[1] else None, None),
                upstream=None,
            )
            return answer
        router = compiled.router
        explain = getattr(router, "explain", None)
        headers = list(query.headers)
        if explain is not None:
            found = explain(query.method, query.host, query.path, headers)
            match, allowed = found.match, found.allowed
            candidates = [attrs.asdict(c) for c in found.candidates]
            answer["candidates_truncated"] = found.truncated
        else:  # a user's Router: its choice, without reasons
            match = router.match(query.method, query.host, query.path, headers)
            allowed = router.allowed_methods(query.host, query.path, headers)
            candidates = []
        answer["candidates"] = candidates
        if match is None:
            answer["route"] = None
            answer["upstream"] = None
            if allowed:
                answer["status"] = 405
                answer["allow"] = sorted(allowed)
                answer["outcome"] = f"405: a route matches the path, but not the method {query.method!r}"
            else:
                answer["status"] = 404
                answer["outcome"] = f"404: no route matches {query.method} {query.path}"
            if compiled.fallthrough:
                answer["outcome"] += (
                    " (when gatekeep wraps an app as middleware, fallthrough lets that app answer)"
                )
            plugins = self._chain(compiled, compiled.global_chain, None)
            plugins["note"] = (
                "the request phase does not run on a 404/405; the global plugins' response and log phases do"
            )
            answer["plugins"] = plugins
            return answer
        route = compiled.routes_by_name[match.rule.name]
        taken = next((c for c in candidates if c["taken"]), None)
        answer["status"] = None
        answer["outcome"] = f"routed to {route.name!r} of service {route.service.name!r}"
        answer["route"] = {
            "name": route.name,
            "service": route.service.name,
            "paths": list(route.config.paths),
            "hosts": list(route.config.hosts),
            "methods": list(route.config.methods),
            "headers": {k: list(v) for k, v in route.config.headers.items()},
            "matched": None if taken is None else {k: taken[k] for k in ("path", "host", "kind")},
            "matched_path": match.matched,
            "params": dict(match.params),
            "reason": None if taken is None else taken["reason"],
            "strip_path": route.strip_path,
            "preserve_host": route.preserve_host,
            "upstream_path": self._upstream_path(route, match, query.path),
        }
        answer["plugins"] = self._chain(compiled, route.chain, route)
        answer["upstream"] = self._upstream(compiled, route.service)
        return answer

    # -- plugins -------------------------------------------------------------------------

    def _chain(self, compiled: Any, chain: Any, route: Any) -> dict[str, Any]:
        entries = {id(e.filter): e for e in compiled.entries}
        listed: list[dict[str, Any]] = []
        for f in chain.filters if chain is not None else ():
            entry = entries.get(id(f))
            listed.append(
                {
                    "name": str(getattr(f, "name", type(f).__name__)),
                    "priority": int(getattr(f, "priority", 0)),
                    "scope": _scope(entry) if entry is not None else "global",
                    "config_path": None if entry is None else entry.path,
                    "phases": [p[3:] for p in _PHASES if _overrides(f, p)],
                }
            )
        order = {
            "request": [p["name"] for p in listed if "request" in p["phases"]],
            "response": [p["name"] for p in reversed(listed) if "response" in p["phases"]],
            "log": [p["name"] for p in listed if "log" in p["phases"]],
        }
        out: dict[str, Any] = {"chain": listed, "order": order}
        if route is None:
            return out
        applicable = [
            e
            for e in compiled.entries
            if (e.route is None or e.route == route.name)
            and (e.service is None or e.service == route.service.name)
        ]
        # Per name, the most specific entry without a consumer: when it is disabled, the plugin does not run.
        best: dict[str, Any] = {}
        for e in applicable:
            if e.consumer is None and (e.name not in best or e.rank > best[e.name].rank):
                best[e.name] = e
        out["disabled"] = [
            {"name": e.name, "scope": _scope(e), "config_path": e.path}
            for e in best.values()
            if not e.enabled
        ]
        scopes = {p["name"]: p["scope"] for p in listed}
        consumer_scoped = [
            {
                "consumer": e.consumer,
                "name": e.name,
                "scope": _scope(e),
                "priority": int(getattr(e.filter, "priority", 0)),
                "enabled": e.enabled,
                "config_path": e.path,
                "replaces": scopes.get(e.name),
            }
            for e in applicable
            if e.consumer is not None
        ]
        out["consumer_scoped"] = consumer_scoped[:_LISTED]
        out["consumer_scoped_truncated"] = len(consumer_scoped) > _LISTED
        if consumer_scoped:
            out["note"] = (
                "consumer-scoped plugins depend on who authenticates: once an authentication plugin "
                "names a consumer, its plugins replace those of the same name and join the chain by priority"
            )
        return out

    # -- upstream ------------------------------------------------------------------------

    def _upstream_path(self, route: Any, match: Any, path: str) -> str | None:
        if route.service.is_app:
            return None
        # As ``Gateway.upstream_target`` (without the query).
        stripped = path
        if route.strip_path and match.matched:
            rest = path[len(match.matched) :]
            stripped = rest if rest.startswith("/") else "/" + rest
        base: str = route.service.base_path
        if base:
            return base if stripped == "/" and not path.endswith("/") else base + stripped
        return stripped

    def _upstream(self, compiled: Any, service: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"service": service.name}
        if service.is_app:
            out["outcome"] = "answered by the wrapped app (url = 'app://')"
            return out
        guard = service.guard
        sb = guard.breaker
        config = guard.breaker_config
        out.update(
            balancer=service.config.balancer,
            balancer_class=type(guard.balancer).__name__,
            retries=guard.retries,
            healthchecks=guard.health is not None,
            breaker=None
            if sb is None
            else {"state": str(sb.state), "retry_after": round(sb.retry_after(), 3)},
        )
        instances: Sequence[Any] = compiled.discovery.instances(service.name)
        listed = [self._instance(guard, sb, config, i) for i in list(instances)[:_LISTED]]
        out["instances"] = listed
        out["instances_truncated"] = len(instances) > _LISTED
        eligible = [i["address"] for i in listed if i["eligible"]]
        out["eligible"] = eligible
        if not instances:
            out["outcome"] = f"503: {no_instances(compiled.discovery, service.name).detail}"
        elif sb is not None and not sb.available():
            out["outcome"] = f"503: the breaker of service {service.name!r} is open"
        elif not eligible and len(instances) <= _LISTED:
            out["outcome"] = "503: no instance is eligible now"
        else:
            out["outcome"] = f"the balancer ({service.config.balancer}) picks among the eligible instances"
        return out

    def _instance(self, guard: Any, sb: Any, config: Any, instance: Any) -> dict[str, Any]:
        health = guard.health.health(instance) if guard.health is not None else "healthchecks_off"
        key = (instance.scheme, instance.host, instance.port, instance.id)
        ib = guard.instance_breakers.get(key)
        if ib is not None:
            breaker: str | None = str(ib.state)
        elif config is not None and config.per_instance:
            breaker = "closed"  # made on the instance's first request
        else:
            breaker = None
        why_not = []
        if health == "ejected":
            why_not.append("ejected by passive health checks")
        elif health == "unhealthy":
            why_not.append("unhealthy by active health checks")
        if ib is not None and not ib.available():
            why_not.append(f"its breaker is {ib.state} (retry in {ib.retry_after():.1f} s)")
        if sb is not None and not sb.available():
            why_not.append(f"the service's breaker is {sb.state}")
        return {
            "address": instance.address,
            "scheme": instance.scheme,
            "weight": instance.weight,
            "id": instance.id or None,
            "meta": dict(instance.meta) if isinstance(instance.meta, Mapping) else {},
            "health": health,
            "breaker": breaker,
            "eligible": not why_not,
            "why_not": why_not,
        }
