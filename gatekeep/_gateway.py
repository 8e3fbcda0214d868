"""The gateway: one async core that every adapter drives.

``Gateway.handle(request, exchange)`` takes a request through its whole way:

1. normalise the path and ask the router for a route (404, or 405 with
   ``Allow``);
2. run the route's request filters, highest priority first; any may answer
   early;
3. call the upstream stage (discovery -> balancer -> pooled connection), or
   the wrapped app in middleware mode;
4. run the response filters in reverse order;

and returns a ``Response`` whose body still streams.  The adapter sends it,
then calls ``Gateway.log(exchange)`` for the log phase once the last byte
left.  Nothing raised in here reaches the client as a traceback: gatekeep's
own errors become problem+json with their status, anything else is logged
and answered 500 problem+json.

Everything that can be computed from the config is computed once, by the
compile step (``gatekeep/_compile.py``); this module only runs requests over
its result.

Middleware mode: a route whose service is ``url = "app://"`` (and, with
``fallthrough``, a request no route matches) is answered by the wrapped app,
an upstream kind of its own.  The adapter that wraps an app hands its caller
to ``handle(request, exchange, app)``; the gateway itself is never changed by
an adapter.

Resources an answer holds are released through ``Response.defer`` (one
mechanism, LIFO, exactly once when the adapter closes the response).
"""

from __future__ import annotations

import functools
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from . import _gc
from ._compile import (
    BalancerFactory,
    BreakerFactory,
    Compiled,
    Route,
    RouterFactory,
    Service,
    bind_filters,
    compile_config,
)
from ._config import GatewayConfig, load_config
from ._errors import (
    ClientClosedRequest,
    FilterError,
    GatekeepError,
    MethodNotAllowed,
    NotFound,
    UpstreamError,
)
from ._filter import Chain, Exchange
from ._forwarding import downstream_response_headers, upstream_request_headers
from ._http import EMPTY_BODY, Request, Response, problem_response
from ._netaddr import in_networks
from ._normalise import is_canonical_path, normalise_path
from ._plugin_context import Endpoint
from ._protocols import Authenticator, Authorizer, Discovery, Instance, RateLimiter, Router
from ._registry import PluginRegistry
from ._reload import Reloader
from ._router import RouteMatch
from ._upstream import check_transfer_coding
from ._upstream import host_header as host_header_for
from ._websocket import WebSocketRefused, WebSocketStats
from ._websocket._upstream import connect_upstream
from .configsource import ConfigStore
from .discovery import no_instances
from .resilience import IDEMPOTENT_METHODS as _IDEMPOTENT

__all__ = ["AppCall", "Gateway", "Route", "Service"]

log = logging.getLogger("gatekeep")

AppCall = Callable[[Request], Awaitable[Response]]


class Gateway:
    """An API gateway built from a config.

    Args:
        config: a ``GatewayConfig``, a dict in the same shape, or a TOML path.
        router: a ``Router`` (its matches name a route: ``RouteMatch.rule.name``),
            or a factory given the compiled ``RouteRule``s (default: ``CompiledRouter``).
        discovery: where service instances come from (default: the static
            ``url``/``targets`` of the config, Consul or DNS as configured).
        balancer: ``balancer(service_config) -> Balancer``, one per service
            (default: the service's ``balancer`` setting).
        breaker: ``breaker(service_config, instance_or_None) -> Breaker``:
            ``None`` asks for the service's own breaker (return ``None`` for
            none), an instance for that instance's (default: ``CircuitBreaker``
            from the service's ``breaker`` settings).
        rate_limiters: ``RateLimiter``s by name: a ``rate-limiting`` plugin
            with ``policy = "name"`` takes its decisions from that one.
        authenticators: ``Authenticator``s by name: the ``auth`` plugin with
            ``authenticator = "name"`` runs that one (``docs/composing.md``).
        authorizers: ``Authorizer``s by name: the ``authz`` plugin with
            ``authorizer = "name"`` asks that one (``docs/composing.md``).
        filters: extra plugin instances attached globally (embedding).
        plugins: plugin classes the config may name besides the installed
            ones (entry points); this gateway's only (``docs/plugins.md``).
        config_source: a ``ConfigStore`` (``gatekeep.configsource``) the gateway
            watches while it runs, reloading on every change
            (``docs/configuration-reload.md``); ``config`` is its first config.

    Use ``async with gateway:`` (the adapters do it in the ASGI/WSGI
    lifespan) so that filters and background tasks start and stop cleanly.
    """

    def __init__(
        self,
        config: GatewayConfig | Mapping[str, Any] | str | Path,
        *,
        router: Router | RouterFactory | None = None,
        discovery: Discovery | None = None,
        balancer: BalancerFactory | None = None,
        breaker: BreakerFactory | None = None,
        rate_limiters: Mapping[str, RateLimiter] | None = None,
        authenticators: Mapping[str, Authenticator] | None = None,
        authorizers: Mapping[str, Authorizer] | None = None,
        filters: Sequence[Any] = (),
        plugins: Sequence[type[Any]] = (),
        config_source: ConfigStore | None = None,
    ) -> None:
        self._task_group: TaskGroup | None = None
        self._started: list[Any] = []
        registry = PluginRegistry(plugins)
        self.plugins_registry = registry
        # Everything but the config, for each reload's compile (gatekeep/_reload.py).
        self._compile_options: dict[str, Any] = dict(
            filters=filters,
            discovery=discovery,
            router=router,
            balancer=balancer,
            breaker=breaker,
            plugins=registry,
            rate_limiters=rate_limiters,
            authenticators=authenticators,
            authorizers=authorizers,
        )
        self._install(compile_config(load_config(config, plugins=registry), **self._compile_options))
        # Live config: ``reload()``, and the store's changes while the gateway runs.
        self.reloads = Reloader(self, config, config_source)
        # Open WebSockets and their counters (gatekeep/_websocket), for metrics and shutdown.
        self.websockets = WebSocketStats()
        # What plugins may read of this gateway (``bind(context)``).
        self.plugin_context = bind_filters(self.compiled, self, task_group=lambda: self._task_group)

    async def reload(self, config: GatewayConfig | Mapping[str, Any] | str | Path) -> None:
        """Replace the running config atomically (see ``docs/configuration-reload.md``).

        Raises:
            ConfigError: the config was refused, every error with its path; the
                running config keeps serving.
        """
        await self.reloads.apply(config)

    @property
    def config_source(self) -> Reloader | None:
        """The reloader watching the gateway's ``ConfigStore`` (``.store``), ``None`` without one."""
        return self.reloads if self.reloads.store is not None else None

    def config_status(self) -> dict[str, Any]:
        """The running config's hash, source, version, when it was loaded and the last refusal."""
        return self.reloads.status()

    def _install(self, compiled: Compiled) -> None:
        """Run requests over ``compiled`` from now on (the swap point of a reload: one assignment
        per attribute, no await in between).

        The hot path reads plain attributes of the gateway, copied here in one go.
        """
        self.compiled = compiled
        self.config = compiled.config
        self.via = compiled.via
        self._hide_upstream = compiled.hide_upstream
        self.request_id_header = compiled.request_id_header
        self.echo_request_id = compiled.echo_request_id
        self._trusted = compiled.trusted
        self.edge = compiled.edge
        self.fallthrough = compiled.fallthrough
        self.pool = compiled.pool
        self.bodies = compiled.bodies
        self.filters = compiled.filters
        self.has_log_phase = compiled.has_log_phase
        self.services = compiled.services
        self.discovery = compiled.discovery
        self.routes = compiled.routes
        self._routes_by_name = compiled.routes_by_name
        self.router = compiled.router
        self.global_chain = compiled.global_chain
        self.consumers = compiled.consumers
        self.endpoints = compiled.endpoints
        self.rate_limiters = compiled.rate_limiters
        self.authenticators = compiled.authenticators
        self.authorizers = compiled.authorizers
        self.chain_for = compiled.chain_for

    # -- lifespan -------------------------------------------------------------

    async def __aenter__(self) -> Gateway:
        self._tg_cm = anyio.create_task_group()
        self._task_group = await self._tg_cm.__aenter__()
        self._started = []
        try:
            # Discovery watchers first, all at once: each returns after its first lookup or its
            # initial_timeout (a hung Consul must not hold the start; its services answer 503).
            start = getattr(self.discovery, "start", None)
            if start is not None:
                await start(self._task_group)
            for f in self.filters:
                start = getattr(f, "start", None)
                if start is not None:
                    await start(self._task_group)
                self._started.append(f)
            for service in self.services.values():  # active health checks
                instances = functools.partial(self.discovery.instances, service.name)
                await service.guard.start(self._task_group, self.pool, instances)
        except BaseException:
            # A filter failed to start: stop the ones that did, end the task group.
            await self.__aexit__(None, None, None)
            raise
        try:
            await self.reloads.start(self._task_group)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        settings = self.config.gateway
        _gc.tune(threshold=settings.gc_threshold, freeze=settings.gc_freeze)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await self.reloads.stop()
            for f in reversed(self._started):
                stop = getattr(f, "stop", None)
                if stop is not None:
                    with anyio.CancelScope(shield=True):
                        try:
                            await stop()
                        except Exception:
                            log.exception("filter %r failed to stop", getattr(f, "name", f))
            self._started = []
            for service in self.services.values():
                service.guard.stop()
            stop = getattr(self.discovery, "stop", None)
            if stop is not None:
                with anyio.CancelScope(shield=True):
                    await stop()
            with anyio.CancelScope(shield=True):
                await self.pool.aclose()
        finally:
            if self._task_group is not None:
                self._task_group.cancel_scope.cancel()
                self._task_group = None
                await self._tg_cm.__aexit__(None, None, None)

    @property
    def task_group(self) -> TaskGroup | None:
        """The lifespan's task group (``None`` outside ``async with``)."""
        return self._task_group

    # -- the request's way through --------------------------------------------

    def new_request_id(self, request: Request) -> str:
        """The client's request id when it sent a sane one, else a new one (sent upstream too)."""
        name = self.request_id_header
        rid: bytes | None = None
        for key, value in request.headers.raw:  # (``Headers.get``, inline)
            if key == name:
                rid = value
                break
        if rid and len(rid) <= 200 and all(32 < c < 127 for c in rid):
            return rid.decode("ascii")
        new = f"{_ids.getrandbits(128):032x}"
        if rid is not None:
            request.headers.remove(self.request_id_header)
        request.headers.raw.append((self.request_id_header, new.encode("ascii")))
        return new

    async def handle(
        self, request: Request, exchange: Exchange | None = None, app: AppCall | None = None
    ) -> Response:
        """Answer ``request``; never raises (errors become problem+json).

        ``app`` is the wrapped app's caller in middleware mode (the adapter's).
        """
        if exchange is None:
            exchange = Exchange(request)
        # Edge hygiene before anything reads the headers (gatekeep/_edge.py): spoofed identity,
        # Connection-named and forwarding headers go; a bad Host is refused below, as a 400.
        refusal = self.edge.apply(request)
        if not request.request_id:
            request.request_id = self.new_request_id(request)
        if request.body is not EMPTY_BODY:
            # Every read of the body, by a filter, the pool or the app, waits only so long.
            request.body = self.bodies.timed(request.body)
        chain: Chain | None = None
        try:
            if refusal is not None:
                raise refusal
            if not request.path:
                raw_path = request.raw_path or b"/"
                # (A canonical path, almost every one, is its own text: no call.)
                request.path = (
                    raw_path.decode("ascii") if is_canonical_path(raw_path) else normalise_path(raw_path)
                )
            endpoints = self.endpoints
            match: RouteMatch | None = (
                None
                if endpoints and request.path in endpoints
                else self.router.match(request.method, request.host, request.path, request.headers)
            )
            if match is None:
                chain, response = await self._unrouted(request, exchange, app)
            else:
                # The common case, inline (one coroutine less on every request).
                # A router names its route (``Router`` is a seam: it cannot build a ``Route``).
                route = self._routes_by_name[match.rule.name]
                request._compiled_route = route
                request.route = route.info
                request.service = route.service.info
                if match.params:
                    request.params = dict(match.params)
                # (``chain`` stays None until the filters passed: an error on the way is
                # answered on the chain of whoever authentication named, _chain_after_error.)
                first = route.chain
                early = await self._request_phase(first, request) if first.request else None
                consumer = request.consumer
                chain = first if consumer is None else self.chain_for(route, _consumer_key(consumer))
                if early is not None:
                    response = early
                elif route.service.is_app:
                    response = await self._call_app(app, request, exchange)
                elif request.websocket and not route.config.websocket:
                    # Checked after the filters, so a client without credentials learns nothing more.
                    raise WebSocketRefused(f"route {route.name!r} does not accept WebSocket upgrades")
                else:
                    response = await self._call_upstream(route, match, request, exchange)
        except GatekeepError as exc:
            exchange.error = exc
            if isinstance(exc, ClientClosedRequest):
                # A client that gave up is no fault of ours: nginx's 499, no traceback.
                log.info("client closed the connection during %s %s: %s", request.method, request.path, exc)
            response = problem_response(exc, request.request_id, request_id_header=self.request_id_header)
        except Exception as exc:
            log.exception("unexpected error while handling %s %s", request.method, request.path)
            exchange.error = exc
            response = problem_response(
                FilterError("the gateway failed to handle this request; see its log"),
                request.request_id,
                request_id_header=self.request_id_header,
            )
        if chain is None:
            chain = self._chain_after_error(request)
        if chain is not None and chain.response:
            # Phases that answer None at once (the common case) run without a coroutine.
            phases = chain.response
            n = 0
            answer: object = None
            try:
                while n < len(phases):
                    answer = phases[n](request, response)
                    if answer is not None:
                        break
                    n += 1
            except Exception as exc:
                answer = exc
            if n < len(phases):
                response = await self._respond(chain, request, response, exchange, n, answer)
        if self.echo_request_id:
            rid = request.request_id.encode("latin-1")
            headers = response.headers
            name = self.request_id_header
            for key, _ in headers.raw:
                if key == name:
                    if headers.get_all(name) != [rid]:
                        headers.set(name, rid)
                    break
            else:  # (none yet, almost always: no ``Headers.get`` call to learn it)
                headers.raw.append((name, rid))
        exchange.status = response.status
        exchange.source = response.source
        exchange.response_headers = response.headers
        return response

    def _chain_after_error(self, request: Request) -> Chain | None:
        route: Route | None = request._compiled_route
        if route is None:
            return self.global_chain
        chain: Chain = self.chain_for(route, _consumer_key(request.consumer))
        return chain

    def add_endpoint(
        self,
        path: str,
        handler: Callable[[Request], Awaitable[Response]],
        *,
        run_global_filters: bool = True,
    ) -> None:
        """Answer ``path`` (exact, normalised) with ``handler`` before routing.

        For the gateway's own endpoints (``/metrics`` ...); filters call it
        from ``bind``.  Global request filters run first unless
        ``run_global_filters`` is false (a scrape should not need a token or
        count against a rate limit).
        """
        self.endpoints[path] = Endpoint(handler, run_global_filters)

    async def _unrouted(
        self, request: Request, exchange: Exchange, app: AppCall | None
    ) -> tuple[Chain | None, Response]:
        """A request no route matched: a gateway endpoint, the wrapped app, or 404/405."""
        endpoint = self.endpoints.get(request.path) if self.endpoints else None
        if endpoint is not None:
            handler, run_global = endpoint
            if not run_global:
                return _NO_FILTERS, await handler(request)
            chain = self.global_chain
            early = await self._request_phase(chain, request)
            return chain, early if early is not None else await handler(request)
        if app is not None and self.fallthrough:
            chain = self.global_chain
            early = await self._request_phase(chain, request)
            if early is not None:
                return chain, early
            return chain, await self._call_app(app, request, exchange)
        allowed = self.router.allowed_methods(request.host, request.path, request.headers)
        if allowed:
            raise MethodNotAllowed(request.method, sorted(allowed))
        raise NotFound(f"no route matches {request.method} {request.path}")

    async def _request_phase(self, chain: Chain, request: Request) -> Response | None:
        phases = chain.request
        if not phases:
            return None
        consumer = request.consumer
        n = 0
        while n < len(phases):
            index, phase = phases[n]
            try:
                answer = phase(request)
                early: Response | None = (
                    await answer  # an async phase's coroutine (a fast phase answers at once)
                    if answer is not None and not isinstance(answer, Response)
                    else answer
                )
            except GatekeepError:
                raise
            except Exception as exc:
                raise _filter_failed(chain.filters[index], exc) from exc
            if early is not None:
                early.source = early.source or "gateway"
                return early
            n += 1
            if request.consumer is not consumer:
                route: Route | None = request._compiled_route
                if route is not None:
                    # Authentication named a consumer: continue on its chain.
                    consumer = request.consumer
                    new_chain = self.chain_for(route, _consumer_key(consumer))
                    if new_chain is not chain:
                        key = chain.keys[index]
                        chain, phases = new_chain, new_chain.request
                        n = new_chain.resume_index(key)
        return None

    async def _respond(
        self,
        chain: Chain,
        request: Request,
        response: Response,
        exchange: Exchange,
        start: int = 0,
        first: object = None,
    ) -> Response:
        """The response phases from ``start`` on; ``first`` is what that phase answered already
        (a Response, an awaitable or the exception it raised), when ``start`` was called."""
        for n in range(start, len(chain.response)):
            phase = chain.response[n]
            try:
                answer: Any
                if n == start and first is not None:
                    if isinstance(first, Exception):
                        raise first
                    answer = first
                else:
                    answer = phase(request, response)
                changed: Response | None = (
                    await answer  # an async phase's coroutine (a fast phase answers at once)
                    if answer is not None and not isinstance(answer, Response)
                    else answer
                )
            except Exception as exc:
                error = exc if isinstance(exc, GatekeepError) else _filter_failed(_owner(phase), exc)
                if not isinstance(exc, GatekeepError):
                    log.error("response filter failed", exc_info=exc)
                exchange.error = error
                await response.aclose()
                return problem_response(error, request.request_id, request_id_header=self.request_id_header)
            if changed is not None:
                if changed is not response:
                    await _close_replaced(response, changed)
                response = changed
        return response

    def upstream_target(self, route: Route, match: RouteMatch, request: Request) -> bytes:
        path = request.path
        if route.strip_path and match.matched:
            rest = path[len(match.matched) :]
            path = rest if rest.startswith("/") else "/" + rest
        base = route.service.base_path
        if base:
            path = base if path == "/" and not request.path.endswith("/") else base + path
        target = path.encode("latin-1")
        if request.query_string:
            target += b"?" + request.query_string
        return target

    async def _call_upstream(
        self, route: Route, match: RouteMatch, request: Request, exchange: Exchange
    ) -> Response:
        service = route.service
        instances = self.discovery.instances(service.name)
        if not instances:
            # 503 either way; with Retry-After while discovery has not answered yet.
            raise no_instances(self.discovery, service.name)
        if (route.strip_path and match.matched) or service.base_path:
            target = self.upstream_target(route, match, request)
        else:  # the path as routed (``upstream_target``'s plain case, inline)
            target = request.path.encode("latin-1")
            if request.query_string:
                target += b"?" + request.query_string
        send = _UpstreamSend(self, route, request, exchange, target)
        # Buffer the body (or take a streaming slot) before any upstream connection is taken.
        hold = None
        if request.body is not EMPTY_BODY:
            # A body framed by codings the server let through (llhttp: "gzip, chunked") is refused.
            check_transfer_coding(request.headers.raw)
            hold = await self.bodies.prepare(request, route.config, service.config)
        exchange.upstream_start = time.perf_counter()
        try:
            response = await service.guard.call(instances, request, send)
        except BaseException:
            exchange.upstream_end = time.perf_counter()
            raise
        finally:
            if hold is not None:
                hold.release()
        exchange.upstream_head = time.perf_counter()
        headers = response.headers
        headers.raw = downstream_response_headers(headers.raw, self._hide_upstream)
        if not response.holds_resources:
            # The whole body came with the head (the connection is back in the pool).
            exchange.upstream_end = exchange.upstream_head
            return response
        # (A partial, not a closure: ``exchange`` stays a plain local on the common path.)
        response.defer(functools.partial(_upstream_done, exchange))
        return response

    async def _call_app(self, app: AppCall | None, request: Request, exchange: Exchange) -> Response:
        if app is None:
            raise UpstreamError("this route targets the wrapped app, but the gateway wraps none")
        exchange.upstream_start = time.perf_counter()
        response = await app(request)
        exchange.upstream_head = time.perf_counter()
        return response

    async def log(self, exchange: Exchange) -> None:
        """Run the log phase (after the last byte was sent)."""
        pending = self.log_now(exchange)
        if pending is not None:
            await pending

    def log_now(self, exchange: Exchange) -> Awaitable[None] | None:
        """Run the log phase as far as it goes without waiting; the awaitable of the rest, if any.

        Phases that never wait (prometheus, access-log) run here, without a coroutine.
        """
        request = exchange.request
        if not exchange.end:
            exchange.end = time.perf_counter()
        route: Route | None = request._compiled_route
        chain = self.global_chain if route is None else self.chain_for(route, _consumer_key(request.consumer))
        phases = chain.log
        for n, phase in enumerate(phases):
            try:
                pending = phase(exchange)
            except Exception:
                log.exception("log filter failed")
                continue
            if pending is not None:  # an async phase's coroutine (a fast one returns None)
                return _log_rest(phases, n, pending, exchange)
        return None


async def _log_rest(phases: Sequence[Callable[..., Any]], n: int, pending: Any, exchange: Exchange) -> None:
    """The log phase from ``phases[n]`` on, whose answer ``pending`` is (``Gateway.log_now``)."""
    try:
        await pending
    except Exception:
        log.exception("log filter failed")
    for phase in phases[n + 1 :]:
        try:
            later = phase(exchange)
            if later is not None:
                await later
        except Exception:
            log.exception("log filter failed")


_NO_FILTERS = Chain([])
# Request ids need to be unique, not secret: a PRNG seeded from the OS per
# process avoids a getrandom system call per request.
_ids = random.Random(os.urandom(32))
# Forked workers (gunicorn, uvicorn --workers) must not share a sequence.
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))


# ``Host`` per upstream instance (``host_header``), by identity: the entry holds the
# instance, so its id is not reused while it is here.  Bounded: emptied when full.
_host_headers: dict[int, tuple[Instance, bytes]] = {}
_HOST_HEADERS_MAX = 1024


async def _upstream_done(exchange: Exchange) -> None:
    exchange.upstream_end = exchange.upstream_end or time.perf_counter()


class _UpstreamSend:
    """One try of a request upstream, as the guard calls it: ``send(instance)``.

    The guard picks the instance and decides about retries.  An object, not a
    closure: one allocation instead of a cell per captured name, and calling
    it hands back the pool's coroutine (no frame of its own at every suspension).
    """

    __slots__ = ("exchange", "gateway", "request", "retry_safe", "route", "target", "trusted")

    def __init__(
        self, gateway: Gateway, route: Route, request: Request, exchange: Exchange, target: bytes
    ) -> None:
        self.gateway = gateway
        self.route = route
        self.request = request
        self.exchange = exchange
        self.target = target
        self.retry_safe = request.method in _IDEMPOTENT
        trusted = gateway._trusted
        self.trusted = bool(trusted) and in_networks(request.peer_ip, trusted)

    def __call__(self, instance: Instance) -> Awaitable[Response]:
        request = self.request
        self.exchange.instance = instance
        gateway = self.gateway
        route = self.route
        service = route.service
        if route.preserve_host and request.host:
            host_header = request.headers.get(b"host") or instance.address.encode()
        else:
            known = _host_headers.get(id(instance))
            if known is not None and known[0] is instance:
                host_header = known[1]
            else:
                host_header = _host_header(instance)
        headers = upstream_request_headers(
            request, host_header=host_header, via=gateway.via, trusted=self.trusted
        )
        if request.websocket:  # a handshake: a fresh upstream connection (gatekeep/_websocket)
            websocket = gateway.config.gateway.websocket
            return connect_upstream(
                request,
                instance,
                self.target,
                headers,
                timeouts=service.timeouts,
                tls=service.tls,
                max_message=websocket.max_message_bytes,
                compression=websocket.compression,
            )
        return gateway.pool.send(
            instance,
            request.method,
            self.target,
            headers,
            request.body,
            timeouts=service.timeouts,
            tls=service.tls,
            retry_safe=self.retry_safe,
        )


def _host_header(instance: Instance) -> bytes:
    value = host_header_for(instance)
    if len(_host_headers) >= _HOST_HEADERS_MAX:
        _host_headers.clear()
    _host_headers[id(instance)] = (instance, value)
    return value


def _consumer_key(consumer: Any) -> str | None:
    if consumer is None:
        return None
    if isinstance(consumer, str):
        return consumer
    key = getattr(consumer, "key", None)
    return key if isinstance(key, str) else None


def _owner(phase: Any) -> Any:
    return getattr(phase, "__self__", phase)


def _filter_failed(f: Any, exc: BaseException) -> FilterError:
    name = getattr(f, "name", type(f).__name__)
    log.error("filter %r failed", name, exc_info=exc)
    return FilterError(f"filter {name!r} failed; see the gateway's log", filter=str(name))


async def _close_replaced(old: Response, new: Response) -> None:
    """A filter returned a new response: it takes over what the old one holds (``Response.adopt``)."""
    new.adopt(old)
