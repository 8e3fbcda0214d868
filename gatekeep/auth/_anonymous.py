"""Consumers, the ``anonymous`` option and several auth filters on one route (Kong's semantics).

- With ``anonymous`` set, a filter that finds no credential **or an invalid
  one** lets the request continue as the anonymous consumer (as Kong does);
  a later auth filter may still authenticate it and replace that consumer.
  A filter with ``anonymous`` set does nothing when an earlier filter
  already authenticated the request with a real credential (Kong's
  "logical OR" of auth filters).
- Without ``anonymous``, a missing or invalid credential is a 401, even when
  another filter authenticated the request (Kong's "logical AND").
- ``anonymous`` names a consumer by id, username or custom_id; it must
  exist, which is checked when the gateway is built (``ConfigError`` with
  the field's path).  The first auth filter bound reports every auth
  plugin of the config that names a missing consumer, its own kind or not,
  so one load lists them all.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .._errors import ConfigError, FieldError
from .._http import Request
from .._identity_headers import identity_header_pairs, strip_identity_headers
from .._protocols import Identity
from .._structure import join

if TYPE_CHECKING:
    from .._plugin_context import PluginContext

__all__ = ["HeaderCache", "already_authenticated", "anonymous_identity", "authenticate", "resolve_anonymous"]


def _plugin_paths(config: Any) -> Iterator[tuple[str, Any]]:
    for pi, pc in enumerate(config.plugins):
        yield join("plugins", pi), pc
    for si, sc in enumerate(config.services):
        spath = join("services", si)
        for pi, pc in enumerate(sc.plugins):
            yield join(join(spath, "plugins"), pi), pc
        for ri, rc in enumerate(sc.routes):
            for pi, pc in enumerate(rc.plugins):
                yield join(join(join(join(spath, "routes"), ri), "plugins"), pi), pc
    for ci, cc in enumerate(config.consumers):
        for pi, pc in enumerate(cc.plugins):
            yield join(join(join("consumers", ci), "plugins"), pi), pc


def resolve_anonymous(context: PluginContext, filter_name: str, anonymous: str | None) -> Any:
    """The anonymous consumer's config, or ``None`` when ``anonymous`` is not set.

    Raises:
        ConfigError: no consumer has that id, username or custom_id; lists
            every auth plugin of the config that names a missing consumer,
            with its path.
    """
    if anonymous is None:
        return None
    consumer = context.consumers.get(anonymous)
    if consumer is not None:
        return consumer
    # The plugins whose ``anonymous`` option names a consumer (Kong's auth plugins' meaning): they
    # say so themselves (``BasePlugin.anonymous_option``), so a third-party auth plugin counts too.
    auth_plugins = {filter_name} | {
        str(getattr(f, "name", "")) for f in context.plugins if getattr(f, "anonymous_option", False)
    }
    errors = []
    for path, pc in _plugin_paths(context.config):
        value = pc.config.get("anonymous") if isinstance(pc.config, Mapping) else None
        if pc.name in auth_plugins and isinstance(value, str) and value not in context.consumers:
            errors.append(FieldError(join(join(path, "config"), "anonymous"), f"no consumer {value!r}"))
    if not errors:
        errors.append(FieldError(f"{filter_name}.config.anonymous", f"no consumer {anonymous!r}"))
    raise ConfigError(errors)


def already_authenticated(request: Request) -> bool:
    """An earlier filter established a real (not anonymous) identity."""
    identity = request.identity
    return identity is not None and not getattr(identity, "anonymous", False)


def anonymous_identity(consumer: Any) -> Identity:
    return Identity(
        subject=consumer.username or consumer.id or consumer.custom_id or "",
        consumer=consumer.key,
        anonymous=True,
        groups=frozenset(consumer.groups),
    )


class HeaderCache:
    """Identity header pairs per (identity, consumer), for identities the verifier caches.

    Keyed by the identity object's id, checked by identity (of both), bounded by clearing when
    full.  Each entry holds its identity, so its id is not reused while the entry lives.
    """

    __slots__ = ("_entries", "_size")

    def __init__(self, size: int = 10_000) -> None:
        self._entries: dict[int, tuple[Identity, Any, list[tuple[bytes, bytes]]]] = {}
        self._size = size

    def pairs(self, identity: Identity, consumer: Any) -> list[tuple[bytes, bytes]]:
        entry = self._entries.get(id(identity))
        if entry is not None and entry[0] is identity and entry[1] is consumer:
            return entry[2]
        pairs = identity_header_pairs(identity, consumer)
        if len(self._entries) >= self._size:
            self._entries.clear()
        self._entries[id(identity)] = (identity, consumer, pairs)
        return pairs


def authenticate(
    request: Request, identity: Identity, consumer: Any, cache: HeaderCache | None = None
) -> None:
    """Record who made the request and send it upstream in the identity headers."""
    request.identity = identity
    request.consumer = consumer
    if cache is None:
        pairs = identity_header_pairs(identity, consumer)
    else:
        # ``cache.pairs``, its hit inline (every request of a cached token takes it).
        entry = cache._entries.get(id(identity))
        if entry is not None and entry[0] is identity and entry[1] is consumer:
            pairs = entry[2]
        else:
            pairs = cache.pairs(identity, consumer)
    # ``set_identity_headers`` with its pairs given: replace whatever identity headers are there.
    headers = request.headers
    strip_identity_headers(headers)
    headers.raw.extend(pairs)
