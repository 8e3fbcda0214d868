"""The Admin API as an ASGI app: Kong's endpoints over a config store.

Theory of operation
-------------------
The store is the only place the config lives.  A read answers from what the
store holds now.  A write is read-modify-write with check-and-set::

    snapshot = await store.read()
    doc = private copy of snapshot.document (Kong's declarative shape rewritten to gatekeep's)
    outcome = the operation on doc          # Kong-level checks: 400, 404, 409
    validate(doc)                           # the whole config, as ``gatekeep check`` checks it
    await store.write(doc, snapshot.version)  # VersionConflict: someone else wrote; start again

so a write that would make the config invalid changes nothing, two admins
writing at once cannot lose each other's change, and every gateway process
(this one, other workers, other machines) applies the change through its
watch of the store.  ``refresh`` (the reloader of the gateway serving this
API, when there is one) is then called so that this process applies it at
once rather than at its next poll.

Answers are Kong's: JSON entities, ``{"data": [...], "next": ...}`` lists, and
Kong's error bodies (``_errors``); never a traceback.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from .._check import check_config
from .._errors import ConfigError, FieldError
from .._kong_format import from_kong
from .._registry import INSTALLED, PluginRegistry
from .._structure import Errors
from ..configsource import (
    ConfigDocument,
    ConfigSourceError,
    ConfigStore,
    Snapshot,
    VersionConflict,
)
from ._auth import Authenticator
from ._errors import AdminError, NotFound, SchemaViolation
from ._form import BadBody, decode_body, infer
from ._index import CREDENTIALS
from ._kong import route_form_types, service_form_types
from ._resources import Outcome, Resources, private_copy
from ._settings import AdminSettings

__all__ = ["AdminAPI"]

log = logging.getLogger("gatekeep.admin")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_SEGMENT = "([^/]+)"
_CONSUMER_FORM = {"tags": tuple[str, ...], "groups": tuple[str, ...]}


def _doc_of(snapshot_document: ConfigDocument | None) -> dict[str, Any]:
    """The stored document in gatekeep's shape (a decK document is rewritten; gatekeep's passes as is)."""
    if snapshot_document is None:
        return {}
    data = private_copy(snapshot_document.data)
    translated = from_kong(data, Errors(), [])
    return translated if isinstance(translated, dict) else data


def _tokens(path: str) -> list[str | int]:
    return [int(i) if i else n for n, i in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path)]


def _nest(fields: dict[str, Any], tokens: list[str | int], message: str) -> None:
    node: Any = fields
    for position, token in enumerate(tokens):
        last = position == len(tokens) - 1
        following: Any = message if last else ([] if isinstance(tokens[position + 1], int) else {})
        if isinstance(token, int) and isinstance(node, list):
            while len(node) <= token:
                node.append(None)
            if last or node[token] is None or isinstance(node[token], str):
                node[token] = following
            node = node[token]
        elif isinstance(token, str) and isinstance(node, dict):
            if last or token not in node or isinstance(node[token], str):
                node[token] = following
            node = node[token]
        else:
            return


def violation(errors: list[FieldError], where: str | None) -> SchemaViolation:
    """A refused config as Kong's schema violation of the entity written at ``where``."""
    fields: dict[str, Any] = {}
    for error in errors:
        if where and error.path == where:
            fields.setdefault("@entity", []).append(error.message)
        elif where and error.path.startswith((where + ".", where + "[")):
            _nest(fields, _tokens(error.path[len(where) + 1 :]), error.message)
        else:
            fields.setdefault("@entity", []).append(str(error))
    return SchemaViolation(fields, [{"path": e.path, "message": e.message} for e in errors])


def _validator(registry: PluginRegistry) -> Callable[[Mapping[str, Any]], object]:
    def validate(data: Mapping[str, Any]) -> object:
        return check_config(data, plugins=tuple(registry.given.values()))

    return validate


class AdminAPI:
    """Kong's Admin API (a subset) over ``store``; see docs/admin-api.md.

    Args:
        store: where the config lives (``gatekeep.configsource``).
        registry: the plugins the config may name (to type form values and check configs).
        settings: the ``[admin]`` table (token, body limit).
        status: the serving gateway's ``config_status()``, for ``/status``.
        explain: answers ``/explain`` from the raw query string (``Explainer`` of
            the serving gateway); without it ``/explain`` is a 501.
        refresh: called after each write so this process applies it at once.
        validate: checks a whole document, raising ``ConfigError``; by default
            ``check_config`` (``gatekeep check``: load, compile, bind every plugin).
    """

    def __init__(
        self,
        store: ConfigStore,
        *,
        registry: PluginRegistry = INSTALLED,
        settings: AdminSettings | None = None,
        status: Callable[[], Mapping[str, Any]] | None = None,
        refresh: Callable[[], Awaitable[Any]] | None = None,
        validate: Callable[[Mapping[str, Any]], object] | None = None,
        max_attempts: int = 16,
        explain: Callable[[bytes], Mapping[str, Any]] | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings or AdminSettings()
        self.status = status
        self.refresh = refresh
        self.validate = validate or _validator(registry)
        self.max_attempts = max_attempts
        self.explain = explain
        self.resources = Resources(registry)
        self.auth = Authenticator(self.settings)
        self.node_id = str(uuid.uuid4())
        self.writes = 0
        self.conflicts = 0
        self._routes = self._table()

    # -- the endpoint table --------------------------------------------------------------

    def _table(self) -> list[tuple[re.Pattern[str], Mapping[str, Callable[..., Awaitable[Any]]]]]:
        r = self.resources
        s = _SEGMENT

        def collection(
            listing: Callable[..., list[Any]], create: Callable[..., Outcome], form: Any
        ) -> dict[str, Callable[..., Awaitable[Any]]]:
            async def get(req: _Request, *refs: str) -> Any:
                return req.paged(listing(await self._read(), *refs))

            async def post(req: _Request, *refs: str) -> Any:
                args = form(req.args) if callable(form) else infer(req.args, form)
                return await self._write(lambda doc: create(doc, *refs, args))

            return {"GET": get, "POST": post}

        def item(
            read: Callable[..., Any],
            update: Callable[..., Outcome],
            delete: Callable[..., Outcome],
            form: Any,
        ) -> dict[str, Callable[..., Awaitable[Any]]]:
            async def get(req: _Request, *refs: str) -> Any:
                return read(await self._read(), *refs)

            def changer(replace: bool) -> Callable[..., Awaitable[Any]]:
                async def change(req: _Request, *refs: str) -> Any:
                    args = form(req.args) if callable(form) else infer(req.args, form)
                    outcome = await self._write(lambda doc: update(doc, *refs, args, replace=replace))
                    # Kong's PUT is an upsert answered 200 whether it created or replaced.
                    return Outcome(200, outcome.body, outcome.path)

                return change

            async def remove(req: _Request, *refs: str) -> Any:
                return await self._write(lambda doc: delete(doc, *refs))

            return {"GET": get, "PATCH": changer(False), "PUT": changer(True), "DELETE": remove}

        services, routes = service_form_types(), route_form_types()
        plugin_form = r.typed_plugin_args
        table: list[tuple[str, Mapping[str, Callable[..., Awaitable[Any]]]]] = [
            ("/", {"GET": self._root}),
            ("/status", {"GET": self._status}),
            ("/explain", {"GET": self._explain}),
            ("/config", {"POST": self._post_config}),
            ("/services", collection(r.services, r.create_service, services)),
            (f"/services/{s}", item(r.service, r.update_service, r.delete_service, services)),
            (
                f"/services/{s}/routes",
                collection(r.routes, lambda doc, ref, args: r.create_route(doc, args, ref), routes),
            ),
            (
                f"/services/{s}/routes/{s}",
                item(
                    lambda doc, sref, ref: r.route(doc, ref, sref),
                    lambda doc, sref, ref, args, replace: r.update_route(
                        doc, ref, args, replace=replace, service_ref=sref
                    ),
                    lambda doc, sref, ref: r.delete_route(doc, ref, sref),
                    routes,
                ),
            ),
            (
                f"/services/{s}/plugins",
                collection(
                    lambda doc, ref: r.plugins(doc, ("service", ref)),
                    lambda doc, ref, args: r.create_plugin(doc, args, ("service", ref)),
                    plugin_form,
                ),
            ),
            ("/routes", collection(r.routes, lambda doc, args: r.create_route(doc, args), routes)),
            (
                f"/routes/{s}",
                item(
                    r.route,
                    lambda doc, ref, args, replace: r.update_route(doc, ref, args, replace=replace),
                    r.delete_route,
                    routes,
                ),
            ),
            (
                f"/routes/{s}/plugins",
                collection(
                    lambda doc, ref: r.plugins(doc, ("route", ref)),
                    lambda doc, ref, args: r.create_plugin(doc, args, ("route", ref)),
                    plugin_form,
                ),
            ),
            ("/plugins", collection(r.plugins, lambda doc, args: r.create_plugin(doc, args), plugin_form)),
            ("/plugins/enabled", {"GET": self._enabled_plugins}),
            (f"/plugins/{s}", item(r.plugin, r.update_plugin, r.delete_plugin, plugin_form)),
            ("/consumers", collection(r.consumers, r.create_consumer, _CONSUMER_FORM)),
            (f"/consumers/{s}", item(r.consumer, r.update_consumer, r.delete_consumer, _CONSUMER_FORM)),
            (
                f"/consumers/{s}/plugins",
                collection(
                    lambda doc, ref: r.plugins(doc, ("consumer", ref)),
                    lambda doc, ref, args: r.create_plugin(doc, args, ("consumer", ref)),
                    plugin_form,
                ),
            ),
        ]
        for kind in CREDENTIALS:
            table.append(
                (
                    f"/consumers/{s}/{kind}",
                    collection(
                        lambda doc, cref, kind=kind: r.credentials(doc, kind, cref),
                        lambda doc, cref, args, kind=kind: r.create_credential(doc, kind, cref, args),
                        {"tags": tuple[str, ...]},
                    ),
                )
            )
            table.append(
                (
                    f"/consumers/{s}/{kind}/{s}",
                    item(
                        lambda doc, cref, ref, kind=kind: r.credential(doc, kind, cref, ref),
                        lambda doc, cref, ref, args, replace, kind=kind: r.update_credential(
                            doc, kind, cref, ref, args, replace=replace
                        ),
                        lambda doc, cref, ref, kind=kind: r.delete_credential(doc, kind, cref, ref),
                        {"tags": tuple[str, ...]},
                    ),
                )
            )
        return [
            (re.compile(f"^{pattern}/?$" if pattern != "/" else "^/$"), methods) for pattern, methods in table
        ]

    # -- store access --------------------------------------------------------------------

    async def _snapshot(self) -> Snapshot:
        snapshot = await self.store.read()
        if snapshot.error is not None:
            # Never answer from, nor write over, a config that cannot be read (a half-written file).
            raise AdminError(f"the stored config cannot be read: {snapshot.error}", 503)
        return snapshot

    async def _read(self) -> dict[str, Any]:
        return _doc_of((await self._snapshot()).document)

    async def _write(self, operation: Callable[[dict[str, Any]], Outcome]) -> Outcome:
        for _ in range(self.max_attempts):
            snapshot = await self._snapshot()
            doc = _doc_of(snapshot.document)
            outcome = operation(doc)
            try:
                self.validate(doc)
            except ConfigError as exc:
                raise violation(exc.errors, outcome.path) from None
            try:
                await self.store.write(doc, snapshot.version)
            except VersionConflict:
                self.conflicts += 1
                continue
            self.writes += 1
            if self.refresh is not None:
                try:
                    await self.refresh()
                except Exception:  # the watch applies it anyway; this only hurries it
                    log.warning("applying the Admin API's write at once failed", exc_info=True)
            return outcome
        raise AdminError("the config kept changing while this write was tried; try again", 409)

    # -- endpoints of their own ----------------------------------------------------------

    async def _root(self, req: _Request) -> Any:
        doc = await self._read()
        available: dict[str, Any] = {}
        for name in sorted(self.registry.names()):
            try:
                cls = self.registry.load(name)
            except Exception:  # a broken package is not this page's business
                continue
            available[name] = {
                "priority": getattr(cls, "priority", None),
                "version": getattr(cls, "version", None),
            }
        enabled = sorted({p["name"] for p in self.resources.plugins(doc) if p.get("name")})
        return {
            "version": _version(),
            "tagline": "Welcome to gatekeep",
            "hostname": socket.gethostname(),
            "node_id": self.node_id,
            "pid": os.getpid(),
            "configuration": {
                "database": "off",
                "config_store": self.store.name,
                "admin_listen": [self.settings.listen],
                "role": "traditional",
            },
            "plugins": {"available_on_server": available, "enabled_in_cluster": enabled},
        }

    async def _status(self, req: _Request) -> Any:
        reachable = True
        stored_hash = None
        try:
            snapshot = await self.store.read()
            stored_hash = snapshot.document.hash if snapshot.document is not None else None
        except ConfigSourceError:
            reachable = False
        active = dict(self.status()) if self.status is not None else {}
        return {
            "database": {"reachable": reachable},
            "configuration_hash": active.get("config_hash", stored_hash),
            "stored_configuration_hash": stored_hash,
            "config": active,
            "server": {"admin_writes": self.writes, "admin_write_conflicts": self.conflicts},
        }

    async def _explain(self, req: _Request) -> Any:
        if self.explain is None:
            raise AdminError("no gateway serves this Admin API: there is nothing to explain", 501)
        return self.explain(req.raw_query)

    async def _enabled_plugins(self, req: _Request) -> Any:
        return {"enabled_plugins": sorted(self.registry.names())}

    async def _post_config(self, req: _Request) -> Any:
        """DB-less ``POST /config``: a whole declarative document replaces the config."""
        data: Any = req.args
        if isinstance(req.args.get("config"), str):
            from ..configsource import parse_config_bytes

            text = req.args["config"].encode()
            try:
                data = parse_config_bytes(
                    text, "json" if text.lstrip().startswith(b"{") else "yaml", "config"
                )
            except ConfigError as exc:
                raise SchemaViolation({"config": exc.errors[0].message}) from None
        if not isinstance(data, dict) or not data:
            raise SchemaViolation({"config": "required field missing"})
        snapshot = await self._snapshot()
        if req.query.get("check_hash") in ("1", "true") and snapshot.document is not None:
            if ConfigDocument.of(data).hash == snapshot.document.hash:
                return Outcome(304)
        try:
            self.validate(data)
        except ConfigError as exc:
            problem = violation(exc.errors, None)
            problem.message = "declarative config is invalid: " + problem.message
            raise problem from None
        try:
            await self.store.write(data, snapshot.version)
        except VersionConflict:
            raise AdminError("the config changed during this write; try again", 409) from None
        if self.refresh is not None:
            try:
                await self.refresh()
            except Exception:
                log.warning("applying POST /config at once failed", exc_info=True)
        doc = _doc_of(ConfigDocument.of(data))
        r = self.resources
        return Outcome(
            201,
            {
                "services": r.services(doc),
                "routes": r.routes(doc),
                "plugins": r.plugins(doc),
                "consumers": r.consumers(doc),
            },
        )

    # -- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        status, body = await self._answer(scope, receive)
        await _respond(send, status, body)

    async def _answer(self, scope: Scope, receive: Receive) -> tuple[int, Any]:
        try:
            self.auth.check(scope)
            path: str = scope["path"]
            for pattern, methods in self._routes:
                match = pattern.match(path)
                if match is None:
                    continue
                handler = methods.get(scope["method"])
                if handler is None:
                    raise AdminError("Method not allowed", 405)
                req = await _Request.read(scope, receive, self.settings.max_body_bytes)
                result = await handler(req, *match.groups())
                if isinstance(result, Outcome):
                    return result.status, result.body
                return 200, result
            raise NotFound()
        except AdminError as exc:
            return exc.status, exc.body()
        except BadBody as exc:
            return 400, {"message": str(exc)}
        except ConfigSourceError as exc:
            log.warning("Admin API: the config store failed: %s", exc)
            return 503, {"message": f"the config store is unavailable: {exc}"}
        except Exception:  # a bug: logged with its traceback, never sent
            log.exception("Admin API: %s %s failed", scope.get("method"), scope.get("path"))
            return 500, {"message": "An unexpected error occurred"}


class _Request:
    """What a handler needs of a request: its query and its decoded body."""

    def __init__(self, query: Mapping[str, str], args: dict[str, Any]) -> None:
        self.query = query
        self.args = args
        self.base = ""
        self.raw_query = b""

    @classmethod
    async def read(cls, scope: Scope, receive: Receive, limit: int) -> _Request:
        from urllib.parse import parse_qsl

        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise AdminError(f"request body larger than {limit} bytes", 413)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        args = decode_body(headers.get("content-type", ""), b"".join(chunks))
        req = cls(query, args)
        req.base = scope["path"]
        req.raw_query = scope.get("query_string", b"")
        return req

    def paged(self, items: list[Any]) -> dict[str, Any]:
        raw_size, raw_offset = self.query.get("size", "100"), self.query.get("offset", "0")
        if not raw_size.isdigit() or not 0 < int(raw_size) <= 1000:
            raise AdminError("size must be an integer between 1 and 1000")
        if not raw_offset.isdigit():
            raise AdminError(f"'{raw_offset}' is not a valid offset: bad base64 encoding")
        return Resources.page(items, self.base, int(raw_size), int(raw_offset))


def _version() -> str:
    try:
        return importlib.metadata.version("gatekeep")
    except importlib.metadata.PackageNotFoundError:  # a source tree not installed
        return "0"


async def _respond(send: Send, status: int, body: Any) -> None:
    headers = [(b"server", f"gatekeep/{_version()}".encode())]
    payload = b""
    if status not in (204, 304):
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str).encode()
        headers.append((b"content-type", b"application/json; charset=utf-8"))
    headers.append((b"content-length", str(len(payload)).encode()))
    if status == 401:
        headers.append((b"www-authenticate", b'Token realm="gatekeep-admin"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
