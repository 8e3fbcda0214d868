"""``authz``: ask an ``Authorizer`` given to the gateway, without writing a filter.

``Gateway(config, authorizers={"orders-policy": MyAuthorizer()})`` names an
authorizer; a plugin entry picks it by name::

    [[services.routes.plugins]]
    name = "authz"
    config.authorizer = "orders-policy"

Every request of the plugin's scope is put to ``authorize(identity, method,
path)`` (the normalised path), after authentication: ``request.identity``,
or ``None`` for a request no auth plugin identified.  Returning lets the
request through; ``Forbidden`` is a 403 and ``AuthError`` a 401, answered
as raised.  The ``rbac`` plugin is the built-in ``Authorizer`` (a
``gatekeep.authz.Policy`` from its config); this plugin runs any other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import attrs

from gatekeep import Authorizer, BasePlugin, Identity, Request, Response, named_part, validators

if TYPE_CHECKING:
    from gatekeep import PluginContext

__all__ = ["AuthzConfig", "AuthzFilter"]


@attrs.frozen
class AuthzConfig:
    """Attributes:
    authorizer: the name given in ``Gateway(authorizers={...})``.
    """

    authorizer: str = attrs.field(validator=validators.non_empty)


class AuthzFilter(BasePlugin[AuthzConfig]):
    """Any ``Authorizer`` as a plugin (priority 940: after the auth plugins and ``rbac``)."""

    name: ClassVar[str] = "authz"
    priority: ClassVar[int] = 940

    def __init__(self, config: AuthzConfig | None = None) -> None:
        super().__init__(config)
        self.authorizer: Authorizer | None = None

    def bind(self, context: PluginContext) -> None:
        """Find the named authorizer.

        Raises:
            ConfigError: the gateway was given no authorizer of that name.
        """
        self.authorizer = named_part(
            context.authorizers,
            self.config.authorizer,
            path=f"{self.name}.config.authorizer",
            what="authorizer",
            argument="authorizers",
        )

    async def on_request(self, request: Request) -> Response | None:
        authorizer = self.authorizer
        if authorizer is None:
            raise RuntimeError("the authz plugin was not bound to a gateway")
        identity = request.identity
        authorizer.authorize(
            identity if isinstance(identity, Identity) else None, request.method, request.path
        )
        return None
