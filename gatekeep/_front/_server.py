"""The front server's life: listen, run the ASGI lifespan, serve, drain, stop.

One process (``workers=1``) serves in place.  With more, the parent binds the
listening socket once and starts that many worker processes (``spawn``: no
state copied from the parent) that all accept on it; the parent only
supervises.  A worker that dies unexpectedly (a crash, the OOM killer) is
replaced by a new one on the same socket; a crash loop is not hidden: a
worker whose app fails to start (exit 3), or more than ``_MAX_RESTARTS``
replacements within ``_RESTART_WINDOW`` seconds, stop the others and the
parent exits 1 for its own supervisor (systemd, Kubernetes) to act on.

Shutdown on SIGTERM or SIGINT: stop accepting, ask long-lived connections
(``ServerState.long_lived``: WebSockets) to go away, close idle keep-alive
connections, let requests in flight finish (their connections close after the
answer) for up to ``drain_timeout`` seconds, then cut what is left, run the
lifespan shutdown and exit 0.

With ``[server.tls]`` the port speaks HTTPS (``_tls.TLSTerminator``); SIGHUP
reloads the certificate files (the parent passes it on to its workers), as
does a change of their modification time.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .._errors import ConfigError
from .._hangup import on_hangup
from ._protocol import ASGI, HTTPConnection, Message, ServerState
from ._settings import ServerSettings
from ._tls import TLSTerminator, check_tls

__all__ = ["run", "serve"]

log = logging.getLogger("gatekeep.serve")

_BACKLOG = 2048
# Worker replacements allowed within the window before the parent gives up (a crash loop).
_MAX_RESTARTS = 5
_RESTART_WINDOW = 60.0
# A worker's exit code when its app's lifespan startup failed: replacing it would fail the same way.
_STARTUP_FAILED = 3


def _event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run(
    app_factory: Callable[[], ASGI],
    settings: ServerSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    log_level: str = "info",
    access_log: bool = False,
) -> int:
    """Serve the app ``app_factory`` builds until SIGTERM/SIGINT; the exit code.

    Each worker process calls ``app_factory`` itself, so it must be picklable (a
    module-level function, or a ``functools.partial`` of one): the caller, not the
    server, knows how to build the gateway (``gatekeep._serve.app_for``).
    """
    _configure_logging(log_level)
    if workers <= 1:
        app = app_factory()
        with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
            return runner.run(serve(app, settings, host=host, port=port, access_log=access_log))
    try:
        check_tls(settings.tls)  # each worker loads the files again; a bad one stops here, once
    except ConfigError as exc:
        _log_config_errors(exc)
        return 1
    try:
        sock = _bind(host, port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s (choose another with --port)", host, port, exc.strerror)
        return 1
    return _supervise(app_factory, settings, sock, workers, log_level, access_log)


def _log_config_errors(exc: ConfigError) -> None:
    for error in exc.errors:
        log.error("invalid config: %s", error)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.create_server((host, port), family=family, backlog=_BACKLOG)
    sock.set_inheritable(True)
    return sock


async def serve(
    app: ASGI,
    settings: ServerSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    sock: socket.socket | None = None,
    access_log: bool = False,
    stop: asyncio.Event | None = None,
) -> int:
    """Serve ``app`` on ``host:port`` (or the listening ``sock``) until SIGTERM/SIGINT (or ``stop``)."""
    loop = asyncio.get_running_loop()
    shared = ServerState(app, settings, access_log=access_log)
    tls: TLSTerminator | None = None
    if settings.tls is not None:
        try:
            tls = TLSTerminator(settings.tls)
        except ConfigError as exc:
            _log_config_errors(exc)
            return 1

    def connection() -> HTTPConnection:
        return HTTPConnection(shared)

    secure: dict[str, Any] = {}
    if tls is not None:
        secure = {"ssl": tls.context, "ssl_handshake_timeout": tls.settings.handshake_timeout}
    try:
        if sock is None:
            # Bound now, listening only once the app started: a busy port fails fast.
            server = await loop.create_server(
                connection, host, port, backlog=_BACKLOG, start_serving=False, **secure
            )
        else:
            server = await loop.create_server(
                connection, sock=sock, backlog=_BACKLOG, start_serving=False, **secure
            )
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s (choose another with --port)", host, port, exc.strerror)
        return 1
    log.info("Started server process [%d]", os.getpid())
    lifespan = _Lifespan(app, shared.lifespan_state)
    if not await lifespan.startup():
        server.close()
        return 3
    signals: tuple[int, ...] = () if stop is not None else (signal.SIGTERM, signal.SIGINT)
    stop = stop or asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    watcher: asyncio.Task[None] | None = None
    unhang: Callable[[], None] | None = None
    if tls is not None:
        if signals:
            # Shared with the config's reload on SIGHUP (gatekeep/_hangup.py).
            unhang = on_hangup(loop, tls.reload)
        watcher = loop.create_task(tls.watch())
    await server.start_serving()
    address = server.sockets[0].getsockname() if server.sockets else (host, port)
    scheme = "https" if tls is not None else "http"
    log.info("gatekeep serving on %s://%s:%d (press CTRL+C to quit)", scheme, address[0], address[1])
    try:
        await stop.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
    log.info("Shutting down: draining %d connection(s)", len(shared.connections))
    server.close()
    await _drain(shared, settings.drain_timeout)
    for sig in signals:
        loop.remove_signal_handler(sig)
    if unhang is not None:
        unhang()
    await lifespan.shutdown()
    log.info("Finished server process [%d]", os.getpid())
    return 0


async def _drain(shared: ServerState, within: float) -> None:
    shared.draining = True
    for long_lived in list(shared.long_lived):
        try:
            long_lived.going_away()
        except Exception:
            log.exception("closing %r on shutdown failed", long_lived)
    for conn in list(shared.connections):
        conn.shutdown()
    # No request starts from here on: idle connections are closed, busy ones close after their answer.
    tasks = set(shared.tasks)
    if tasks:
        await asyncio.wait(tasks, timeout=within)
    if shared.tasks:
        log.warning("drain timeout (%s s): cutting %d request(s)", within, len(shared.tasks))
    for conn in list(shared.connections):
        conn.transport.abort()
    for task in shared.tasks:
        task.cancel()
    await asyncio.gather(*shared.tasks, return_exceptions=True)


class _Lifespan:
    """The app's ASGI ``lifespan`` scope, driven by the server."""

    def __init__(self, app: ASGI, state: dict[str, Any]) -> None:
        self.app = app
        self.state = state
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.answers: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        try:
            await self.app(scope, self.inbox.get, self._send)
        except Exception as exc:
            log.exception("the app's lifespan failed")
            await self.answers.put({"type": "lifespan.failed", "message": repr(exc)})
        else:
            await self.answers.put({"type": "lifespan.returned"})

    async def _send(self, message: Message) -> None:
        await self.answers.put(message)

    async def startup(self) -> bool:
        self.task = asyncio.get_running_loop().create_task(self._main())
        await self.inbox.put({"type": "lifespan.startup"})
        answer = await self.answers.get()
        if answer["type"] == "lifespan.startup.complete":
            log.info("Application startup complete.")
            return True
        log.error("Application startup failed: %s", answer.get("message", answer["type"]))
        return False

    async def shutdown(self) -> None:
        if self.task is None or self.task.done():
            return
        await self.inbox.put({"type": "lifespan.shutdown"})
        answer = await self.answers.get()
        if answer["type"] != "lifespan.shutdown.complete":
            log.error("Application shutdown failed: %s", answer.get("message", answer["type"]))
        else:
            log.info("Application shutdown complete.")
        await asyncio.gather(self.task, return_exceptions=True)


def _worker(
    app_factory: Callable[[], ASGI],
    settings: ServerSettings,
    sock: socket.socket,
    log_level: str,
    access_log: bool,
) -> None:
    """A worker process: serve on the parent's socket (see the module doc)."""
    # Until the loop's handlers are in, a signal must not kill the worker mid-start
    # (SIGHUP, which the parent passes on, would kill it by default).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _configure_logging(log_level)
    app = app_factory()
    with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
        code = runner.run(serve(app, settings, sock=sock, access_log=access_log))
    sys.exit(code)


def _supervise(
    app_factory: Callable[[], ASGI],
    settings: ServerSettings,
    sock: socket.socket,
    workers: int,
    log_level: str,
    access_log: bool,
) -> int:
    context = multiprocessing.get_context("spawn")

    def start(n: int) -> Any:
        process = context.Process(
            target=_worker,
            args=(app_factory, settings, sock, log_level, access_log),
            name=f"gatekeep-worker-{n}",
        )
        process.start()
        return process

    signals: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        signals.append(signum)

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    processes = [start(n) for n in range(workers)]
    log.info("Started parent process [%d] with %d workers", os.getpid(), workers)
    restarts: deque[float] = deque()
    code = 0
    stopping = False
    listening = True
    try:
        while any(p.is_alive() for p in processes) or not stopping:
            while signals:
                signum = signals.pop(0)
                if signum == signal.SIGHUP:
                    if not stopping:
                        log.info("SIGHUP: the workers reload their config and TLS certificates")
                        _signal_all(processes, signal.SIGHUP)
                elif not stopping:
                    stopping = True
                    _signal_all(processes, signal.SIGTERM)
                else:
                    _signal_all(processes, signal.SIGKILL)  # a second signal: no more waiting
            if not stopping:
                for n, process in enumerate(processes):
                    if process.exitcode is None:
                        continue
                    now = time.monotonic()
                    while restarts and now - restarts[0] > _RESTART_WINDOW:
                        restarts.popleft()
                    if process.exitcode == _STARTUP_FAILED or len(restarts) >= _MAX_RESTARTS:
                        log.error(
                            "worker %d exited with %s (%d replaced in %d s); stopping",
                            process.pid,
                            process.exitcode,
                            len(restarts),
                            _RESTART_WINDOW,
                        )
                        code = 1
                        stopping = True
                        _signal_all(processes, signal.SIGTERM)
                        break
                    log.error("worker %d exited with %s; starting a new one", process.pid, process.exitcode)
                    restarts.append(now)
                    processes[n] = start(n)
            if stopping and listening:
                sock.close()  # the parent's copy: once the workers close theirs, connections are refused
                listening = False
            alive = [p.sentinel for p in processes if p.is_alive()]
            if alive:
                multiprocessing.connection.wait(alive, timeout=0.2)
    finally:
        if listening:
            sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for process in processes:
            process.join(timeout=settings.drain_timeout + 10)
            if process.is_alive():
                process.kill()
                process.join()
    return code


def _signal_all(processes: list[Any], sig: int) -> None:
    for process in processes:
        if process.pid is not None and process.exitcode is None:
            try:
                os.kill(process.pid, sig)
            except ProcessLookupError:
                pass
