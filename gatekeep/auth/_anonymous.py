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
  the field's path).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .._errors import ConfigError, FieldError
from .._http import Request
from .._protocols import Identity
from .._structure import join
from ._identity_headers import set_identity_headers

if TYPE_CHECKING:
    from .._gateway import Gateway

__all__ = ["already_authenticated", "anonymous_identity", "authenticate", "resolve_anonymous"]


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


def resolve_anonymous(gateway: Gateway, filter_name: str, anonymous: str | None) -> Any:
    """The anonymous consumer's config, or ``None`` when ``anonymous`` is not set.

    Raises:
        ConfigError: no consumer has that id, username or custom_id; lists
            every such plugin of the config with its path.
    """
    if anonymous is None:
        return None
    consumer = gateway.consumers.get(anonymous)
    if consumer is not None:
        return consumer
    errors = []
    for path, pc in _plugin_paths(gateway.config):
        value = pc.config.get("anonymous") if isinstance(pc.config, Mapping) else None
        if pc.name == filter_name and isinstance(value, str) and value not in gateway.consumers:
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


def authenticate(request: Request, identity: Identity, consumer: Any) -> None:
    """Record who made the request and send it upstream in the identity headers."""
    request.identity = identity
    request.consumer = consumer
    set_identity_headers(request.headers, identity, consumer)
