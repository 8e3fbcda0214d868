"""The ``gatekeep`` command: ``demo``, ``serve CONFIG`` and ``check CONFIG``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import anyio

from ._config import load_config
from ._errors import ConfigError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatekeep", description="An embeddable API gateway for Python.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run Order, Payment and Inventory services behind a gateway")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000, help="gateway port (default 8000)")
    demo.add_argument("--tour", action="store_true", help="send the tour's requests, print them, and exit")

    serve = sub.add_parser("serve", help="serve a config on uvicorn")
    serve.add_argument("config", help="TOML config file")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument("--log-level", default="info")

    check = sub.add_parser("check", help="validate a config; print every error with its path")
    check.add_argument("config", help="TOML config file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        return _check(args.config)
    if args.command == "serve":
        return _serve(args)
    from ._demo import run_demo

    try:
        return anyio.run(run_demo, args.host, args.port, args.tour)
    except KeyboardInterrupt:
        return 0


def _check(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"{path}: {len(exc.errors)} error(s)", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return 1
    routes = sum(len(s.routes) for s in config.services)
    print(
        f"{path}: ok ({len(config.services)} services, {routes} routes, {len(config.plugins)} global plugins)"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    if _check(args.config) != 0:
        return 1
    try:
        import uvicorn
    except ImportError:
        print("gatekeep serve needs uvicorn: pip install 'gatekeep[serve]'", file=sys.stderr)
        return 2
    os.environ["GATEKEEP_CONFIG"] = os.path.abspath(args.config)
    uvicorn.run(
        "gatekeep._serve:app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        lifespan="on",
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
