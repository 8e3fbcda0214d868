"""``gatekeep config push FILE`` and ``gatekeep config pull``: the shared config store from a shell.

``push`` checks the file whole first (what ``gatekeep check`` checks: a config
every gateway would refuse is never written), then writes it with
check-and-set against the version it read (``--expect-version`` to name the
one you reviewed, ``--force`` to overwrite whatever is there).  Every gateway
watching the store applies it within about a second.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio

from ._errors import ConfigError, GatekeepError
from .configsource import (
    ConfigDocument,
    ConfigStore,
    dumps_toml,
    format_of,
    open_store,
    parse_config_bytes,
)

__all__ = ["add_parser", "run"]

_ENV = "GATEKEEP_CONFIG_SOURCE"


def add_parser(sub: Any) -> None:
    config = sub.add_parser("config", help="push or pull the shared config (Consul KV or a file)")
    actions = config.add_subparsers(dest="action", required=True)
    source_help = f"consul://host:8500/key or a file path (default: ${_ENV})"

    push = actions.add_parser("push", help="check FILE and write it to the store (check-and-set)")
    push.add_argument("file", help="the config: TOML, JSON, or a decK kong.yml")
    push.add_argument("--to", dest="source", default=os.environ.get(_ENV), help=source_help)
    push.add_argument("--expect-version", help="write only if the store still holds this version")
    push.add_argument("--force", action="store_true", help="overwrite whatever the store holds")

    pull = actions.add_parser("pull", help="print (or save) the config the store holds")
    pull.add_argument("--from", dest="source", default=os.environ.get(_ENV), help=source_help)
    pull.add_argument("-o", "--output", help="write to this file (format by its extension) instead of stdout")
    pull.add_argument("--format", choices=("json", "toml", "yaml"), help="stdout's format (default json)")


def run(args: argparse.Namespace) -> int:
    if not args.source:
        print(
            f"gatekeep config: name the store (--to/--from consul://host:8500/key) or set ${_ENV}",
            file=sys.stderr,
        )
        return 2
    try:
        store = open_store(args.source)
    except ValueError as exc:
        print(f"gatekeep config: {exc}", file=sys.stderr)
        return 2
    action = _push if args.action == "push" else _pull
    try:
        code: int = anyio.run(action, store, args)
    except GatekeepError as exc:
        print(f"gatekeep config {args.action}: {exc.detail}", file=sys.stderr)
        return 1
    return code


async def _push(store: ConfigStore, args: argparse.Namespace) -> int:
    from ._check import check_config

    path = Path(args.file)
    try:
        raw = await anyio.Path(path).read_bytes()
        data = parse_config_bytes(raw, format_of(path.name), str(path))
        check_config(data)
        document = ConfigDocument.of(data)
    except OSError as exc:
        print(f"gatekeep config push: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"{path}: {len(exc.errors)} error(s); nothing was written", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return 1
    try:
        current = await store.read()
        if current.document is not None and current.document.hash == document.hash:
            print(f"{store.name}: unchanged (hash {document.hash[:12]}, version {current.version})")
            return 0
        expected = None if args.force else (args.expect_version or current.version)
        version = await store.write(document, expected)
    finally:
        await store.aclose()
    print(f"{store.name}: version {version}, hash {document.hash[:12]}")
    return 0


async def _pull(store: ConfigStore, args: argparse.Namespace) -> int:
    try:
        snapshot = await store.read()
    finally:
        await store.aclose()
    if snapshot.error is not None:
        print(f"{store.name}: version {snapshot.version} does not parse: {snapshot.error}", file=sys.stderr)
        return 1
    if snapshot.document is None:
        print(f"{store.name}: nothing stored", file=sys.stderr)
        return 1
    data = snapshot.document.data
    fmt = format_of(args.output) if args.output else (args.format or "json")
    if fmt == "json":
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    elif fmt == "toml":
        text = dumps_toml(data)
    else:
        try:
            yaml: Any = importlib.import_module("yaml")
        except ImportError:
            print("gatekeep config pull: YAML needs PyYAML: pip install 'gatekeep[kong]'", file=sys.stderr)
            return 2
        text = yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True)
    if args.output:
        await anyio.Path(args.output).write_text(text)
        print(
            f"{args.output}: version {snapshot.version}, hash {snapshot.document.hash[:12]}", file=sys.stderr
        )
    else:
        sys.stdout.write(text)
    return 0


def serve_from_source(args: argparse.Namespace) -> int:
    """``gatekeep serve --config-source URL``: the config a store holds, checked, then served and watched."""
    from ._check import check_config

    if not args.config_source or args.config:
        print("gatekeep serve: give a config file or --config-source URL (one of them)", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("gatekeep serve: --workers must be 1 or more", file=sys.stderr)
        return 2
    from ._serve import app_for_source, read_source

    try:
        data = read_source(args.config_source)
        config = check_config(data).config
    except ConfigError as exc:
        print(f"{args.config_source}: {len(exc.errors)} error(s)", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return 1
    except (GatekeepError, ValueError) as exc:
        print(f"gatekeep serve: {exc}", file=sys.stderr)
        return 1
    if args.server == "uvicorn":
        print("gatekeep serve --config-source needs the default server, not uvicorn", file=sys.stderr)
        return 2
    from functools import partial

    from ._front import run

    return run(
        partial(app_for_source, args.config_source),
        config.server,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        access_log=args.access_log,
    )
