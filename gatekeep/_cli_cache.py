"""``gatekeep cache purge CONFIG [--key KEY | --route ROUTE]``: purge the shared response caches.

Builds the gateway of ``CONFIG`` without starting it, and purges every
``proxy-cache`` with ``strategy = "redis"`` (``gatekeep.cache.purge_caches``):
the entry of one ``X-Cache-Key``, every entry of one route, or (neither)
all.  A memory cache lives inside each gateway process, out of this command's
reach: the Admin API's ``DELETE /proxy-cache`` purges those.
"""

from __future__ import annotations

import argparse
import logging
import sys

import anyio

from ._errors import ConfigError

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cache`` and its subcommand to the ``gatekeep`` parser."""
    cache = sub.add_parser("cache", help="the proxy-cache's shared (Redis) entries: purge")
    commands = cache.add_subparsers(dest="cache_command", required=True)
    purge = commands.add_parser("purge", help="remove entries: one key, one route's, or all")
    purge.add_argument("config", help="TOML config file (its proxy-cache plugins name the Redis)")
    which = purge.add_mutually_exclusive_group()
    which.add_argument("--key", help="an X-Cache-Key")
    which.add_argument("--route", help="a route's name")


def run(args: argparse.Namespace) -> int:
    from ._gateway import Gateway
    from .cache import CacheStoreError, ResponseCache, purge_caches

    try:
        gateway = Gateway(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    plugins = gateway.plugin_context.plugins
    caches = [c for p in plugins if isinstance(c := getattr(p, "cache", None), ResponseCache)]
    if not any(c.shared for c in caches):
        print(
            "gatekeep cache: no proxy-cache with strategy 'redis' in this config"
            " (memory caches live in each gateway process: purge them through the Admin API)",
            file=sys.stderr,
        )
        return 1

    async def purge() -> int:
        return await purge_caches(plugins, key=args.key, route=args.route, shared_only=True)

    # The store's own outage warning speaks of bypassing requests: this command reports its error itself.
    logging.getLogger("gatekeep.cache").setLevel(logging.ERROR)
    try:
        removed = anyio.run(purge)
    except CacheStoreError as exc:
        print(f"gatekeep cache: {exc}", file=sys.stderr)
        return 1
    print(f"purged {removed} entr{'y' if removed == 1 else 'ies'}")
    return 0
