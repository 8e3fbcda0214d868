"""Real ASGI and WSGI servers in child processes, and upstreams in a thread.

- ``SERVERS``: how to start each server on ``127.0.0.1:PORT`` serving
  ``module:attribute`` (uvicorn, hypercorn, granian; gunicorn sync and
  gthread, waitress, wsgiref).
- ``ServerProcess``: a child process in a session of its own, its output in a
  log file; ``wait_ready`` polls the port, ``stop`` sends SIGTERM and waits
  (SIGKILL to the process group only if it does not stop in time).
- ``running(...)``: a context manager around both, for fixtures.
- ``upstream_thread(app)``: serve an ASGI app with ``gatekeep.testing.serve_asgi``
  on an event loop in a thread of its own, so sync fixtures can keep an
  upstream alive across tests.
- ``StreamUpstream``: an upstream with ``/raw`` (echo the body as is, streamed
  back chunk by chunk), ``/slow`` (stream forever, record when a send fails)
  and an ``EchoUpstream`` JSON echo for everything else.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread

from gatekeep.testing import EchoUpstream, serve_asgi

PY = sys.executable

Command = Callable[[str, int], list[str]]

# target is "module:attribute"; the module's directory is on PYTHONPATH.
SERVERS: dict[str, Command] = {
    "uvicorn": lambda target, port: [
        *(PY, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port)),
        *("--lifespan", "on", "--no-access-log", target),
    ],
    "hypercorn": lambda target, port: [PY, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", target],
    "granian": lambda target, port: [
        *(PY, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port)),
        *("--workers", "1", "--log-level", "warning", target),
    ],
    "gunicorn-sync": lambda target, port: [
        *(PY, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1"),
        *("--worker-class", "sync", "--graceful-timeout", "5", target),
    ],
    "gunicorn-gthread": lambda target, port: [
        *(PY, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1"),
        *("--worker-class", "gthread", "--threads", "4", "--graceful-timeout", "5", target),
    ],
    "waitress": lambda target, port: [PY, "-m", "waitress", f"--listen=127.0.0.1:{port}", target],
    # The generated app module serves itself with wsgiref.simple_server.
    "wsgiref": lambda target, port: [PY, "-m", target.split(":")[0], "wsgiref", str(port)],
}

# The package each server needs (a server that cannot be imported is skipped).
SERVER_PACKAGE = {
    "uvicorn": "uvicorn",
    "hypercorn": "hypercorn",
    "granian": "granian",
    "gunicorn-sync": "gunicorn",
    "gunicorn-gthread": "gunicorn",
    "waitress": "waitress",
    "wsgiref": "wsgiref",
}

ASGI_SERVERS = ("uvicorn", "hypercorn", "granian")
WSGI_SERVERS = ("gunicorn-sync", "gunicorn-gthread", "waitress", "wsgiref")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


# A child started from a background job inherits an ignored SIGINT, and Python
# then never raises KeyboardInterrupt; reset it as a terminal would have it.
_DEFAULT_SIGINT = [
    PY,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])",
]


class ServerProcess:
    """A server in a child process; its stdout and stderr go to ``log_path``."""

    def __init__(self, argv: Sequence[str], *, log_path: Path, env: Mapping[str, str], cwd: Path) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [*_DEFAULT_SIGINT, *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                cwd=cwd,
                start_new_session=True,  # its workers share its process group
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def wait_ready(self, port: int, timeout: float = 20.0) -> None:
        """Poll ``port`` until it accepts connections; fail with the log if the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.argv} exited with {self.process.returncode}:\n{self.log()}")
            if port_open(port):
                return
            time.sleep(0.05)
        raise TimeoutError(f"{self.argv} not listening on {port} after {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int:
        """``sig`` (graceful shutdown, lifespan), then SIGKILL to the group if needed."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        # Workers left behind by a master that died early.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.process.returncode


@contextmanager
def running(
    server: str,
    target: str,
    *,
    app_dir: Path,
    env: Mapping[str, str] = {},  # noqa: B006 - read only
    argv: Sequence[str] | None = None,
    port: int | None = None,
) -> Iterator[tuple[ServerProcess, int]]:
    """Start ``server`` serving ``target`` (or run ``argv``), wait for its port, stop it after."""
    port = port or free_port()
    command = list(argv) if argv is not None else SERVERS[server](target, port)
    path = os.pathsep.join(filter(None, [str(app_dir), os.environ.get("PYTHONPATH", "")]))
    proc = ServerProcess(
        command,
        log_path=app_dir / f"{server}-{port}.log",
        env={"PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **env},
        cwd=app_dir,
    )
    try:
        proc.wait_ready(port)
        yield proc, port
    finally:
        proc.stop()


@contextmanager
def upstream_thread(app: Any) -> Iterator[int]:
    """Serve ASGI ``app`` on 127.0.0.1 from an event loop in its own thread; yield the port."""
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        with portal.wrap_async_context_manager(serve_asgi(app)) as port:
            yield port


UPSTREAM_DATE = b"Mon, 01 Jan 2001 00:00:00 GMT"


class StreamUpstream:
    """``/raw``: echo the body back as it arrives; ``/slow``: stream until the send fails;
    anything else: ``EchoUpstream``'s JSON echo."""

    def __init__(self) -> None:
        self.echo = EchoUpstream()
        self.slow_started = threading.Event()
        self.slow_stopped = threading.Event()
        self.slow_stopped_at = 0.0
        self.slow_error = ""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"]
        if path.startswith("/dated"):
            # An upstream that sends its own Date and Server, as real ones do.
            headers = [(b"date", UPSTREAM_DATE), (b"server", b"upstream-server"), (b"content-length", b"2")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"ok"})
        elif path.startswith("/raw"):
            await self._raw(receive, send)
        elif path.startswith("/slow"):
            await self._slow(receive, send)
        else:
            await self.echo(scope, receive, send)

    async def _raw(self, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"raw")]})
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            if message.get("body"):
                await send({"type": "http.response.body", "body": message["body"], "more_body": True})
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.body", "body": b""})

    async def _slow(self, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text")]})
        self.slow_started.set()
        try:
            for _ in range(600):
                await send({"type": "http.response.body", "body": b"tick\n" * 200, "more_body": True})
                await anyio.sleep(0.05)
            await send({"type": "http.response.body", "body": b""})
        except BaseException as exc:
            self.slow_error = repr(exc)
            raise
        finally:
            self.slow_stopped_at = time.monotonic()
            self.slow_stopped.set()
