"""Public, read-only descriptions of a gateway's routes and services.

``Request.route`` and ``Request.service`` hold these (and ``bind`` sees them
through ``gatekeep.PluginContext``): what a plugin may know about where a
request goes, without the compiled objects the gateway runs it over.  They
are built once per route and service by the compile step, so setting them on
a request costs an attribute store, not an allocation.

They import nothing of gatekeep's (``gatekeep._http`` types the request with
them); the full config of a route or service is ``context.config`` at bind
time, found by ``name``.  Equality is identity (``eq=False``): one object per
route, and a metrics cache keyed by it hashes an id, not every field.
"""

from __future__ import annotations

import attrs

__all__ = ["RouteInfo", "ServiceInfo"]


@attrs.frozen(eq=False)
class ServiceInfo:
    """A service as plugins see it.

    ``url`` is the configured upstream URL (``None`` when the service uses
    targets or discovery); ``is_app`` marks a service answered by the wrapped
    app (``url = "app://"``, middleware mode).
    """

    name: str
    url: str | None = None
    is_app: bool = False


@attrs.frozen(eq=False)
class RouteInfo:
    """A route as plugins see it.

    ``paths``/``methods``/``hosts`` are the route's matching rules as
    configured (``methods`` upper case, empty for any); ``plugins`` names the
    plugins of its chain in run order (for consumers without consumer-scoped
    plugins).
    """

    name: str
    service: ServiceInfo
    paths: tuple[str, ...] = ()
    methods: frozenset[str] = frozenset()
    hosts: tuple[str, ...] = ()
    plugins: tuple[str, ...] = ()
    strip_path: bool = True
    preserve_host: bool = False
