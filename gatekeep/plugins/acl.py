"""``acl``: allow or deny consumers by group (Kong's plugin).

Consumers carry ``acls = [{group = "admins"}]`` (``AclGroup``, Kong's shape as
decK writes it), a credential field this plugin declares; a consumer's groups
are those entries plus its ``groups``.  The plugin runs after authentication
(priority 950) on the consumer an auth plugin found (the ``anonymous``
consumer included).

Fields (Kong's): ``allow`` or ``deny`` (group names; exactly one of them),
``hide_groups_header`` (do not send ``X-Consumer-Groups`` upstream), and
``always_use_authenticated_groups`` (decide on the groups the authentication
gave — a token's ``groups_claim``, ``Identity.groups`` — when there are any,
instead of the consumer's).  Without that flag the consumer's groups decide,
and the authenticated groups only when no consumer was identified.

Answers: no consumer and no authenticated groups, 401 (nothing authenticated
the request, or the route has no auth plugin); a group list that the rules
refuse, 403 "You cannot consume this service" (problem+json).  A consumer
allowed through has ``X-Consumer-Groups: <its groups, sorted>`` upstream (a
client's own header of that name never reaches the upstream: identity headers
are the gateway's).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from gatekeep import AuthError, BasePlugin, Forbidden, Request, Response, validators

if TYPE_CHECKING:
    from gatekeep import PluginContext

__all__ = ["AclConfig", "AclFilter", "AclGroup"]

_GROUPS_HEADER = b"x-consumer-groups"


def _group(_: Any, attribute: Any, value: str) -> None:
    control = any(ord(c) < 0x20 or c == "\x7f" for c in value)
    if not value or value != value.strip() or "," in value or control:
        raise ValueError(f"{value!r} is not a group name (no commas, control characters or outer spaces)")


def _groups(_: Any, attribute: Any, value: tuple[str, ...]) -> None:
    for name in value:
        _group(None, attribute, name)


@attrs.frozen
class AclGroup:
    """One group of a consumer (Kong's ``acls`` entry)."""

    kong_names: ClassVar[Mapping[str, str]] = validators.kong_fields("group", "id", "tags")

    # The group's name: no commas, control characters or outer spaces.
    group: str = attrs.field(validator=_group)
    id: str | None = None
    tags: tuple[str, ...] = ()


@attrs.frozen
class AclConfig:
    kong_names: ClassVar[Mapping[str, str]] = validators.kong_fields(
        "allow", "deny", "hide_groups_header", "always_use_authenticated_groups"
    )

    # Groups that may pass; a consumer in none of them is refused (403).  Exactly one of allow and deny.
    allow: tuple[str, ...] = attrs.field(default=(), validator=_groups)
    # Groups that may not pass.
    deny: tuple[str, ...] = attrs.field(default=(), validator=_groups)
    # Do not send X-Consumer-Groups upstream.
    hide_groups_header: bool = False
    # Decide on the groups the authentication gave (a token's groups claim), when there are any.
    always_use_authenticated_groups: bool = False

    def __attrs_post_init__(self) -> None:
        if attrs.validators.get_disabled():
            return
        if bool(self.allow) == bool(self.deny):
            raise ValueError("set exactly one of 'allow' and 'deny' (a non-empty list of groups)")


class AclFilter(BasePlugin[AclConfig]):
    name: ClassVar[str] = "acl"
    priority: ClassVar[int] = 950
    config: AclConfig
    consumer_credentials: ClassVar[Mapping[str, type[Any]]] = {"acls": AclGroup}

    def __init__(self, config: AclConfig | None = None) -> None:
        super().__init__(config)
        self.allow = frozenset(self.config.allow)
        self.deny = frozenset(self.config.deny)
        # consumer key -> (its groups, the X-Consumer-Groups value), made in bind
        self.consumers: dict[str, tuple[frozenset[str], bytes]] = {}

    def bind(self, context: PluginContext) -> None:
        for consumer in context.config.consumers:
            entries: tuple[AclGroup, ...] = consumer.credentials.get("acls", ())
            groups = frozenset(consumer.groups) | {e.group for e in entries}
            self.consumers[consumer.key] = (groups, _header(groups))

    def allowed(self, groups: frozenset[str]) -> bool:
        """Whether a consumer of ``groups`` passes (Kong's rules: deny wins, allow needs one)."""
        if self.deny:
            return self.deny.isdisjoint(groups)
        return not self.allow.isdisjoint(groups)

    def _groups(self, request: Request) -> tuple[frozenset[str], bytes] | None:
        consumer = request.consumer
        identity = request.identity
        authenticated = identity.groups if identity is not None else frozenset()
        if authenticated and (consumer is None or self.config.always_use_authenticated_groups):
            return frozenset(authenticated), _header(authenticated)
        if consumer is None:
            return None
        found = self.consumers.get(consumer.key)
        if found is None:  # a consumer the config does not hold (set by a third-party plugin)
            groups = frozenset(getattr(consumer, "groups", ()) or ())
            return groups, _header(groups)
        return found

    async def on_request(self, request: Request) -> Response | None:
        found = self._groups(request)
        if found is None:
            raise AuthError("Unauthorized")
        groups, header = found
        if not self.allowed(groups):
            raise Forbidden("You cannot consume this service")
        if self.config.hide_groups_header:
            request.headers.remove(_GROUPS_HEADER)
        elif header:
            request.headers.set(_GROUPS_HEADER, header)
        return None


def _header(groups: frozenset[str]) -> bytes:
    return ", ".join(sorted(groups)).encode("utf-8", "replace")
