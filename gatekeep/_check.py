"""``check_config``: everything ``Gateway(config)`` checks, without serving (``gatekeep check``).

A config can be refused at three moments: its shape (``load_config``), the
compile step, and each plugin's ``bind`` (an ``anonymous`` consumer that does
not exist, a ``policy`` naming a limiter not given, a credential whose key
cannot be used ...).  ``check_config`` runs all three, as the gateway does
when it is built, so a config ``check`` accepts is one ``serve`` accepts; it
also returns the warnings the plugins gave (``PluginContext.warn``): configs
that work, but likely not as meant.  Nothing starts: no socket is opened, no
background task runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from ._compile import bind_filters, compile_config
from ._config import GatewayConfig, load_config
from ._errors import FieldError
from ._protocols import Authenticator, Authorizer, RateLimiter
from ._registry import PluginRegistry

__all__ = ["CheckReport", "check_config"]


@attrs.frozen
class CheckReport:
    """A config that passed every check, and the warnings about it."""

    config: GatewayConfig
    warnings: tuple[FieldError, ...] = ()


def check_config(
    source: Mapping[str, Any] | str | Path | GatewayConfig,
    *,
    plugins: Iterable[type[Any]] = (),
    rate_limiters: Mapping[str, RateLimiter] | None = None,
    authenticators: Mapping[str, Authenticator] | None = None,
    authorizers: Mapping[str, Authorizer] | None = None,
) -> CheckReport:
    """Load, compile and bind ``source`` as ``Gateway(source, ...)`` would, and report.

    Args:
        plugins, rate_limiters, authenticators, authorizers: as for ``Gateway``:
            what the config may name besides the installed plugins.

    Raises:
        ConfigError: every problem, with its config path (plugins' ``bind`` included).
    """
    registry = PluginRegistry(plugins)
    compiled = compile_config(
        load_config(source, plugins=registry),
        plugins=registry,
        rate_limiters=rate_limiters,
        authenticators=authenticators,
        authorizers=authorizers,
    )
    context = bind_filters(compiled, None, task_group=lambda: None, log_warnings=False)
    return CheckReport(compiled.config, tuple(context.warnings))


def run_check(path: str) -> int:
    """``gatekeep check PATH``: every error with its path (exit 1), else ``ok`` and the warnings (exit 0)."""
    import sys

    from ._errors import ConfigError
    from ._front._tls import check_tls

    try:
        report = check_config(path)
        check_tls(report.config.server.tls)  # the files gatekeep serve would load
    except ConfigError as exc:
        print(f"{path}: {len(exc.errors)} error(s)", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return 1
    config = report.config
    for warning in report.warnings:
        print(f"{path}: warning: {warning}", file=sys.stderr)
    routes = sum(len(s.routes) for s in config.services)
    warned = f", {len(report.warnings)} warning(s)" if report.warnings else ""
    print(
        f"{path}: ok ({len(config.services)} services, {routes} routes, "
        f"{len(config.plugins)} global plugins{warned})"
    )
    return 0
