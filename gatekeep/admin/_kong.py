"""Kong's entities <-> gatekeep's config tables: the shapes the Admin API reads and writes.

``*_out`` present a table of the document as Kong's Admin API shows the entity
(every field, defaults filled, ``null`` for what is unset); ``*_in`` turn the
arguments of a request into the table to store, and refuse (``SchemaViolation``)
a field that gatekeep does not have or cannot honour.  The document keeps only
what was given: defaults stay defaults, so a later change of a default reaches
every entity that did not set it.

Kong's service ``url`` is a shorthand written as ``protocol``, ``host``, ``port``
and ``path``; gatekeep stores the one ``url`` and answers with the four parts,
as Kong does (Kong never returns ``url``).

Secrets are never read back: a credential's ``secret``/``key`` and every
plugin config field named like a secret (``password``, ``secret``, ``token``
...) are ``null`` in answers; only the answer to the ``POST`` that created a
credential shows its secret (a generated one cannot be learnt otherwise).
"""

from __future__ import annotations

import secrets
import typing
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from .._config import RouteConfig, ServiceConfig
from .._secrets import Secret
from ._errors import SchemaViolation

__all__ = [
    "KONG_ROUTE_FIELDS",
    "KONG_SERVICE_FIELDS",
    "consumer_in",
    "consumer_out",
    "credential_in",
    "credential_out",
    "plugin_config_out",
    "redact",
    "route_in",
    "route_out",
    "service_in",
    "service_out",
]

_SECRET_NAMES = frozenset({"password", "secret", "client_secret", "token", "api_key", "private_key", "key"})
_SECRET_SUFFIXES = ("_password", "_secret", "_token", "_private_key")
# Plugin config fields that are not secrets despite their names.
_NOT_SECRET = frozenset({"key_claim_name", "key_names", "key_in_header", "key_in_query", "key_in_body"})


def is_secret(name: str) -> bool:
    return name not in _NOT_SECRET and (name in _SECRET_NAMES or name.endswith(_SECRET_SUFFIXES))


def redact(value: Any) -> Any:
    """``value`` with every secret-named field (at any depth) set to ``None``.

    A decrypted ``{enc:...}`` value (``gatekeep.Secret``) is ``None`` whatever its field's name.
    """
    if isinstance(value, Secret):
        return None
    if isinstance(value, Mapping):
        return {k: None if is_secret(str(k)) and v is not None else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def plain(value: Any) -> Any:
    """attrs objects, tuples and mappings as JSON-ready data."""
    if attrs.has(type(value)):
        return {f.alias or f.name: plain(getattr(value, f.name)) for f in attrs.fields(type(value)) if f.init}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | frozenset | set):
        return [plain(v) for v in value]
    return value


def _defaults(cls: type[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in attrs.fields(cls):
        if not f.init:
            continue
        if isinstance(f.default, attrs.Factory):  # type: ignore[arg-type]
            out[f.alias or f.name] = plain(f.default.factory())
        elif f.default is not attrs.NOTHING:
            out[f.alias or f.name] = plain(f.default)
    return out


def _violation(field: str, message: str) -> SchemaViolation:
    return SchemaViolation({field: message})


def _nulls_dropped(args: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items() if v is not None}


# -- services -----------------------------------------------------------------------------

KONG_SERVICE_FIELDS = frozenset(
    {"id", "name", "url", "protocol", "host", "port", "path", "retries", "connect_timeout", "read_timeout",
     "write_timeout", "tags", "enabled", "tls_verify", "tls_verify_depth", "client_certificate",
     "ca_certificates", "created_at", "updated_at"}
)  # fmt: skip
_SERVICE_NATIVE = frozenset(f.alias or f.name for f in attrs.fields(ServiceConfig) if f.init) - {
    "name", "url", "path", "routes", "plugins", "protocol"
}  # fmt: skip
# Kong's fields that are not ServiceConfig's, typed for form values.
SERVICE_FORM_TYPES: dict[str, Any] = {
    "port": int, "tags": tuple[str, ...], "enabled": bool, "tls_verify": bool, "tls_verify_depth": int,
}  # fmt: skip


def service_form_types() -> dict[str, Any]:
    hints = typing.get_type_hints(ServiceConfig)
    types = {f.alias or f.name: hints.get(f.name, Any) for f in attrs.fields(ServiceConfig) if f.init}
    types.update(SERVICE_FORM_TYPES)
    types.pop("routes", None)
    types.pop("plugins", None)
    return types


def _url_parts(url: str) -> tuple[str, str, int, str | None]:
    parts = urlsplit(url)
    protocol = parts.scheme or "http"
    port = parts.port or (443 if protocol == "https" else 80)
    return protocol, parts.hostname or "", port, parts.path or None


def _compose(protocol: str, host: str, port: int, path: str | None) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{protocol}://{shown}:{port}{path or ''}"


def _url_from(args: Mapping[str, Any], old: Any) -> str:
    """Kong's ``url`` shorthand, then its explicit ``protocol``/``host``/``port``/``path`` over it."""
    url = args.get("url")
    base = url if url is not None else old
    if base is not None and not isinstance(base, str):
        raise _violation("url", "expected a string")
    try:
        protocol, host, port, path = _url_parts(base) if base and base != "app://" else ("http", "", 0, None)
    except ValueError as exc:
        raise _violation("url", f"invalid url: {exc}") from None
    if url is not None and not host:
        raise _violation("url", "missing host in url")
    protocol = args.get("protocol", protocol) or "http"
    if protocol not in ("http", "https"):
        raise _violation("protocol", "expected one of: http, https")
    host = args.get("host", host) or ""
    if not isinstance(host, str) or not host:
        raise _violation("host", "required field missing")
    port_value = args.get("port", port) or (443 if protocol == "https" else 80)
    if isinstance(port_value, bool) or not isinstance(port_value, int) or not 0 < port_value < 65536:
        raise _violation("port", "value should be between 0 and 65535")
    path = args.get("path", path)
    if path is not None and not (isinstance(path, str) and path.startswith("/")):
        raise _violation("path", "should start with: /")
    return _compose(protocol, host, port_value, path)


def service_out(service: Mapping[str, Any], sid: str) -> dict[str, Any]:
    defaults = _defaults(ServiceConfig)
    url = service.get("url")
    if isinstance(url, str) and url != "app://":
        protocol, host, port, path = _url_parts(url)
    else:
        protocol = str(service.get("protocol", "http"))
        host = str(service.get("name"))  # balanced over targets / discovered instances, like a Kong upstream
        port = 443 if protocol == "https" else 80
        path = service.get("path") or None
    tls = service.get("tls")
    out: dict[str, Any] = {
        "id": sid,
        "name": service.get("name"),
        "created_at": None,
        "updated_at": None,
        "protocol": protocol,
        "host": host,
        "port": port,
        "path": path,
        "retries": service.get("retries", defaults["retries"]),
        "connect_timeout": service.get("connect_timeout", defaults["connect_timeout"]),
        "read_timeout": service.get("read_timeout", defaults["read_timeout"]),
        "write_timeout": service.get("write_timeout", defaults["write_timeout"]),
        "tags": None,
        "enabled": True,
        "client_certificate": None,
        "tls_verify": tls.get("verify") if isinstance(tls, Mapping) else None,
        "tls_verify_depth": None,
        "ca_certificates": None,
    }
    if url == "app://":
        out["url"] = "app://"
    for key, value in service.items():
        if key in _SERVICE_NATIVE and key not in out:
            out[key] = redact(plain(value))
    return out


def service_in(args: Mapping[str, Any], current: Mapping[str, Any] | None) -> dict[str, Any]:
    """The service table for ``args`` over ``current`` (``None`` to create, or for PUT)."""
    errors: dict[str, Any] = {}
    table = {k: v for k, v in (current or {}).items()}
    for key in args:
        if key not in KONG_SERVICE_FIELDS and key not in _SERVICE_NATIVE:
            errors[key] = "unknown field"
    for key in ("client_certificate", "ca_certificates", "tls_verify_depth"):
        if args.get(key) is not None:
            errors[key] = "not supported by gatekeep (use the service's 'tls' table)"
    if args.get("enabled") is False:
        errors["enabled"] = "gatekeep has no disabled services; delete it instead"
    if errors:
        raise SchemaViolation(errors)
    if "name" in args:
        table["name"] = args["name"]
    parts_given = [k for k in ("protocol", "host", "port", "path") if k in args]
    url = args.get("url")
    if url == "app://":
        table["url"] = url
    elif url is not None or parts_given:
        table["url"] = _url_from(args, table.get("url"))
        for key in ("targets", "discovery"):
            table.pop(key, None)
    if args.get("tls_verify") is not None:
        tls = dict(table.get("tls") or {})
        tls["verify"] = args["tls_verify"]
        table["tls"] = tls
    for key in ("retries", "connect_timeout", "read_timeout", "write_timeout", *_SERVICE_NATIVE):
        if key in args:
            if args[key] is None:
                table.pop(key, None)
            else:
                table[key] = args[key]
    if not table.get("name"):
        raise _violation("name", "gatekeep needs a name for every service")
    return table


# -- routes -------------------------------------------------------------------------------

KONG_ROUTE_FIELDS = frozenset(
    {"id", "name", "methods", "hosts", "paths", "headers", "strip_path", "preserve_host", "request_buffering",
     "response_buffering", "protocols", "regex_priority", "path_handling", "https_redirect_status_code",
     "tags", "service", "snis", "sources", "destinations", "created_at", "updated_at"}
)  # fmt: skip
_ROUTE_STORED = (
    "name",
    "methods",
    "hosts",
    "paths",
    "headers",
    "strip_path",
    "preserve_host",
    "request_buffering",
)


def route_form_types() -> dict[str, Any]:
    hints = typing.get_type_hints(RouteConfig)
    types = {f.alias or f.name: hints.get(f.name, Any) for f in attrs.fields(RouteConfig) if f.init}
    types.pop("plugins", None)
    types.update(
        protocols=tuple[str, ...], tags=tuple[str, ...], regex_priority=int, https_redirect_status_code=int,
        response_buffering=bool, snis=tuple[str, ...],
    )  # fmt: skip
    return types


def route_out(route: Mapping[str, Any], rid: str, service_id: str) -> dict[str, Any]:
    def listed(key: str) -> Any:
        value = route.get(key)
        return list(value) if value else None

    return {
        "id": rid,
        "name": route.get("name"),
        "created_at": None,
        "updated_at": None,
        "protocols": ["http", "https"],
        "methods": listed("methods"),
        "hosts": listed("hosts"),
        "paths": listed("paths"),
        "headers": dict(route["headers"]) if route.get("headers") else None,
        "strip_path": route.get("strip_path", True),
        "preserve_host": route.get("preserve_host", False),
        "request_buffering": route.get("request_buffering", True),
        "response_buffering": True,
        "regex_priority": 0,
        "path_handling": "v0",
        "https_redirect_status_code": 426,
        "snis": None,
        "sources": None,
        "destinations": None,
        "tags": None,
        "service": {"id": service_id},
    }


def route_in(args: Mapping[str, Any], current: Mapping[str, Any] | None) -> dict[str, Any]:
    errors: dict[str, Any] = {}
    for key in args:
        if key not in KONG_ROUTE_FIELDS:
            errors[key] = "unknown field"
    for key in ("snis", "sources", "destinations"):
        if args.get(key):
            errors[key] = "not supported by gatekeep (HTTP routes only)"
    protocols = args.get("protocols")
    if protocols is not None and (
        not isinstance(protocols, list) or not set(protocols) <= {"http", "https"} or not protocols
    ):
        errors["protocols"] = "gatekeep routes serve http and https"
    if args.get("response_buffering") is False:
        errors["response_buffering"] = "not supported by gatekeep (responses stream)"
    if errors:
        raise SchemaViolation(errors)
    table = {k: v for k, v in (current or {}).items()}
    for key in _ROUTE_STORED:
        if key in args:
            value = args[key]
            if value is None or value == [] or value == {}:
                table.pop(key, None)
            elif key == "methods" and isinstance(value, list):
                table[key] = [m.upper() if isinstance(m, str) else m for m in value]
            else:
                table[key] = value
    return table


# -- plugins ------------------------------------------------------------------------------


def plugin_config_out(config: Mapping[str, Any], cls: Any) -> dict[str, Any]:
    """The config as Kong shows it: every field with its default, overlaid by what was set."""
    shown = _defaults(cls) if attrs.has(cls) else {}
    shown.update(plain(config))
    return dict(redact(shown))


# -- consumers ----------------------------------------------------------------------------

_CONSUMER_FIELDS = frozenset({"id", "username", "custom_id", "tags", "groups", "created_at", "updated_at"})


def consumer_out(consumer: Mapping[str, Any], cid: str) -> dict[str, Any]:
    out = {
        "id": cid,
        "username": consumer.get("username"),
        "custom_id": consumer.get("custom_id"),
        "created_at": None,
        "updated_at": None,
        "tags": None,
    }
    if consumer.get("groups"):
        out["groups"] = list(consumer["groups"])
    return out


def consumer_in(args: Mapping[str, Any], current: Mapping[str, Any] | None) -> dict[str, Any]:
    errors = {k: "unknown field" for k in args if k not in _CONSUMER_FIELDS}
    if errors:
        raise SchemaViolation(errors)
    table = {k: v for k, v in (current or {}).items()}
    for key in ("username", "custom_id", "groups"):
        if key in args:
            if args[key] is None:
                table.pop(key, None)
            else:
                table[key] = args[key]
    if not table.get("username") and not table.get("custom_id"):
        raise SchemaViolation(
            {"@entity": ["at least one of these fields must be non-empty: 'custom_id', 'username'"]}
        )
    if current is None:
        given = args.get("id")
        if given is not None and not _is_uuid(given):
            raise _violation("id", "expected a valid UUID")
        table["id"] = given or uuid4()
    return table


def _is_uuid(value: Any) -> bool:
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def uuid4() -> str:
    return str(uuid.uuid4())


# -- credentials --------------------------------------------------------------------------

_CREDENTIAL_FIELDS = {
    "jwt": frozenset(
        {"id", "key", "secret", "algorithm", "rsa_public_key", "tags", "consumer", "created_at"}
    ),
    "key-auth": frozenset({"id", "key", "ttl", "tags", "consumer", "created_at"}),
}
_SECRET_OF = {"jwt": "secret", "key-auth": "key"}


def credential_out(
    kind: str, credential: Mapping[str, Any], crid: str, consumer_id: str, *, reveal: bool = False
) -> dict[str, Any]:
    out: dict[str, Any] = {"id": crid, "consumer": {"id": consumer_id}, "created_at": None, "tags": None}
    if kind == "jwt":
        out.update(
            key=credential.get("key"),
            algorithm=credential.get("algorithm", "HS256"),
            rsa_public_key=credential.get("rsa_public_key"),
            secret=credential.get("secret"),
        )
    else:
        out.update(key=credential.get("key"), ttl=None)
    if not reveal:
        out[_SECRET_OF[kind]] = None
    return out


def credential_in(kind: str, args: Mapping[str, Any], current: Mapping[str, Any] | None) -> dict[str, Any]:
    errors = {k: "unknown field" for k in args if k not in _CREDENTIAL_FIELDS[kind]}
    if kind == "key-auth" and args.get("ttl"):
        errors["ttl"] = "not supported by gatekeep (keys do not expire)"
    if errors:
        raise SchemaViolation(errors)
    table = {k: v for k, v in (current or {}).items()}
    for key in _CREDENTIAL_FIELDS[kind] - {"id", "tags", "consumer", "created_at", "ttl"}:
        if key in args:
            if args[key] is None:
                table.pop(key, None)
            else:
                table[key] = args[key]
    table.pop("id", None)  # derived from the consumer and the key (see _index)
    if current is None:
        # Kong generates what is not given: a key, and an HS secret.
        table.setdefault("key", secrets.token_hex(16))
        if kind == "jwt" and str(table.get("algorithm", "HS256")).startswith("HS"):
            table.setdefault("secret", secrets.token_hex(16))
    return _nulls_dropped(table)
