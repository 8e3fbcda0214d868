"""``rbac``: enforce role- and scope-based access rules after authentication.

The rules, the role hierarchy and the claim paths are the policy engine's
(``gatekeep.authz``, where the theory of operation is); this plugin runs a
``Policy`` on every request of the routes it is attached to::

    [[services.routes.plugins]]
    name = "rbac"
    config.hierarchy = { admin = ["user"] }
    config.rules = [
      { methods = ["GET"], any_of = ["admin"] },
      { methods = ["POST"], any_of = ["user"] },
    ]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from gatekeep import BasePlugin, ConsumerConfig, Identity, Request, Response
from gatekeep.authz import Policy, RbacConfig

__all__ = ["RbacFilter"]


class RbacFilter(BasePlugin[RbacConfig]):
    """Enforce ``rules`` after authentication (priority 950, Kong's ``acl``)."""

    name: ClassVar[str] = "rbac"
    priority: ClassVar[int] = 950

    def __init__(self, config: RbacConfig | None = None) -> None:
        super().__init__(config)
        self.policy = Policy(self.config)
        self._authorize = self.policy.authorize
        # Methods already allowed, per identity object and consumer (a verifier's cache hands out
        # the same identity for every request of a token; consumers are frozen config objects).
        # Only when the decision is the method's, the identity's and the consumer's alone: no rule
        # looks at the path.  A consumer of another kind (a plugin's own object, whose groups could
        # change) is decided afresh on every request when its groups count (``groups_as_roles``).
        self._allowed: dict[int, tuple[Identity, Any, set[str]]] = {}
        self._remembers = not self.policy.reads_paths
        self._consumer_free = not self.config.groups_as_roles

    async def on_request(self, request: Request) -> Response | None:
        return self._check(request)

    def _fast_request_phase(self) -> Callable[[Request], Response | None] | None:
        """``_check`` itself for the chain (no coroutine), unless a subclass changed ``on_request``."""
        return self._check if type(self).on_request is RbacFilter.on_request else None

    def _check(self, request: Request) -> Response | None:
        """The request phase; it never waits."""
        identity = request.identity
        consumer = request.consumer
        entry = self._allowed.get(id(identity))
        if entry is not None and entry[0] is identity and entry[1] is consumer and request.method in entry[2]:
            return None
        # The ``Authorizer`` call (one signature with ``gatekeep.service``); raises with the reasons.
        self._authorize(
            identity if isinstance(identity, Identity) else None,
            request.method,
            request.path,
            () if consumer is None else getattr(consumer, "groups", ()),
        )
        if (
            self._remembers
            and isinstance(identity, Identity)
            and (consumer is None or self._consumer_free or type(consumer) is ConsumerConfig)
        ):
            self._remember(identity, consumer, request.method)
        return None

    def _remember(self, identity: Identity, consumer: Any, method: str) -> None:
        entry = self._allowed.get(id(identity))
        if entry is None or entry[0] is not identity or entry[1] is not consumer:
            if len(self._allowed) >= _MAX_REMEMBERED:
                self._allowed.clear()
            # Holding both: their ids are not reused while the entry lives.
            entry = self._allowed[id(identity)] = (identity, consumer, set())
        entry[2].add(method)  # a method some rule allowed: bounded by the methods the rules name


# Identities whose allowed methods are kept (as many as the jwt plugin's verified-token cache).
_MAX_REMEMBERED = 10_000
