"""The front server's life: listen, run the ASGI lifespan, serve, drain, stop.

One process (``workers=1``) serves in place.  With more, the parent binds the
listening socket once and starts that many worker processes (``spawn``: no
state copied from the parent) that all accept on it; the parent only
supervises.  A worker that dies unexpectedly stops the others and the parent
exits non-zero: a supervisor (systemd, Kubernetes) restarts the whole, rather
than gatekeep hiding a crash loop.

Shutdown on SIGTERM or SIGINT: stop accepting, close idle keep-alive
connections, let requests in flight finish (their connections close after the
answer) for up to ``drain_timeout`` seconds, then cut what is left, run the
lifespan shutdown and exit 0.
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
from collections.abc import Callable
from typing import Any

from ._protocol import ASGI, HTTPConnection, Message, ServerState
from ._settings import ServerSettings

__all__ = ["run", "serve"]

log = logging.getLogger("gatekeep.serve")

_BACKLOG = 2048


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
        sock = _bind(host, port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s (choose another with --port)", host, port, exc.strerror)
        return 1
    return _supervise(app_factory, settings, sock, workers, log_level, access_log)


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

    def connection() -> HTTPConnection:
        return HTTPConnection(shared)

    try:
        if sock is None:
            # Bound now, listening only once the app started: a busy port fails fast.
            server = await loop.create_server(connection, host, port, backlog=_BACKLOG, start_serving=False)
        else:
            server = await loop.create_server(connection, sock=sock, backlog=_BACKLOG, start_serving=False)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s (choose another with --port)", host, port, exc.strerror)
        return 1
    log.info("Started server process [%d]", os.getpid())
    lifespan = _Lifespan(app, shared.lifespan_state)
    if not await lifespan.startup():
        server.close()
        return 3
    signals = () if stop is not None else (signal.SIGTERM, signal.SIGINT)
    stop = stop or asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    await server.start_serving()
    address = server.sockets[0].getsockname() if server.sockets else (host, port)
    log.info("gatekeep serving on http://%s:%d (press CTRL+C to quit)", address[0], address[1])
    await stop.wait()
    log.info("Shutting down: draining %d connection(s)", len(shared.connections))
    server.close()
    await _drain(shared, settings.drain_timeout)
    for sig in signals:
        loop.remove_signal_handler(sig)
    await lifespan.shutdown()
    log.info("Finished server process [%d]", os.getpid())
    return 0


async def _drain(shared: ServerState, within: float) -> None:
    shared.draining = True
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
    # Until the loop's handlers are in, a signal must not kill the worker mid-start.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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
    processes = [
        context.Process(
            target=_worker,
            args=(app_factory, settings, sock, log_level, access_log),
            name=f"gatekeep-worker-{n}",
        )
        for n in range(workers)
    ]
    signals: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        signals.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    for process in processes:
        process.start()
    sock.close()  # the workers have it
    log.info("Started parent process [%d] with %d workers", os.getpid(), workers)
    code = 0
    stopping = False
    try:
        while any(p.is_alive() for p in processes):
            if signals and not stopping:
                stopping = True
                _signal_all(processes, signal.SIGTERM)
            elif len(signals) > 1:
                _signal_all(processes, signal.SIGKILL)  # a second signal: no more waiting
            if not stopping:
                for process in processes:
                    if process.exitcode is not None:
                        log.error("worker %d exited with %s; stopping", process.pid, process.exitcode)
                        code = 1
                        stopping = True
                        _signal_all(processes, signal.SIGTERM)
                        break
            multiprocessing.connection.wait([p.sentinel for p in processes if p.is_alive()], timeout=0.2)
    finally:
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
