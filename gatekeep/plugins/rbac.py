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

from typing import ClassVar

from gatekeep import BasePlugin, Identity, Request, Response
from gatekeep.authz import Policy, RbacConfig

__all__ = ["RbacFilter"]


class RbacFilter(BasePlugin[RbacConfig]):
    """Enforce ``rules`` after authentication (priority 950, Kong's ``acl``)."""

    name: ClassVar[str] = "rbac"
    priority: ClassVar[int] = 950

    def __init__(self, config: RbacConfig | None = None) -> None:
        super().__init__(config)
        self.policy = Policy(self.config)

    async def on_request(self, request: Request) -> Response | None:
        identity = request.identity
        consumer = request.consumer
        groups = getattr(consumer, "groups", ()) if consumer is not None else ()
        # The ``Authorizer`` call (one signature with ``gatekeep.service``); raises with the reasons.
        self.policy.authorize(
            identity if isinstance(identity, Identity) else None, request.method, request.path, groups
        )
        return None
