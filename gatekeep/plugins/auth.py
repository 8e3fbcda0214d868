"""``auth``: run an ``Authenticator`` given to the gateway, without writing a filter.

``Gateway(config, authenticators={"corp-sso": MyAuthenticator()})`` names an
authenticator; a plugin entry picks it by name::

    [[plugins]]
    name = "auth"
    config.authenticator = "corp-sso"

The authenticator's identity becomes ``request.identity``; when its
``Identity.consumer`` names a consumer (id, username or custom_id), that
consumer becomes ``request.consumer`` (its consumer-scoped plugins then run);
the identity headers go upstream as with ``jwt`` and ``key-auth``.  No
credential (``None``) is a 401; an ``AuthError`` from the authenticator is
answered as it is.  ``anonymous`` has Kong's meaning, as in the other auth
plugins (``gatekeep.auth``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from gatekeep import (
    Authenticator,
    AuthError,
    BasePlugin,
    Request,
    Response,
    named_part,
    validators,
)
from gatekeep.auth import (
    HeaderCache,
    MissingCredentials,
    already_authenticated,
    anonymous_identity,
    authenticate,
    resolve_anonymous,
)

if TYPE_CHECKING:
    from gatekeep import PluginContext

__all__ = ["AuthConfig", "AuthFilter"]


@attrs.frozen
class AuthConfig:
    """Attributes:
    authenticator: the name given in ``Gateway(authenticators={...})``.
    anonymous: consumer (id, username or custom_id) for requests without a valid credential.
    realm: for the ``WWW-Authenticate`` challenge of a request without credentials.
    """

    authenticator: str = attrs.field(validator=validators.non_empty)
    anonymous: str | None = None
    realm: str | None = None


class AuthFilter(BasePlugin[AuthConfig]):
    """Any ``Authenticator`` as a plugin (priority 1050: after the built-in auth plugins)."""

    name: ClassVar[str] = "auth"
    priority: ClassVar[int] = 1050
    anonymous_option: ClassVar[bool] = True

    def __init__(self, config: AuthConfig | None = None) -> None:
        super().__init__(config)
        self.authenticator: Authenticator | None = None
        self.anonymous: Any = None
        self.consumers: Mapping[str, Any] = {}
        self.header_cache = HeaderCache()

    def bind(self, context: PluginContext) -> None:
        """Find the named authenticator and the consumers.

        Raises:
            ConfigError: the gateway was given no authenticator of that name.
        """
        self.authenticator = named_part(
            context.authenticators,
            self.config.authenticator,
            path=f"{self.name}.config.authenticator",
            what="authenticator",
            argument="authenticators",
        )
        self.consumers = context.consumers
        self.anonymous = resolve_anonymous(context, self.name, self.config.anonymous)

    async def on_request(self, request: Request) -> Response | None:
        authenticator = self.authenticator
        if authenticator is None:
            raise RuntimeError("the auth plugin was not bound to a gateway")
        anonymous = self.anonymous
        if anonymous is not None and already_authenticated(request):
            return None
        try:
            identity = await authenticator.authenticate(request)
            if identity is None:
                raise MissingCredentials("no credentials in the request", realm=self.config.realm)
        except AuthError:
            if anonymous is None:
                raise
            authenticate(request, anonymous_identity(anonymous), anonymous)
            return None
        consumer = self.consumers.get(identity.consumer) if identity.consumer is not None else None
        authenticate(request, identity, consumer, self.header_cache)
        return None
