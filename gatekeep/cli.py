"""The ``gatekeep`` command: ``demo``, ``serve CONFIG``, ``check CONFIG`` and ``token``."""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import anyio

from . import _cli_cache, _cli_config, _cli_secret
from ._errors import ConfigError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatekeep", description="An embeddable API gateway for Python.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run Order, Payment and Inventory services behind a gateway")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000, help="gateway port (default 8000)")
    demo.add_argument("--tour", action="store_true", help="send the tour's requests, print them, and exit")
    demo.add_argument(
        "--redis", metavar="URL", help="keep the rate limits in Redis (policy 'redis') instead of in memory"
    )
    demo.add_argument(
        "--access-log", action="store_true", help="write one JSON access-log line per request to stderr"
    )

    serve = sub.add_parser(
        "serve", help="serve a config on gatekeep's front server (limits: the config's [server] table)"
    )
    serve.add_argument("config", nargs="?", help="config file (TOML, JSON, decK YAML); watched, SIGHUP too")
    serve.add_argument(
        "--config-source", metavar="URL", help="the config from a store instead: consul://host:8500/key"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="worker processes sharing the port (default 1)")
    serve.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug")
    )
    serve.add_argument(
        "--server",
        choices=("gatekeep", "uvicorn"),
        default="gatekeep",
        help="gatekeep's front server (default), or uvicorn (no head limits; see docs/serving.md)",
    )
    serve.add_argument("--access-log", action="store_true", help="the server logs one line per request")

    check = sub.add_parser("check", help="validate a config; print every error with its path")
    check.add_argument("config", help="TOML config file")

    _cli_secret.add_parser(sub)
    _cli_config.add_parser(sub)
    _cli_cache.add_parser(sub)

    token = sub.add_parser(
        "token", help="get an access token from the demo's dev issuer (client credentials)"
    )
    token.add_argument("--user", default="alice", help="the demo client: alice (user), bob (admin), carol")
    token.add_argument("--secret", help="the client's secret (default: <user>-secret, as in the demo)")
    token.add_argument(
        "--issuer",
        default=os.environ.get("GATEKEEP_ISSUER"),
        help="the issuer's URL, as the demo prints it (default: $GATEKEEP_ISSUER)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        return _check(args.config)
    if args.command == "serve":
        return _serve(args)
    if args.command == "token":
        return _token(args.issuer, args.user, args.secret)
    if args.command == "secret":
        return _cli_secret.run(args)
    if args.command == "config":
        return _cli_config.run(args)
    if args.command == "cache":
        return _cli_cache.run(args)
    from .demo import run_demo

    demo = partial(run_demo, args.host, args.port, args.tour, redis=args.redis, access_log=args.access_log)
    try:
        return _run_demo(demo)
    except KeyboardInterrupt:
        return 0


def _run_demo(demo: Callable[[], Awaitable[int]]) -> int:
    from .demo import ListenError

    code = 1
    try:
        return anyio.run(demo)
    except* BrokenPipeError:
        # The reader went away (``gatekeep demo --tour | head``): stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except* ListenError as group:
        # A busy port is the user's to change: one line naming the option, 2 as for a usage error.
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup):  # task groups on the way out nest it
            error = error.exceptions[0]
        print(error, file=sys.stderr)
        code = 2
    return code


def _check(path: str) -> int:
    from ._check import run_check  # load, compile and bind every plugin, as serve does

    return run_check(path)


def _token(issuer: str | None, user: str, secret: str | None) -> int:
    """The client-credentials grant at ``issuer``; prints the access token alone."""
    if not issuer:
        print(
            "gatekeep token: give --issuer URL (gatekeep demo prints it) or set GATEKEEP_ISSUER",
            file=sys.stderr,
        )
        return 2
    basic = base64.b64encode(f"{user}:{secret or user + '-secret'}".encode()).decode()
    request = urllib.request.Request(
        issuer.rstrip("/") + "/token",
        data=b"grant_type=client_credentials",
        headers={"authorization": f"Basic {basic}", "content-type": "application/x-www-form-urlencoded"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            token = json.load(answer)["access_token"]
    except urllib.error.HTTPError as exc:
        print(
            f"gatekeep token: {issuer} answered {exc.code}: {exc.read().decode(errors='replace')}",
            file=sys.stderr,
        )
        return 1
    except (OSError, ValueError, KeyError) as exc:
        print(f"gatekeep token: no token from {issuer}: {exc}", file=sys.stderr)
        return 1
    print(token)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from ._check import check_config

    if args.config_source or not args.config:
        return _cli_config.serve_from_source(args)  # the config from a store (Consul KV)
    try:
        config = check_config(args.config).config  # plugins' bind too: refused before a worker starts
    except ConfigError:
        _check(args.config)  # prints every error with its path
        return 1
    path = os.path.abspath(args.config)
    if args.workers < 1:
        print("gatekeep serve: --workers must be 1 or more", file=sys.stderr)
        return 2
    if args.server == "uvicorn":
        return _serve_uvicorn(args, path, config.server)
    if importlib.util.find_spec("httptools") is None:
        print(
            "gatekeep serve needs httptools: pip install 'gatekeep[serve]' (or use --server uvicorn)",
            file=sys.stderr,
        )
        return 2
    from ._front import run
    from ._serve import app_for

    return run(
        partial(app_for, path),
        config.server,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=args.access_log,
    )


def _serve_uvicorn(args: argparse.Namespace, path: str, server: Any) -> int:
    if server.tls is not None:
        # Serving plain HTTP where the config asks for HTTPS (and mTLS) would be worse than not starting.
        print("gatekeep serve: [server.tls] needs the default server, not uvicorn", file=sys.stderr)
        return 2
    try:
        import uvicorn
    except ImportError:
        print("gatekeep serve --server uvicorn needs uvicorn: pip install 'gatekeep[serve]'", file=sys.stderr)
        return 2
    os.environ["GATEKEEP_CONFIG"] = path
    # The gateway decides what X-Forwarded-* to believe ([gateway] trusted_proxies):
    # uvicorn's proxy_headers would trust them from 127.0.0.1 on its own.
    uvicorn.run(
        "gatekeep._serve:app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        lifespan="on",
        proxy_headers=False,
        server_header=False,
        access_log=args.access_log,
        timeout_keep_alive=int(server.keepalive_timeout),
        timeout_graceful_shutdown=int(server.drain_timeout),
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
