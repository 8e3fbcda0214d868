"""Where each Kong entity lives in a gatekeep config document, and its id.

The store holds gatekeep's TOML-shaped document: routes and plugins nest in
their service, credentials in their consumer.  Kong's Admin API addresses
entities by UUID, so each gets one, without the document having to carry it:

- a service: derived from its name (``uuid5``), which is unique;
- a route: from its name, or for an unnamed route from its service and
  position (name routes for ids that survive deleting a route before them);
- a plugin: from its name and scope (service, route, consumer), unique per scope;
- a consumer or a credential: its ``id`` field (the Admin API stores a
  ``uuid4`` there on create), else derived from its username/custom_id or key.

Derived ids are the same in every gateway process and after every restart.
``Index`` is built from a document once per request; it never changes the document.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

__all__ = ["CREDENTIALS", "Index", "PluginSlot", "RouteSlot"]

_NAMESPACE = uuid.UUID("1b5c3f0e-7d5e-5e0c-9a55-6761746b6565")

# Kong's credential endpoint -> the consumer field gatekeep's plugins declare.
CREDENTIALS: Mapping[str, str] = {"jwt": "jwt_secrets", "key-auth": "keyauth_credentials"}


def derived(kind: str, key: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{kind}:{key}"))


def _list(container: Mapping[str, Any], key: str) -> list[Any]:
    value = container.get(key)
    return value if isinstance(value, list) else []


@attrs.frozen
class RouteSlot:
    service: int
    index: int
    id: str
    route: dict[str, Any]

    @property
    def path(self) -> str:
        return f"services[{self.service}].routes[{self.index}]"


@attrs.frozen
class PluginSlot:
    """A plugin, wherever it is written: top level, or nested in a service, route or consumer."""

    container: list[Any]
    index: int
    path: str
    id: str
    plugin: dict[str, Any]
    service: str | None
    route: str | None
    consumer: str | None


class Index:
    """Ids and places of the entities of ``doc`` (a gatekeep config as plain data)."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.doc = doc
        self.services = [s for s in _list(doc, "services") if isinstance(s, dict)]
        self.routes: list[RouteSlot] = []
        for si, service in enumerate(_list(doc, "services")):
            if not isinstance(service, dict):
                continue
            for ri, route in enumerate(_list(service, "routes")):
                if isinstance(route, dict):
                    self.routes.append(RouteSlot(si, ri, self._route_id(service, ri, route), route))
        self.consumers = [c for c in _list(doc, "consumers") if isinstance(c, dict)]

    # -- services ---------------------------------------------------------------

    @staticmethod
    def service_id(service: Mapping[str, Any]) -> str:
        return derived("service", str(service.get("name")))

    def service(self, ref: str) -> tuple[int, dict[str, Any]] | None:
        """The service named ``ref`` or with id ``ref``: its position and table."""
        for i, s in enumerate(_list(self.doc, "services")):
            if isinstance(s, dict) and (s.get("name") == ref or self.service_id(s) == ref):
                return i, s
        return None

    # -- routes -----------------------------------------------------------------

    @staticmethod
    def _route_id(service: Mapping[str, Any], index: int, route: Mapping[str, Any]) -> str:
        name = route.get("name")
        if isinstance(name, str) and name:
            return derived("route", name)
        return derived("route", f"{service.get('name')}#{index}")

    def route(self, ref: str) -> RouteSlot | None:
        for slot in self.routes:
            if slot.route.get("name") == ref or slot.id == ref:
                return slot
        return None

    def route_by_name(self, name: str | None) -> RouteSlot | None:
        return next((r for r in self.routes if r.route.get("name") == name), None) if name else None

    # -- consumers --------------------------------------------------------------

    @staticmethod
    def consumer_id(consumer: Mapping[str, Any]) -> str:
        given = consumer.get("id")
        if isinstance(given, str) and given:
            return given
        return derived("consumer", str(consumer.get("username") or consumer.get("custom_id")))

    def consumer(self, ref: str) -> tuple[int, dict[str, Any]] | None:
        for i, c in enumerate(_list(self.doc, "consumers")):
            if isinstance(c, dict) and ref in (self.consumer_id(c), c.get("username")):
                return i, c
        return None

    def consumer_by_key(self, key: str | None) -> dict[str, Any] | None:
        """A plugin's ``consumer`` reference (id or username, as the config checks it)."""
        if not key:
            return None
        return next((c for c in self.consumers if key in (c.get("id"), c.get("username"))), None)

    @staticmethod
    def credential_id(kind: str, consumer: Mapping[str, Any], credential: Mapping[str, Any]) -> str:
        given = credential.get("id")
        if isinstance(given, str) and given:
            return given
        return derived(kind, f"{Index.consumer_id(consumer)}:{credential.get('key')}")

    # -- plugins ----------------------------------------------------------------

    def plugin_id(self, name: str, service: str | None, route: str | None, consumer: str | None) -> str:
        return derived("plugin", f"{name}|{service or ''}|{route or ''}|{consumer or ''}")

    def plugins(self) -> Iterator[PluginSlot]:
        """Every plugin of the document, scope ids resolved (ids of its service, route, consumer)."""
        top = _list(self.doc, "plugins")
        for pi, p in enumerate(top):
            if not isinstance(p, dict):
                continue
            found = self.service(str(p["service"])) if p.get("service") else None
            service = self.service_id(found[1]) if found else None
            slot = self.route_by_name(p.get("route"))
            route = slot.id if slot else None
            owner = self.consumer_by_key(p.get("consumer"))
            consumer = self.consumer_id(owner) if owner else None
            yield self._slot(top, pi, f"plugins[{pi}]", p, service, route, consumer)
        for si, s in enumerate(_list(self.doc, "services")):
            if not isinstance(s, dict):
                continue
            nested = _list(s, "plugins")
            for pi, p in enumerate(nested):
                if isinstance(p, dict):
                    yield self._slot(
                        nested, pi, f"services[{si}].plugins[{pi}]", p, self.service_id(s), None, None
                    )
        for slot in self.routes:
            nested = _list(slot.route, "plugins")
            for pi, p in enumerate(nested):
                if isinstance(p, dict):
                    yield self._slot(nested, pi, f"{slot.path}.plugins[{pi}]", p, None, slot.id, None)
        for ci, c in enumerate(_list(self.doc, "consumers")):
            if not isinstance(c, dict):
                continue
            nested = _list(c, "plugins")
            for pi, p in enumerate(nested):
                if isinstance(p, dict):
                    yield self._slot(
                        nested, pi, f"consumers[{ci}].plugins[{pi}]", p, None, None, self.consumer_id(c)
                    )

    def _slot(
        self,
        container: list[Any],
        index: int,
        path: str,
        plugin: dict[str, Any],
        service: str | None,
        route: str | None,
        consumer: str | None,
    ) -> PluginSlot:
        pid = self.plugin_id(str(plugin.get("name")), service, route, consumer)
        return PluginSlot(container, index, path, pid, plugin, service, route, consumer)

    def plugin(self, ref: str) -> PluginSlot | None:
        return next((p for p in self.plugins() if p.id == ref), None)
