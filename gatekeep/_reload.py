"""Reloading a running gateway: validate whole, compile, swap atomically, retire the old.

Theory of operation
-------------------
``Reloader.apply(source)`` runs one reload, one at a time (a lock):

1. **validate** -- ``load_config`` (every error with its path, Kong's
   declarative spellings included), ``compile_config(previous=...)`` and each
   plugin's ``bind``: exactly what ``gatekeep check`` runs.  Any error
   refuses the whole config; the running one keeps serving and the error is
   kept for ``status()``.
2. **carry over** (the compile step): a service whose config is unchanged
   keeps its ``Service`` -- its guard with breakers, health, balancer state
   (EWMA, counters) -- and its discovery watcher; the pool is kept when its
   settings are; a plugin entry that is unchanged hands its state to the new
   instance (``carry_over``: rate-limiting's local buckets).
3. **start** what is new on the gateway's lifespan task group: discovery
   watchers, plugins (``start``), health checks.  A failure stops what was
   started and refuses the config.
4. **swap** -- one synchronous ``Gateway._install``: a request that started
   before it finishes on the objects it already holds (its route, service
   and chain); every request after it sees only the new config.
5. **retire** what the new config dropped: health checks and discovery
   watchers of removed services stop now; their pooled connections close
   (idle ones now, busy ones when their response ends); a replaced pool
   closes the same way; dropped plugins are stopped after ``drain`` seconds
   (requests in flight may still run their phases), or when the gateway stops.

With a ``ConfigStore`` the reloader also watches it (``watch``): each new
version is applied when its hash differs from the running one; a version
whose bytes do not parse (a half-written file) or whose config is refused
leaves the running config in place.  ``SIGHUP`` (``gatekeep serve``) reads
the store again and reloads even when the hash is unchanged (secrets in
``{env://}`` or ``{file://}`` references may have changed).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import anyio
import attrs
from anyio.abc import TaskGroup

from ._compile import Compiled, bind_filters, compile_config
from ._config import GatewayConfig, load_config
from ._errors import ConfigError, FieldError, GatekeepError
from ._hangup import on_hangup
from ._plugin_context import PluginContext
from ._registry import PluginRegistry
from .configsource import ConfigDocument, ConfigStore, Snapshot, format_of, parse_config_bytes
from .discovery import CompositeDiscovery

__all__ = ["ConfigStatus", "Reloader", "initial_document"]

log = logging.getLogger("gatekeep.config")


class Reloadable(Protocol):
    """What a reload reads and replaces of a ``Gateway`` (its swap point is ``_install``)."""

    compiled: Compiled
    plugin_context: PluginContext
    plugins_registry: PluginRegistry
    _compile_options: dict[str, Any]
    _started: list[Any]

    @property
    def task_group(self) -> TaskGroup | None: ...

    def _install(self, compiled: Compiled) -> None: ...


@attrs.define
class ConfigStatus:
    """What config a gateway runs, for ``/status`` and operators.

    Attributes:
        source: where the config comes from (``file:/...``, ``consul+http://.../key``, ``static``).
        hash: sha256 of the running config's canonical JSON (the same in every process).
        version: the store's version of it (``""`` without a store).
        loaded_at: when it was applied (Unix time).
        reloads: configs applied since the start.
        refused: configs refused since the start.
        last_error: the last refusal (``None`` once a later config was applied).
    """

    source: str
    hash: str
    version: str = ""
    loaded_at: float = attrs.field(factory=time.time)
    reloads: int = 0
    refused: int = 0
    last_error: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "config_hash": self.hash,
            "loaded_at": self.loaded_at,
            "loaded_at_iso": datetime.fromtimestamp(self.loaded_at, UTC).isoformat(),
            "version": self.version,
            "source": self.source,
            "reloads": self.reloads,
            "refused": self.refused,
            "last_error": self.last_error,
        }


def initial_document(config: Any) -> ConfigDocument | None:
    """The document of a gateway's first config (a dict, or a file path); ``None`` otherwise."""
    try:
        if isinstance(config, Mapping):
            return ConfigDocument.of(config)
        if isinstance(config, str | Path):
            path = Path(config)
            return ConfigDocument.of(parse_config_bytes(path.read_bytes(), format_of(path.name), str(path)))
    except (ConfigError, OSError):
        return None
    return None


def _hash_of(config: Any, document: ConfigDocument | None) -> str:
    if document is not None:
        return document.hash
    # A GatewayConfig object: no canonical data form; its repr is stable within one version.
    return hashlib.sha256(repr(config).encode()).hexdigest()


class Reloader:
    """Reloads a ``Gateway``: on ``apply``, and on every change of its ``ConfigStore``.

    Args:
        gateway: the gateway it reloads (``Gateway`` makes its own: ``gateway.reloads``).
        config: the gateway's first config, as given (for its hash).
        store: where the config lives; watched while the gateway runs.
        sighup: reload on SIGHUP (``gatekeep serve``; main thread only).
        drain: seconds dropped plugins keep running for requests in flight
            (default: the config's ``[server] drain_timeout``).
    """

    def __init__(
        self,
        gateway: Reloadable,
        config: Any,
        store: ConfigStore | None = None,
        *,
        sighup: bool = False,
        drain: float | None = None,
    ) -> None:
        self.gateway = gateway
        self.store = store
        self.sighup = sighup
        self.drain = drain
        document = initial_document(config)
        self._status = ConfigStatus(
            source=store.name if store is not None else "static", hash=_hash_of(config, document)
        )
        self._lock = anyio.Lock()
        self._scope: anyio.CancelScope | None = None
        self._retiring: list[Callable[[], Any]] = []
        self._unhang: Callable[[], None] | None = None

    # -- status -------------------------------------------------------------

    @property
    def hash(self) -> str:
        return self._status.hash

    def status(self) -> dict[str, Any]:
        """The running config's hash, when it was loaded, the last refusal (JSON-ready)."""
        return self._status.as_dict()

    # -- lifespan -------------------------------------------------------------

    async def start(self, task_group: TaskGroup) -> None:
        """Catch up with the store, then watch it (the gateway's lifespan calls this)."""
        if self.store is None:
            return
        self._scope = anyio.CancelScope()
        try:
            snapshot = await self.store.read()
        except GatekeepError as exc:
            log.warning("config store %s cannot be read (%s); serving the config given", self.store.name, exc)
            snapshot = Snapshot(None, "0")
        else:
            await self._on_snapshot(snapshot)
        task_group.start_soon(self._watch, snapshot.version, name="gatekeep config watch")
        if self.sighup:
            self._install_sighup()

    async def stop(self) -> None:
        """Stop watching; stop what earlier reloads retired but did not stop yet; close the store."""
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None
        if self._unhang is not None:
            self._unhang()
            self._unhang = None
        pending, self._retiring = self._retiring, []
        with anyio.CancelScope(shield=True):
            for retire in pending:
                await retire()
            if self.store is not None:
                await self.store.aclose()  # its connections (a Consul agent's)

    def _install_sighup(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            self._unhang = on_hangup(asyncio.get_running_loop(), self.hangup)
        except (RuntimeError, NotImplementedError, ValueError):
            return

    def hangup(self) -> None:
        """Read the store again and reload, even if unchanged (SIGHUP)."""
        task_group = self.gateway.task_group
        if task_group is not None and self.store is not None:
            log.info("SIGHUP: reloading the config from %s", self.store.name)
            task_group.start_soon(self.refresh, True, name="gatekeep config SIGHUP")

    async def _watch(self, after: str) -> None:
        assert self.store is not None
        scope = self._scope
        if scope is None:
            return
        with scope:
            async for snapshot in self.store.watch(after):
                await self._on_snapshot(snapshot)

    # -- applying ---------------------------------------------------------------

    async def refresh(self, force: bool = False) -> bool:
        """Read the store now and apply what it holds; whether a new config was applied.

        ``force`` reloads an unchanged config too (SIGHUP).
        """
        if self.store is None:
            return False
        try:
            snapshot = await self.store.read()
        except GatekeepError as exc:
            self._refused(str(exc), [])
            return False
        return await self._on_snapshot(snapshot, force=force)

    async def _on_snapshot(self, snapshot: Snapshot, *, force: bool = False) -> bool:
        document = snapshot.document
        if snapshot.error is not None:
            message = f"{self._status.source}: version {snapshot.version} does not parse"
            self._refused(message, snapshot.error.errors)
            return False
        if document is None:
            if snapshot.version != "0":
                log.warning("config store %s holds no config; keeping the running one", self._status.source)
            return False
        if document.hash == self._status.hash and not force:
            self._status.version = snapshot.version
            return False
        try:
            await self.apply(document, version=snapshot.version)
        except ConfigError:
            return False  # recorded and logged by apply
        except Exception as exc:  # a plugin's bug must not end the watch (nor the gateway's task group)
            log.exception("reloading the config failed")
            self._refused(f"reloading the config failed: {exc!r}", [])
            return False
        return True

    async def apply(
        self, source: Mapping[str, Any] | ConfigDocument | GatewayConfig | str | Path, *, version: str = ""
    ) -> None:
        """Validate ``source`` whole, compile it, start what is new, swap, retire the old.

        Raises:
            ConfigError: the config was refused (every error with its path); the
                running config keeps serving.
        """
        document = source if isinstance(source, ConfigDocument) else initial_document(source)
        data: Any = source.data if isinstance(source, ConfigDocument) else source
        async with self._lock:
            gateway = self.gateway
            old = gateway.compiled
            try:
                config = load_config(data, plugins=gateway.plugins_registry)
                compiled = compile_config(config, previous=old, **gateway._compile_options)
                context = bind_filters(compiled, gateway, task_group=lambda: gateway.task_group)
            except ConfigError as exc:
                self._refused("the new config was refused", exc.errors)
                raise
            started = await self._start_new(old, compiled)
            gateway._install(compiled)
            gateway.plugin_context = context
            self._retire(old, compiled, started)
            self._status = attrs.evolve(
                self._status,
                hash=_hash_of(data, document),
                version=version,
                loaded_at=time.time(),
                reloads=self._status.reloads + 1,
                last_error=None,
            )
        log.info("config %s applied (version %s)", self._status.hash[:12], version or "-")

    def _refused(self, message: str, errors: list[FieldError]) -> None:
        self._status.refused += 1
        self._status.last_error = {
            "at": time.time(),
            "message": message,
            "errors": [{"path": e.path, "message": e.message} for e in errors],
        }
        lines = "".join(f"\n  {e}" for e in errors)
        log.error("%s; the running config (%s) keeps serving:%s", message, self._status.hash[:12], lines)

    async def _start_new(self, old: Compiled, new: Compiled) -> list[Any]:
        """Start the new config's new parts; the filters now running.  Undo and refuse on failure."""
        gateway = self.gateway
        task_group = gateway.task_group
        running = [f for f in gateway._started if any(f is g for g in new.filters)]
        if task_group is None:
            return running
        undo: list[Callable[[], Any]] = []
        try:
            discovery = new.discovery
            if discovery is not old.discovery:
                if isinstance(discovery, CompositeDiscovery):
                    previous = old.discovery
                    if isinstance(previous, CompositeDiscovery):
                        discovery.adopt(previous)

                        async def give_back(new: CompositeDiscovery = discovery) -> None:
                            previous.adopt(new)  # the shared watchers go on for the running config
                            await new.stop()

                        undo.append(give_back)
                    else:
                        undo.append(discovery.stop)
                    await discovery.start(task_group)
                else:
                    start = getattr(discovery, "start", None)
                    if start is not None:
                        await start(task_group)
                        undo.append(getattr(discovery, "stop", _nothing))
            for f in new.filters:
                if any(f is g for g in gateway._started):
                    continue
                start = getattr(f, "start", None)
                if start is not None:
                    await start(task_group)
                    undo.append(getattr(f, "stop", _nothing))
                running.append(f)
            for name, service in new.services.items():
                if old.services.get(name) is service:
                    continue
                instances = functools.partial(new.discovery.instances, name)
                await service.guard.start(task_group, new.pool, instances)
                undo.append(_sync(service.guard.stop))
        except Exception as exc:
            with anyio.CancelScope(shield=True):
                for step in reversed(undo):
                    try:
                        await step()
                    except Exception:
                        log.exception("undoing a refused reload failed")
            error = FieldError("", f"the new config failed to start: {exc!r}")
            self._refused("the new config failed to start", [error])
            raise ConfigError([error]) from exc
        return running

    def _retire(self, old: Compiled, new: Compiled, running: list[Any]) -> None:
        gateway = self.gateway
        dropped = [f for f in gateway._started if not any(f is g for g in running)]
        gateway._started = running
        removed = {name: s for name, s in old.services.items() if new.services.get(name) is not s}
        for service in removed.values():
            service.guard.stop()
        kept: set[tuple[str, int]] = set()
        for name in new.services:
            kept.update((i.host, i.port) for i in new.discovery.instances(name))
        gone: set[tuple[str, int]] = set()
        for name in removed:
            if name not in new.services:
                gone.update((i.host, i.port) for i in old.discovery.instances(name))
        gone -= kept
        drain = self.drain if self.drain is not None else old.config.server.drain_timeout

        async def now() -> None:
            if old.discovery is not new.discovery:
                stop = getattr(old.discovery, "stop", None)
                if stop is not None:
                    await stop()  # only the watchers the new config dropped (``adopt``)
            if old.pool is not new.pool:
                await old.pool.aclose()  # idle connections now, busy ones after their response
            elif gone:
                await new.pool.forget(gone)

        async def later() -> None:
            for f in reversed(dropped):
                stop = getattr(f, "stop", None)
                if stop is not None:
                    try:
                        await stop()
                    except Exception:
                        log.exception("plugin %r failed to stop", getattr(f, "name", f))

        task_group = gateway.task_group
        if task_group is None:
            return
        task_group.start_soon(self._run_retirement, now, later, drain, name="gatekeep config retire")

    async def _run_retirement(self, now: Callable[[], Any], later: Callable[[], Any], drain: float) -> None:
        self._retiring.append(later)
        await now()
        await anyio.sleep(drain)
        if later in self._retiring:
            self._retiring.remove(later)
            await later()


def _sync(fn: Callable[[], None]) -> Callable[[], Any]:
    async def call() -> None:
        fn()

    return call


async def _nothing() -> None:
    return None
