"""Kong's declarative format (decK ``kong.yml``, DB-less ``/config``) as gatekeep's config shape.

Theory of operation
-------------------
``from_kong(data, errors, notes)`` runs on every config before its fields
are checked (``load_config``): it rewrites what only Kong spells that way and
leaves gatekeep's own fields alone, so a gatekeep TOML file passes through
unchanged and a decK file, a DB-less ``/config`` body or a mix of both loads.

- ``services``: ``protocol``/``host``/``port``/``path`` become ``url``; a
  service whose host is the name of one of the ``upstreams`` gets that
  upstream's ``targets``, ``algorithm`` (``balancer``), hashing fields and
  ``healthchecks``; ``tls_verify`` becomes ``tls.verify``.
- top-level ``routes`` move into their ``service`` (by name or id); top-level
  ``plugins`` name their ``service``/``route``/``consumer`` by name (Kong
  also writes ``{name = ...}`` or ``{id = ...}``).
- ``consumers``: credentials (``jwt_secrets``, ``keyauth_credentials``,
  ``acls`` ...) lose Kong's ``created_at`` (they keep ``id`` and ``tags``);
  top-level credential lists with a ``consumer`` join their consumer.
- Kong's metadata (``id``, ``tags``, ``created_at``, ``updated_at``,
  ``protocols`` of http(s), ``regex_priority``, ``path_handling``,
  ``_transform``, ``_workspace`` ...) is accepted and ignored, with one note
  per field name (logged as a warning); plugin config values that are
  ``null`` (Kong's "unset") are dropped, so gatekeep's defaults apply.
- What gatekeep cannot honour (non-HTTP protocols, ``snis``, ``sources``,
  certificates, consumer groups, plugin ``ordering`` ...) is refused with its
  path in the document as given.

This module is plain data in, plain data out: it imports nothing of gatekeep
but the error list, so ``gatekeep._config`` can run it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ._structure import Errors, join

__all__ = ["from_kong"]

# Metadata Kong adds to every entity: accepted, ignored.
_METADATA = frozenset({"id", "tags", "created_at", "updated_at", "ws_id"})
_TOP_IGNORED = frozenset({"_transform", "_workspace", "_info", "_konnect", "_comment"})
_TOP_REFUSED = frozenset(
    {
        "certificates",
        "ca_certificates",
        "snis",
        "vaults",
        "keys",
        "key_sets",
        "consumer_groups",
        "licenses",
        "filter_chains",
        "custom_entities",
    }
)
_HTTP = frozenset({"http", "https"})
_ROUTE_IGNORED = frozenset(
    {"regex_priority", "path_handling", "https_redirect_status_code", "response_buffering", "priority"}
)
_ROUTE_REFUSED = frozenset({"snis", "sources", "destinations", "expression"})
_SERVICE_IGNORED = frozenset({"tls_verify_depth"})
_SERVICE_REFUSED = frozenset({"ca_certificates", "client_certificate", "tls_sans"})
_UPSTREAM_TO_SERVICE = (
    "hash_on",
    "hash_fallback",
    "hash_on_header",
    "hash_fallback_header",
    "hash_on_cookie",
)
_UPSTREAM_IGNORED = frozenset(
    {
        "slots",
        "hash_on_cookie_path",
        "host_header",
        "use_srv_name",
        "hash_on_query_arg",
        "hash_on_uri_capture",
    }
)
_ALGORITHMS = {
    "round-robin": "round-robin",
    "least-connections": "least-connections",
    "consistent-hashing": "consistent-hashing",
    "latency": "latency",
}
_PLUGIN_IGNORED = frozenset({"protocols", "instance_name"})
_PLUGIN_REFUSED = frozenset({"ordering", "consumer_group"})
_CREDENTIAL_LISTS = (
    "acls",
    "jwt_secrets",
    "keyauth_credentials",
    "basicauth_credentials",
    "hmacauth_credentials",
    "mtls_auth_credentials",
    "oauth2_credentials",
)
_KONG_TARGET_PORT = 8000
_ENTITIES = frozenset({"services", "routes", "upstreams", "consumers", "plugins", *_CREDENTIAL_LISTS})
# Kong metadata of credentials that gatekeep's credential classes do not keep (they keep id and tags).
_CREDENTIAL_METADATA = frozenset({"created_at", "updated_at", "ws_id", "consumer"})


class _Notes:
    """One note per ignored field name and entity kind (the first path it was seen at)."""

    def __init__(self, out: list[str]) -> None:
        self.out = out
        self.seen: set[tuple[str, str]] = set()

    def ignored(self, kind: str, field: str, path: str) -> None:
        if (kind, field) in self.seen:
            return
        self.seen.add((kind, field))
        self.out.append(f"{path}: Kong's {field!r} is accepted and ignored (gatekeep has no use for it)")


def from_kong(data: Mapping[str, Any], errors: Errors, notes: list[str]) -> dict[str, Any]:
    """``data`` with Kong's declarative fields rewritten to gatekeep's (see the module doc).

    Problems go to ``errors`` (with their path in ``data``), ignored fields to ``notes``.
    """
    if not isinstance(data, Mapping):
        return data
    n = _Notes(notes)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in _TOP_IGNORED:
            n.ignored("top", key, key)
        elif key in _TOP_REFUSED:
            if value:  # decK writes empty lists of everything
                errors.add(key, f"Kong's {key!r} are not supported by gatekeep; remove them")
        elif key not in _ENTITIES:
            out[key] = value
    upstreams = _upstreams(data.get("upstreams"), errors, n)
    services = _list(data, "services", errors)
    routes = _list(data, "routes", errors)
    consumers = _list(data, "consumers", errors)
    plugins = _list(data, "plugins", errors)
    if not any(k in data for k in _ENTITIES):
        return out

    service_ids: dict[str, str] = {}
    route_ids: dict[str, str] = {}
    new_services: list[Any] = []
    used_upstreams: set[str] = set()
    for si, sc in enumerate(services):
        spath = join("services", si)
        new = _service(sc, spath, upstreams, used_upstreams, errors, n)
        new_services.append(new)
        if isinstance(sc, Mapping) and isinstance(new, dict):
            name = new.get("name")
            if isinstance(sc.get("id"), str) and isinstance(name, str):
                service_ids[sc["id"]] = name
            for ri, rc in enumerate(new.get("routes") or ()):
                original = (sc.get("routes") or ())[ri]
                if isinstance(original, Mapping) and isinstance(original.get("id"), str):
                    route_ids[original["id"]] = str(rc.get("name", "")) if isinstance(rc, Mapping) else ""
    by_name = {s.get("name"): s for s in new_services if isinstance(s, dict)}
    for ri, rc in enumerate(routes):
        rpath = join("routes", ri)
        if not isinstance(rc, Mapping):
            errors.add(rpath, "expected a table")
            continue
        ref = _ref(rc.get("service"), service_ids, join(rpath, "service"), errors)
        if ref is None:
            errors.add(join(rpath, "service"), "a top-level route needs the 'service' it belongs to")
            continue
        owner = by_name.get(ref)
        if owner is None:
            errors.add(join(rpath, "service"), f"no service named {ref!r}")
            continue
        route = _route({k: v for k, v in rc.items() if k != "service"}, rpath, errors, n)
        if isinstance(rc.get("id"), str) and isinstance(route.get("name"), str):
            route_ids[rc["id"]] = route["name"]
        owner["routes"] = [*(owner.get("routes") or ()), route]
    notes.extend(
        f"upstreams: {name!r} is not the host of any service; ignored"
        for name in upstreams
        if name not in used_upstreams
    )

    consumer_ids: dict[str, str] = {}
    new_consumers: list[Any] = []
    for ci, cc in enumerate(consumers):
        new = _consumer(cc, join("consumers", ci), errors, n)
        new_consumers.append(new)
        if isinstance(cc, Mapping) and isinstance(cc.get("id"), str):
            key = cc.get("username") or cc.get("custom_id") or cc["id"]
            consumer_ids[cc["id"]] = str(key)
    _top_credentials(data, new_consumers, consumer_ids, errors, n)

    refs = {"service": service_ids, "route": route_ids, "consumer": consumer_ids}
    new_plugins = [_plugin(pc, join("plugins", pi), errors, n, refs=refs) for pi, pc in enumerate(plugins)]
    if "services" in data or routes:
        out["services"] = new_services
    if "consumers" in data or new_consumers:
        out["consumers"] = new_consumers
    if "plugins" in data:
        out["plugins"] = new_plugins
    return out


def _list(data: Mapping[str, Any], key: str, errors: Errors) -> list[Any]:
    value = data.get(key)
    if value is None:
        return []
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    errors.add(key, f"expected a list, got {type(value).__name__}")
    return []


def _ref(value: Any, ids: Mapping[str, str], path: str, errors: Errors) -> str | None:
    """A reference to another entity: a name, ``{name = ...}`` or ``{id = ...}``; as a name."""
    if value is None:
        return None
    if isinstance(value, str):
        return ids.get(value, value)
    if isinstance(value, Mapping):
        if isinstance(value.get("name"), str):
            return str(value["name"])
        if isinstance(value.get("username"), str):
            return str(value["username"])
        if isinstance(value.get("id"), str):
            found = ids.get(value["id"])
            if found is None:
                errors.add(path, f"no entity with id {value['id']!r}")
            return found
    errors.add(path, "expected a name, or a table with 'name' or 'id'")
    return None


def _upstreams(value: Any, errors: Errors, n: _Notes) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if value is None:
        return out
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        errors.add("upstreams", "expected a list")
        return out
    for ui, up in enumerate(value):
        upath = join("upstreams", ui)
        if not isinstance(up, Mapping) or not isinstance(up.get("name"), str):
            errors.add(upath, "an upstream needs a 'name'")
            continue
        fields: dict[str, Any] = {}
        for key, v in up.items():
            kpath = join(upath, key)
            if key == "name":
                continue
            if key in _METADATA or key in _UPSTREAM_IGNORED:
                n.ignored("upstreams", key, kpath)
            elif key == "algorithm":
                if v not in _ALGORITHMS:
                    errors.add(kpath, f"unknown algorithm {v!r} (expected one of: {', '.join(_ALGORITHMS)})")
                else:
                    fields["balancer"] = _ALGORITHMS[v]
            elif key in _UPSTREAM_TO_SERVICE:
                if v is not None:
                    fields[key] = v
            elif key == "healthchecks":
                fields["healthchecks"] = _healthchecks(_drop_nulls(v), kpath, errors, n)
            elif key == "targets":
                fields["targets"] = _targets(v, kpath, errors, n)
            elif key == "client_certificate":
                if v is not None:
                    errors.add(kpath, "client certificates to upstreams are set in a service's 'tls' table")
            else:
                errors.add(kpath, "unknown upstream field")
        out[str(up["name"])] = fields
    return out


def _healthchecks(value: Any, path: str, errors: Errors, n: _Notes) -> Any:
    """Kong's upstream ``healthchecks`` as decK dumps them: intervals and counters of 0 mean "off"."""
    if not isinstance(value, Mapping):
        return value
    out: dict[str, Any] = {}
    for key, v in value.items():
        kpath = join(path, key)
        if key == "threshold":
            n.ignored("healthchecks", key, kpath)
        elif key == "active" and isinstance(v, Mapping):
            healthy, unhealthy = v.get("healthy") or {}, v.get("unhealthy") or {}
            if not healthy.get("interval") and not unhealthy.get("interval"):
                continue  # Kong: active checks off
            active = dict(v)
            for field in ("headers", "https_sni"):
                if active.pop(field, None):
                    errors.add(join(kpath, field), f"Kong's active health check {field!r} is not supported")
            if active.get("type") not in (None, "http", "https"):
                errors.add(join(kpath, "type"), f"only http and https health checks, got {active['type']!r}")
            out["active"] = active
        elif key == "passive" and isinstance(v, Mapping):
            passive = {k: w for k, w in v.items() if k not in ("type", "healthy")}
            if v.get("type") not in (None, "http", "https"):
                errors.add(join(kpath, "type"), f"only http and https health checks, got {v['type']!r}")
            if "healthy" in v:
                n.ignored("healthchecks", "passive.healthy", join(kpath, "healthy"))
            out["passive"] = passive
        else:
            out[key] = v
    return out


def _targets(value: Any, path: str, errors: Errors, n: _Notes) -> list[Any]:
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        errors.add(path, "expected a list of targets")
        return []
    out = []
    for ti, t in enumerate(value):
        tpath = join(path, ti)
        if not isinstance(t, Mapping) or not isinstance(t.get("target"), str):
            errors.add(tpath, "a target needs a 'target' ('host:port')")
            continue
        target = str(t["target"])
        host, sep, port = target.rpartition(":")
        if not sep or not port.isdigit() or (host.startswith("[") != host.endswith("]")):
            target = f"{target}:{_KONG_TARGET_PORT}"  # Kong's default target port
        entry: dict[str, Any] = {"target": target}
        for key, v in t.items():
            if key == "weight":
                entry["weight"] = v
            elif key in _METADATA or key == "upstream":
                n.ignored("targets", key, join(tpath, key))
            elif key != "target":
                errors.add(join(tpath, key), "unknown target field")
        out.append(entry)
    return out


def _service(
    sc: Any,
    path: str,
    upstreams: Mapping[str, dict[str, Any]],
    used: set[str],
    errors: Errors,
    n: _Notes,
) -> Any:
    if not isinstance(sc, Mapping):
        return sc
    out: dict[str, Any] = {}
    host = sc.get("host")
    url = sc.get("url")
    protocol = sc.get("protocol")
    for key, value in sc.items():
        kpath = join(path, key)
        if key in _METADATA or key in _SERVICE_IGNORED:
            n.ignored("services", key, kpath)
        elif key in _SERVICE_REFUSED:
            if value:
                errors.add(kpath, f"Kong's {key!r} is not supported; set the service's 'tls' table")
        elif key == "enabled":
            if value is False:
                errors.add(kpath, "a disabled service is not supported; remove it")
            else:
                n.ignored("services", key, kpath)
        elif key in ("host", "port"):
            continue
        elif key == "tls_verify":
            if value is not None:
                tls = dict(out.get("tls") or sc.get("tls") or {})
                tls["verify"] = value
                out["tls"] = tls
        elif key == "routes":
            if isinstance(value, Sequence) and not isinstance(value, str | bytes):
                out["routes"] = [_route(r, join(kpath, ri), errors, n) for ri, r in enumerate(value)]
            else:
                out["routes"] = value
        elif key == "plugins":
            if isinstance(value, Sequence) and not isinstance(value, str | bytes):
                out["plugins"] = [_plugin(p, join(kpath, pi), errors, n) for pi, p in enumerate(value)]
            else:
                out["plugins"] = value
        elif key == "tls" and "tls" in out:
            out["tls"] = {**value, **out["tls"]} if isinstance(value, Mapping) else value
        else:
            out[key] = value
    if protocol is not None and protocol not in _HTTP:
        errors.add(join(path, "protocol"), f"only http and https services are supported, got {protocol!r}")
        out.pop("protocol", None)
    if url is not None and isinstance(url, str):
        parts = urlsplit(url)
        if parts.hostname is not None and parts.hostname in upstreams:
            out.pop("url")
            _use_upstream(out, parts.hostname, upstreams, used, parts.scheme, parts.path)
        return out
    if host is None:
        return out
    if not isinstance(host, str) or not host:
        errors.add(join(path, "host"), "expected a host name")
        return out
    if host in upstreams:
        _use_upstream(out, host, upstreams, used, protocol, sc.get("path"))
        return out
    port = sc.get("port")
    scheme = protocol if protocol in _HTTP else "http"
    if port is None:
        port = 443 if scheme == "https" else 80
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        errors.add(join(path, "port"), f"expected a port number, got {port!r}")
        return out
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    out["url"] = urlunsplit((scheme, netloc, sc.get("path") or "", "", ""))
    out.pop("path", None)
    out.pop("protocol", None)
    return out


def _use_upstream(
    out: dict[str, Any],
    name: str,
    upstreams: Mapping[str, dict[str, Any]],
    used: set[str],
    scheme: Any,
    base: Any,
) -> None:
    used.add(name)
    for key, value in upstreams[name].items():
        out.setdefault(key, value)
    out.setdefault("targets", [])
    if scheme in _HTTP:
        out["protocol"] = scheme
    if base:
        out["path"] = base
    else:
        out.pop("path", None)


def _route(rc: Any, path: str, errors: Errors, n: _Notes) -> Any:
    if not isinstance(rc, Mapping):
        return rc
    out: dict[str, Any] = {}
    for key, value in rc.items():
        kpath = join(path, key)
        if key in _METADATA or key in _ROUTE_IGNORED:
            n.ignored("routes", key, kpath)
        elif key in _ROUTE_REFUSED:
            if value:
                errors.add(kpath, f"Kong's route {key!r} is not supported")
        elif key == "protocols":
            if isinstance(value, Sequence) and not isinstance(value, str | bytes):
                other = [p for p in value if p not in _HTTP]
                if other:
                    got = ", ".join(map(str, other))
                    errors.add(kpath, f"only http and https routes are supported, got {got}")
                else:
                    n.ignored("routes", key, kpath)
            else:
                errors.add(kpath, "expected a list of protocols")
        elif key == "plugins":
            if isinstance(value, Sequence) and not isinstance(value, str | bytes):
                out["plugins"] = [_plugin(p, join(kpath, pi), errors, n) for pi, p in enumerate(value)]
            else:
                out["plugins"] = value
        elif key in ("hosts", "methods", "paths", "headers") and value is None:
            continue
        else:
            out[key] = value
    return out


def _plugin(
    pc: Any, path: str, errors: Errors, n: _Notes, *, refs: Mapping[str, Mapping[str, str]] | None = None
) -> Any:
    if not isinstance(pc, Mapping):
        return pc
    out: dict[str, Any] = {}
    for key, value in pc.items():
        kpath = join(path, key)
        if key in _METADATA or key in _PLUGIN_IGNORED:
            n.ignored("plugins", key, kpath)
        elif key in _PLUGIN_REFUSED:
            if value:
                errors.add(kpath, f"Kong's plugin {key!r} is not supported")
        elif key in ("service", "route", "consumer") and value is not None:
            if refs is None or isinstance(value, str):
                out[key] = value if refs is None else _ref(value, refs[key], kpath, errors)
            else:
                out[key] = _ref(value, refs[key], kpath, errors)
        elif key in ("service", "route", "consumer"):
            continue
        elif key == "config":
            out["config"] = _unset_redis(_drop_nulls(value))
        else:
            out[key] = value
    return out


def _unset_redis(config: Any) -> Any:
    """Kong writes a plugin's ``redis`` settings (table and flat ``redis_*``) with their defaults
    even when its ``policy`` is not ``redis``; without a host, they are not settings."""
    if not isinstance(config, Mapping) or config.get("policy") == "redis":
        return config
    table = config.get("redis")
    given = [table.get("host"), table.get("url")] if isinstance(table, Mapping) else []
    given += [config.get("redis_host"), config.get("redis_url")]
    if any(given):
        return config
    return {k: v for k, v in config.items() if k != "redis" and not k.startswith("redis_")}


def _drop_nulls(value: Any) -> Any:
    """Kong writes unset fields as null; gatekeep's defaults apply instead (nested tables too)."""
    if isinstance(value, Mapping):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    return value


def _consumer(cc: Any, path: str, errors: Errors, n: _Notes) -> Any:
    if not isinstance(cc, Mapping):
        return cc
    out: dict[str, Any] = {}
    for key, value in cc.items():
        kpath = join(path, key)
        if key in ("tags", "created_at", "updated_at", "ws_id"):
            n.ignored("consumers", key, kpath)
        elif key in _CREDENTIAL_LISTS:
            out[key] = _credentials(value, kpath, errors, n)
        elif key == "plugins":
            if isinstance(value, Sequence) and not isinstance(value, str | bytes):
                out["plugins"] = [_plugin(p, join(kpath, pi), errors, n) for pi, p in enumerate(value)]
            else:
                out["plugins"] = value
        else:
            out[key] = value
    return out


def _credentials(value: Any, path: str, errors: Errors, n: _Notes) -> Any:
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        return value
    out = []
    for i, cred in enumerate(value):
        if not isinstance(cred, Mapping):
            out.append(cred)
            continue
        kept = {}
        for key, v in cred.items():
            if key in _CREDENTIAL_METADATA:
                n.ignored("credentials", key, join(join(path, i), key))
            elif v is not None:
                kept[key] = v
        out.append(kept)
    return out


def _top_credentials(
    data: Mapping[str, Any], consumers: list[Any], ids: Mapping[str, str], errors: Errors, n: _Notes
) -> None:
    """Top-level ``jwt_secrets``/``keyauth_credentials``/``acls`` with a ``consumer``: into that consumer."""
    by_key: dict[str, dict[str, Any]] = {}
    for c in consumers:
        if isinstance(c, dict):
            for field in ("username", "custom_id", "id"):
                if isinstance(c.get(field), str):
                    by_key.setdefault(c[field], c)
    for field in _CREDENTIAL_LISTS:
        for i, cred in enumerate(_list(data, field, errors)):
            cpath = join(field, i)
            if not isinstance(cred, Mapping):
                errors.add(cpath, "expected a table")
                continue
            ref = _ref(cred.get("consumer"), ids, join(cpath, "consumer"), errors)
            owner = by_key.get(ref) if ref is not None else None
            if owner is None:
                errors.add(join(cpath, "consumer"), f"no consumer {ref!r}" if ref else "needs its 'consumer'")
                continue
            owner[field] = [*(owner.get(field) or ()), *_credentials([cred], cpath, errors, n)]
