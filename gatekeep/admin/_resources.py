"""The Admin API's operations on a config document: list, read, create, change, replace, delete.

Each operation takes the document (a private deep copy, for writes) and the
request's decoded arguments, changes the document in place and returns an
``Outcome``: the status, the body (the entity as Kong shows it, read from the
changed document) and where the entity lives in the document (so that a
validation error of the whole config can be shown as a field of the entity).
Nothing here does I/O: ``_app`` reads the document from the store, runs an
operation, validates the result and writes it back with check-and-set.

Kong's rules kept here: unique service, route and consumer names (409), one
plugin of a name per scope (409), a service with routes cannot be deleted
(400, foreign key), deleting an entity deletes the plugins scoped to it, and
``DELETE`` of something that is not there is still a 204.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .._registry import PluginRegistry
from ._errors import ForeignKeyViolation, NotFound, SchemaViolation, UniqueViolation
from ._form import infer
from ._index import CREDENTIALS, Index, PluginSlot, RouteSlot
from ._kong import (
    consumer_in,
    consumer_out,
    credential_in,
    credential_out,
    plugin_config_out,
    route_in,
    route_out,
    service_in,
    service_out,
)

__all__ = ["Outcome", "Resources", "private_copy"]

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

# Kong's flat redis fields of ``rate-limiting``, typed for form values even where
# the plugin's Config class knows them only as aliases of its ``redis`` table.
_ALIAS_TYPES: Mapping[str, Any] = {
    "redis_port": int, "redis_timeout": int, "redis_database": int, "redis_ssl": bool,
    "redis_ssl_verify": bool,
}  # fmt: skip


_PLUGIN_FIELDS = frozenset(
    {"name", "config", "enabled", "service", "route", "consumer", "protocols", "tags", "instance_name", "id",
     "created_at", "updated_at"}
)  # fmt: skip


@attrs.frozen
class Outcome:
    status: int
    body: Any = None
    # Where the written entity is in the document (for errors of the whole config).
    path: str | None = None


def _ref(value: Any, field: str) -> str | None:
    """A foreign key as Kong takes it: ``{"id": x}``, ``{"name": x}`` or a bare string."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        for key in ("id", "name", "username"):
            if isinstance(value.get(key), str) and value[key]:
                return str(value[key])
        raise SchemaViolation({field: {"id": "required field missing"}})
    if isinstance(value, str) and value:
        return value
    raise SchemaViolation({field: "expected a record"})


def _services(doc: dict[str, Any]) -> list[Any]:
    services: list[Any] = doc.setdefault("services", [])
    return services


def _plugins_of(table: dict[str, Any]) -> list[Any]:
    plugins: list[Any] = table.setdefault("plugins", [])
    return plugins


class Resources:
    """The operations, for one plugin registry (to type and show plugin configs)."""

    def __init__(self, registry: PluginRegistry) -> None:
        self.registry = registry

    # -- paging ----------------------------------------------------------------------------

    @staticmethod
    def page(items: list[Any], base: str, size: int, offset: int) -> dict[str, Any]:
        chunk = items[offset : offset + size]
        more = offset + size < len(items)
        body: dict[str, Any] = {"data": chunk, "next": None}
        if more:
            token = str(offset + size)
            body["next"] = f"{base}?offset={token}&size={size}"
            body["offset"] = token
        return body

    # -- services --------------------------------------------------------------------------

    def services(self, doc: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [service_out(s, Index.service_id(s)) for s in Index(doc).services]

    def service(self, doc: Mapping[str, Any], ref: str) -> dict[str, Any]:
        found = Index(doc).service(ref)
        if found is None:
            raise NotFound()
        return service_out(found[1], Index.service_id(found[1]))

    def _check_service_name(self, index: Index, name: Any, position: int | None) -> None:
        found = index.service(str(name)) if isinstance(name, str) else None
        if found is not None and found[0] != position:
            raise UniqueViolation("name", name)

    def _check_id(self, args: Mapping[str, Any], expected: str, what: str) -> None:
        given = args.get("id")
        if given is not None and given != expected:
            raise SchemaViolation({"id": f"gatekeep derives a {what}'s id ({expected}); leave 'id' out"})

    def create_service(self, doc: dict[str, Any], args: Mapping[str, Any]) -> Outcome:
        table = service_in(args, None)
        index = Index(doc)
        self._check_service_name(index, table["name"], None)
        self._check_id(args, Index.service_id(table), "service")
        _services(doc).append(table)
        return Outcome(
            201, service_out(table, Index.service_id(table)), f"services[{len(doc['services']) - 1}]"
        )

    def update_service(
        self, doc: dict[str, Any], ref: str, args: Mapping[str, Any], *, replace: bool
    ) -> Outcome:
        index = Index(doc)
        found = index.service(ref)
        if found is None:
            if not replace:
                raise NotFound()
            if _UUID.match(ref) and "name" not in args:
                raise SchemaViolation({"name": "required field missing (gatekeep derives ids from names)"})
            given = {"id": ref, **args} if _UUID.match(ref) else {"name": ref, **args}
            return self.create_service(doc, given)
        position, current = found
        if replace:
            kept: dict[str, Any] = {k: current[k] for k in ("routes", "plugins") if k in current}
            base: dict[str, Any] = {"name": current["name"], **kept}
            table = service_in(
                {"name": current["name"], **args}, base if "url" in args or "host" in args else None
            )
            table.update(kept)
        else:
            table = service_in(args, current)
        self._check_service_name(index, table["name"], position)
        if table["name"] != current["name"]:
            for p in doc.get("plugins") or []:
                if isinstance(p, dict) and p.get("service") == current["name"]:
                    p["service"] = table["name"]
        doc["services"][position] = table
        return Outcome(200, service_out(table, Index.service_id(table)), f"services[{position}]")

    def delete_service(self, doc: dict[str, Any], ref: str) -> Outcome:
        found = Index(doc).service(ref)
        if found is None:
            return Outcome(204)
        position, service = found
        if service.get("routes"):
            raise ForeignKeyViolation(
                "an existing 'routes' entity references this 'services' entity", {"@referenced_by": "routes"}
            )
        del doc["services"][position]
        self._drop_plugins(doc, lambda p: p.get("service") == service.get("name"))
        return Outcome(204)

    @staticmethod
    def _drop_plugins(doc: dict[str, Any], scoped: Callable[[dict[str, Any]], bool]) -> None:
        if isinstance(doc.get("plugins"), list):
            doc["plugins"] = [p for p in doc["plugins"] if not (isinstance(p, dict) and scoped(p))]

    # -- routes ----------------------------------------------------------------------------

    def routes(self, doc: Mapping[str, Any], service_ref: str | None = None) -> list[dict[str, Any]]:
        index = Index(doc)
        position: int | None = None
        if service_ref is not None:
            found = index.service(service_ref)
            if found is None:
                raise NotFound()
            position = found[0]
        return [self._route_out(index, slot) for slot in index.routes if position in (None, slot.service)]

    @staticmethod
    def _route_out(index: Index, slot: RouteSlot) -> dict[str, Any]:
        return route_out(slot.route, slot.id, Index.service_id(index.doc["services"][slot.service]))

    def route(self, doc: Mapping[str, Any], ref: str, service_ref: str | None = None) -> dict[str, Any]:
        index = Index(doc)
        slot = self._find_route(index, ref, service_ref)
        if slot is None:
            raise NotFound()
        return self._route_out(index, slot)

    @staticmethod
    def _find_route(index: Index, ref: str, service_ref: str | None) -> RouteSlot | None:
        slot = index.route(ref)
        if slot is not None and service_ref is not None:
            found = index.service(service_ref)
            if found is None or found[0] != slot.service:
                return None
        return slot

    def _route_service(self, index: Index, args: Mapping[str, Any], service_ref: str | None) -> int:
        ref = service_ref or _ref(args.get("service"), "service")
        if ref is None:
            raise SchemaViolation(
                {"service": "required field missing (a gatekeep route belongs to a service)"}
            )
        found = index.service(ref)
        if found is None:
            if service_ref is not None:
                raise NotFound()
            raise ForeignKeyViolation(
                f"the foreign key '{{id=\"{ref}\"}}' does not reference an existing 'services' entity.",
                {"service": {"id": ref}},
            )
        return found[0]

    def _check_route_name(self, index: Index, name: Any, slot: RouteSlot | None) -> None:
        other = index.route_by_name(name) if isinstance(name, str) else None
        if other is not None and (slot is None or (other.service, other.index) != (slot.service, slot.index)):
            raise UniqueViolation("name", name)

    def create_route(
        self, doc: dict[str, Any], args: Mapping[str, Any], service_ref: str | None = None
    ) -> Outcome:
        index = Index(doc)
        position = self._route_service(index, args, service_ref)
        table = route_in(args, None)
        self._check_route_name(index, table.get("name"), None)
        routes = doc["services"][position].setdefault("routes", [])
        routes.append(table)
        after = Index(doc)
        slot = next(r for r in after.routes if r.service == position and r.index == len(routes) - 1)
        self._check_id(args, slot.id, "route")
        return Outcome(201, self._route_out(after, slot), slot.path)

    def update_route(
        self,
        doc: dict[str, Any],
        ref: str,
        args: Mapping[str, Any],
        *,
        replace: bool,
        service_ref: str | None = None,
    ) -> Outcome:
        index = Index(doc)
        slot = self._find_route(index, ref, service_ref)
        if slot is None:
            if not replace:
                raise NotFound()
            named = {"id": ref, **args} if _UUID.match(ref) else {"name": ref, **args}
            return self.create_route(doc, named, service_ref)
        kept = {"plugins": slot.route["plugins"]} if "plugins" in slot.route else {}
        base = {"name": slot.route["name"], **kept} if replace and slot.route.get("name") else dict(kept)
        table = route_in(args, base if replace else slot.route)
        self._check_route_name(index, table.get("name"), slot)
        old_name = slot.route.get("name")
        if old_name and table.get("name") != old_name:
            for p in doc.get("plugins") or []:
                if isinstance(p, dict) and p.get("route") == old_name:
                    p["route"] = table.get("name")
        target = slot.service
        if args.get("service") is not None or service_ref is not None:
            target = self._route_service(index, args, service_ref)
        routes = doc["services"][slot.service]["routes"]
        if target == slot.service:
            routes[slot.index] = table
            position = slot.index
        else:
            del routes[slot.index]
            moved = doc["services"][target].setdefault("routes", [])
            moved.append(table)
            position = len(moved) - 1
        after = Index(doc)
        new = next(r for r in after.routes if r.service == target and r.index == position)
        return Outcome(200, self._route_out(after, new), new.path)

    def delete_route(self, doc: dict[str, Any], ref: str, service_ref: str | None = None) -> Outcome:
        slot = self._find_route(Index(doc), ref, service_ref)
        if slot is None:
            return Outcome(204)
        del doc["services"][slot.service]["routes"][slot.index]
        name = slot.route.get("name")
        if name:
            self._drop_plugins(doc, lambda p: p.get("route") == name)
        return Outcome(204)

    # -- plugins ---------------------------------------------------------------------------

    def _config_class(self, name: Any) -> Any:
        if not isinstance(name, str) or name not in self.registry:
            return None
        try:
            return getattr(self.registry.load(name), "Config", None)
        except Exception:  # a broken third-party package: the validator names it
            return None

    def plugin_out(self, slot: PluginSlot) -> dict[str, Any]:
        p = slot.plugin
        config = p.get("config") if isinstance(p.get("config"), Mapping) else {}
        return {
            "id": slot.id,
            "name": p.get("name"),
            "created_at": None,
            "updated_at": None,
            "route": {"id": slot.route} if slot.route else None,
            "service": {"id": slot.service} if slot.service else None,
            "consumer": {"id": slot.consumer} if slot.consumer else None,
            "config": plugin_config_out(config or {}, self._config_class(p.get("name"))),
            "enabled": p.get("enabled", True),
            "protocols": ["grpc", "grpcs", "http", "https"],
            "instance_name": None,
            "tags": None,
        }

    def typed_plugin_args(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """A plugin's arguments from a form, its ``config`` typed by the plugin's Config class."""
        typed = dict(infer(args, {"enabled": bool, "tags": tuple[str, ...], "protocols": tuple[str, ...]}))
        cls = self._config_class(args.get("name"))
        config = args.get("config")
        if isinstance(config, Mapping):
            typed["config"] = infer(infer(config, _ALIAS_TYPES), cls) if cls is not None else dict(config)
        return typed

    def plugins(self, doc: Mapping[str, Any], scope: tuple[str, str] | None = None) -> list[dict[str, Any]]:
        index = Index(doc)
        wanted: tuple[str, str] | None = None
        if scope is not None:
            wanted = (scope[0], self._scope_id(index, scope[0], scope[1]))
        return [
            self.plugin_out(slot)
            for slot in index.plugins()
            if wanted is None or getattr(slot, wanted[0]) == wanted[1]
        ]

    @staticmethod
    def _scope_id(index: Index, kind: str, ref: str) -> str:
        if kind == "service":
            found = index.service(ref)
            if found is None:
                raise NotFound()
            return Index.service_id(found[1])
        if kind == "route":
            slot = index.route(ref)
            if slot is None:
                raise NotFound()
            return slot.id
        owner = index.consumer(ref)
        if owner is None:
            raise NotFound()
        return Index.consumer_id(owner[1])

    def plugin(self, doc: Mapping[str, Any], ref: str) -> dict[str, Any]:
        slot = Index(doc).plugin(ref)
        if slot is None:
            raise NotFound()
        return self.plugin_out(slot)

    def create_plugin(
        self, doc: dict[str, Any], args: Mapping[str, Any], scope: tuple[str, str] | None = None
    ) -> Outcome:
        index = Index(doc)
        name = args.get("name")
        if not isinstance(name, str) or not name:
            raise SchemaViolation({"name": "required field missing"})
        unknown = set(args) - _PLUGIN_FIELDS
        if unknown:
            raise SchemaViolation({k: "unknown field" for k in sorted(unknown)})
        refs = {k: _ref(args.get(k), k) for k in ("service", "route", "consumer")}
        if scope is not None:
            if refs[scope[0]] is not None and refs[scope[0]] != scope[1]:
                raise SchemaViolation({scope[0]: "differs from the one in the URL"})
            refs[scope[0]] = scope[1]
        service = route = consumer = None
        if refs["service"] is not None:
            service = index.service(refs["service"])
            if service is None:
                raise self._missing("service", refs["service"], scope)
        if refs["route"] is not None:
            route = index.route(refs["route"])
            if route is None:
                raise self._missing("route", refs["route"], scope)
        if refs["consumer"] is not None:
            consumer = index.consumer(refs["consumer"])
            if consumer is None:
                raise self._missing("consumer", refs["consumer"], scope)
        table: dict[str, Any] = {"name": name}
        config = args.get("config")
        if config is not None:
            if not isinstance(config, Mapping):
                raise SchemaViolation({"config": "expected a record"})
            cls = self._config_class(name)
            if cls is not None:  # a PATCH's form values, typed now that the name is known
                config = infer(infer(config, _ALIAS_TYPES), cls)
            table["config"] = _without_nulls(config)
        if args.get("enabled") is False:
            table["enabled"] = False
        ids = (
            Index.service_id(service[1]) if service else None,
            route.id if route else None,
            Index.consumer_id(consumer[1]) if consumer else None,
        )
        pid = index.plugin_id(name, *ids)
        if index.plugin(pid) is not None:
            raise UniqueViolation("name", name)
        self._check_id(args, pid, "plugin")
        scopes = [s for s in (service, route, consumer) if s is not None]
        if not scopes:
            container, path = _plugins_of(doc), "plugins"
        elif len(scopes) == 1 and service is not None:
            container = _plugins_of(service[1])
            path = f"services[{service[0]}].plugins"
        elif len(scopes) == 1 and route is not None:
            container, path = _plugins_of(route.route), f"{route.path}.plugins"
        elif len(scopes) == 1 and consumer is not None:
            container, path = _plugins_of(consumer[1]), f"consumers[{consumer[0]}].plugins"
        else:
            if route is not None and not route.route.get("name"):
                raise SchemaViolation({"route": "name the route to scope a plugin to it and another entity"})
            if service is not None:
                table["service"] = service[1]["name"]
            if route is not None:
                table["route"] = route.route["name"]
            if consumer is not None:
                table["consumer"] = consumer[1].get("username") or consumer[1].get("id")
            container, path = _plugins_of(doc), "plugins"
        container.append(table)
        slot = Index(doc).plugin(pid)
        assert slot is not None
        return Outcome(201, self.plugin_out(slot), f"{path}[{len(container) - 1}]")

    @staticmethod
    def _missing(kind: str, ref: str, scope: tuple[str, str] | None) -> Exception:
        if scope is not None and scope[0] == kind:
            return NotFound()
        return ForeignKeyViolation(
            f"the foreign key '{{id=\"{ref}\"}}' does not reference an existing '{kind}s' entity.",
            {kind: {"id": ref}},
        )

    def update_plugin(
        self, doc: dict[str, Any], ref: str, args: Mapping[str, Any], *, replace: bool
    ) -> Outcome:
        slot = Index(doc).plugin(ref)
        if slot is None:
            if not replace:
                raise NotFound()
            outcome = self.create_plugin(doc, args)
            if outcome.body["id"] != ref:
                raise SchemaViolation({"id": "gatekeep derives a plugin's id from its name and scope"})
            return Outcome(200, outcome.body, outcome.path)
        current = self.plugin_out(slot)
        merged: dict[str, Any] = {
            "name": slot.plugin.get("name"),
            "service": current["service"],
            "route": current["route"],
            "consumer": current["consumer"],
        }
        if not replace:
            merged["config"] = dict(slot.plugin.get("config") or {})
            if "enabled" in slot.plugin:
                merged["enabled"] = slot.plugin["enabled"]
        for key, value in args.items():
            if key == "config" and isinstance(value, Mapping) and not replace:
                merged["config"] = {**merged["config"], **value}
            elif key != "id":
                merged[key] = value
        del slot.container[slot.index]
        outcome = self.create_plugin(doc, merged)
        return Outcome(200, outcome.body, outcome.path)

    def delete_plugin(self, doc: dict[str, Any], ref: str) -> Outcome:
        slot = Index(doc).plugin(ref)
        if slot is not None:
            del slot.container[slot.index]
        return Outcome(204)

    # -- consumers -------------------------------------------------------------------------

    def consumers(self, doc: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [consumer_out(c, Index.consumer_id(c)) for c in Index(doc).consumers]

    def consumer(self, doc: Mapping[str, Any], ref: str) -> dict[str, Any]:
        found = Index(doc).consumer(ref)
        if found is None:
            raise NotFound()
        return consumer_out(found[1], Index.consumer_id(found[1]))

    @staticmethod
    def _check_consumer_unique(index: Index, table: Mapping[str, Any], position: int | None) -> None:
        for i, other in enumerate(index.doc.get("consumers") or []):
            if i == position or not isinstance(other, dict):
                continue
            for field in ("username", "custom_id", "id"):
                if table.get(field) and other.get(field) == table.get(field):
                    raise UniqueViolation(field, table[field])

    def create_consumer(self, doc: dict[str, Any], args: Mapping[str, Any]) -> Outcome:
        table = consumer_in(args, None)
        index = Index(doc)
        self._check_consumer_unique(index, table, None)
        consumers = doc.setdefault("consumers", [])
        consumers.append(table)
        return Outcome(201, consumer_out(table, Index.consumer_id(table)), f"consumers[{len(consumers) - 1}]")

    def update_consumer(
        self, doc: dict[str, Any], ref: str, args: Mapping[str, Any], *, replace: bool
    ) -> Outcome:
        index = Index(doc)
        found = index.consumer(ref)
        if found is None:
            if not replace:
                raise NotFound()
            given = {"id": ref, **args} if _UUID.match(ref) else {"username": ref, **args}
            return self.create_consumer(doc, given)
        position, current = found
        kept = {k: v for k, v in current.items() if k not in ("username", "custom_id", "groups")}
        table = consumer_in(args, kept if replace else current)
        self._check_consumer_unique(index, table, position)
        old = current.get("username")
        if old and table.get("username") != old:
            for p in doc.get("plugins") or []:
                if isinstance(p, dict) and p.get("consumer") == old:
                    p["consumer"] = table.get("username") or table.get("id")
        doc["consumers"][position] = table
        return Outcome(200, consumer_out(table, Index.consumer_id(table)), f"consumers[{position}]")

    def delete_consumer(self, doc: dict[str, Any], ref: str) -> Outcome:
        found = Index(doc).consumer(ref)
        if found is None:
            return Outcome(204)
        position, consumer = found
        del doc["consumers"][position]
        keys = {consumer.get("id"), consumer.get("username")} - {None}
        self._drop_plugins(doc, lambda p: p.get("consumer") in keys)
        return Outcome(204)

    # -- credentials -----------------------------------------------------------------------

    def _owner(self, doc: Mapping[str, Any], consumer_ref: str) -> tuple[int, dict[str, Any]]:
        found = Index(doc).consumer(consumer_ref)
        if found is None:
            raise NotFound()
        return found

    def credentials(self, doc: Mapping[str, Any], kind: str, consumer_ref: str) -> list[dict[str, Any]]:
        _, consumer = self._owner(doc, consumer_ref)
        cid = Index.consumer_id(consumer)
        field = CREDENTIALS[kind]
        return [
            credential_out(kind, c, Index.credential_id(kind, consumer, c), cid)
            for c in consumer.get(field) or []
            if isinstance(c, dict)
        ]

    def _find_credential(
        self, doc: Mapping[str, Any], kind: str, consumer_ref: str, ref: str
    ) -> tuple[int, dict[str, Any], int | None]:
        position, consumer = self._owner(doc, consumer_ref)
        for i, c in enumerate(consumer.get(CREDENTIALS[kind]) or []):
            if isinstance(c, dict) and ref in (Index.credential_id(kind, consumer, c), c.get("key")):
                return position, consumer, i
        return position, consumer, None

    def credential(self, doc: Mapping[str, Any], kind: str, consumer_ref: str, ref: str) -> dict[str, Any]:
        _, consumer, i = self._find_credential(doc, kind, consumer_ref, ref)
        if i is None:
            raise NotFound()
        c = consumer[CREDENTIALS[kind]][i]
        return credential_out(kind, c, Index.credential_id(kind, consumer, c), Index.consumer_id(consumer))

    @staticmethod
    def _check_key(doc: Mapping[str, Any], kind: str, table: Mapping[str, Any], mine: Any) -> None:
        for consumer in doc.get("consumers") or []:
            if not isinstance(consumer, dict):
                continue
            for c in consumer.get(CREDENTIALS[kind]) or []:
                if c is not mine and isinstance(c, dict) and c.get("key") == table.get("key"):
                    raise UniqueViolation("key", table.get("key"))

    def create_credential(
        self, doc: dict[str, Any], kind: str, consumer_ref: str, args: Mapping[str, Any]
    ) -> Outcome:
        position, consumer = self._owner(doc, consumer_ref)
        table = credential_in(kind, args, None)
        self._check_key(doc, kind, table, None)
        entries = consumer.setdefault(CREDENTIALS[kind], [])
        entries.append(table)
        crid = Index.credential_id(kind, consumer, table)
        body = credential_out(kind, table, crid, Index.consumer_id(consumer), reveal=True)
        return Outcome(201, body, f"consumers[{position}].{CREDENTIALS[kind]}[{len(entries) - 1}]")

    def update_credential(
        self,
        doc: dict[str, Any],
        kind: str,
        consumer_ref: str,
        ref: str,
        args: Mapping[str, Any],
        *,
        replace: bool,
    ) -> Outcome:
        position, consumer, i = self._find_credential(doc, kind, consumer_ref, ref)
        if i is None:
            if not replace:
                raise NotFound()
            if _UUID.match(ref):
                raise SchemaViolation(
                    {"id": "gatekeep derives a credential's id from its key; PUT it by key"}
                )
            given = {"key": ref, **args}
            outcome = self.create_credential(doc, kind, consumer_ref, given)
            return Outcome(200, outcome.body, outcome.path)
        entries = consumer[CREDENTIALS[kind]]
        current = entries[i]
        table = credential_in(kind, args, current if not replace else {})
        self._check_key(doc, kind, table, current)
        entries[i] = table
        body = credential_out(
            kind, table, Index.credential_id(kind, consumer, table), Index.consumer_id(consumer)
        )
        return Outcome(200, body, f"consumers[{position}].{CREDENTIALS[kind]}[{i}]")

    def delete_credential(self, doc: dict[str, Any], kind: str, consumer_ref: str, ref: str) -> Outcome:
        _, consumer, i = self._find_credential(doc, kind, consumer_ref, ref)
        if i is not None:
            del consumer[CREDENTIALS[kind]][i]
        return Outcome(204)


def _without_nulls(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _without_nulls(v) if isinstance(v, Mapping) else v for k, v in config.items() if v is not None}


def private_copy(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A deep, mutable copy of a document (the store's own stays untouched)."""
    return copy.deepcopy(dict(doc))
