"""``mtls-auth``: a consumer from the client certificate the TLS server verified.

The TLS server has already verified the client's certificate against its CA:
``gatekeep serve`` with ``[server.tls]`` (``verify_client = "optional"`` or
``"required"``), or gunicorn / Apache in front of ``gatekeep.wsgi``.  This
module only *reads* that verified certificate and maps its names to a
consumer, as Kong's ``mtls-auth`` does.  Where it finds the certificate:
``gatekeep.auth.peer_certificate`` (the ASGI TLS extension, which ``gatekeep
serve`` fills, or the WSGI server's variables; never request headers).

Names of a certificate, tried in the order of ``match``: ``san_uri``
(SPIFFE IDs), ``san_dns``, ``san_email``, ``cn`` (the subject's common name).
The first that names a consumer (by ``consumer_by``: username, custom_id,
id) wins.  With ``skip_consumer_lookup`` the identity is the certificate's
first name, with the subject CN (or the whole DN) as its group, for ``rbac``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from gatekeep import AuthError, BasePlugin, Identity, Request, Response
from gatekeep.auth import (
    CertificateNames,
    NameKind,
    certificate_names,
    peer_certificate,
    resolve_anonymous,
    set_identity_headers,
)

if TYPE_CHECKING:
    from gatekeep import PluginContext

__all__ = [
    "MTLSAuthConfig",
    "MTLSAuthFilter",
    "MTLSAuthenticator",
    "NoClientCertificate",
    "UnknownClientCertificate",
]


class NoClientCertificate(AuthError):
    """The request came without a verified client certificate (401)."""

    slug = "no-client-certificate"


class UnknownClientCertificate(AuthError):
    """The certificate is valid but names no consumer (401)."""

    slug = "unknown-client-certificate"


def _kinds(_: Any, attribute: Any, value: tuple[str, ...]) -> None:
    if not value:
        raise ValueError("needs at least one entry")


@attrs.frozen
class MTLSAuthConfig:
    """Kong's ``mtls-auth`` fields (CA and revocation checks stay with the TLS server).

    Attributes:
        consumer_by: consumer fields a certificate name is matched against.
        match: certificate names to try, in order.
        skip_consumer_lookup: no consumer; the identity is the certificate itself.
        authenticated_group_by: with ``skip_consumer_lookup``, the identity's
            group is the subject ``CN`` or the whole ``DN`` (or none).
        anonymous: consumer (username or id) for requests without a certificate.
    """

    consumer_by: tuple[Literal["username", "custom_id", "id"], ...] = attrs.field(
        default=("username", "custom_id"), validator=_kinds
    )
    match: tuple[NameKind, ...] = attrs.field(default=("san_uri", "san_dns", "cn"), validator=_kinds)
    skip_consumer_lookup: bool = False
    authenticated_group_by: Literal["CN", "DN"] | None = "CN"
    anonymous: str | None = None


class MTLSAuthenticator:
    """An ``Authenticator``: the identity of a request's verified client certificate.

    Args:
        config: what to match.
        consumers: the consumers to match against (``context.consumers`` or
            any mapping of key to an object with ``id``/``username``/``custom_id``/``groups``).
    """

    def __init__(
        self, config: MTLSAuthConfig | None = None, consumers: Mapping[str, Any] | None = None
    ) -> None:
        self.config = config if config is not None else MTLSAuthConfig()
        self.index: dict[str, Any] = {}
        self.bind(consumers or {})

    def bind(self, consumers: Mapping[str, Any]) -> None:
        index: dict[str, Any] = {}
        for consumer in consumers.values():
            for field in self.config.consumer_by:
                value = getattr(consumer, field, None)
                if value:
                    index.setdefault(str(value), consumer)
        self.index = index

    def identify(self, cert: x509.Certificate) -> tuple[Identity, Any]:
        """The identity (and consumer) ``cert`` proves.

        Raises:
            UnknownClientCertificate: no name of it matches a consumer.
        """
        names = certificate_names(cert)
        credential = f"{cert.serial_number:x}"
        config = self.config
        if config.skip_consumer_lookup:
            first = next((n for kind in config.match for n in names.of(kind)), None)
            if first is None:
                raise UnknownClientCertificate("the client certificate has none of the configured names")
            group = {"CN": names.cn, "DN": names.dn, None: None}[config.authenticated_group_by]
            groups = frozenset({group}) if group else frozenset()
            return Identity(
                subject=first, credential=credential, groups=groups, claims=_claims(names, cert)
            ), None
        for kind in config.match:
            for name in names.of(kind):
                consumer = self.index.get(name)
                if consumer is not None:
                    key = getattr(consumer, "key", None) or name
                    identity = Identity(
                        subject=name,
                        consumer=key,
                        credential=credential,
                        groups=frozenset(getattr(consumer, "groups", ()) or ()),
                        claims=_claims(names, cert),
                    )
                    return identity, consumer
        raise UnknownClientCertificate("the client certificate names no known consumer")

    async def authenticate(self, request: Request) -> Identity | None:
        cert = peer_certificate(request)
        if cert is None:
            return None
        identity, consumer = self.identify(cert)
        if consumer is not None:
            request.consumer = consumer
        return identity


def _claims(names: CertificateNames, cert: x509.Certificate) -> dict[str, Any]:
    return {
        "dn": names.dn,
        "cn": names.cn,
        "san_uri": list(names.uris),
        "san_dns": list(names.dns),
        "san_email": list(names.emails),
        "serial": f"{cert.serial_number:x}",
        # What a revocation or pinning rule compares: the SHA-256 of the DER certificate.
        "fingerprint_sha256": cert.fingerprint(hashes.SHA256()).hex(),
    }


class MTLSAuthFilter(BasePlugin[MTLSAuthConfig]):
    """``mtls-auth`` (priority 1600, before ``jwt`` and ``key-auth``)."""

    name: ClassVar[str] = "mtls-auth"
    priority: ClassVar[int] = 1600
    anonymous_option: ClassVar[bool] = True

    def __init__(self, config: MTLSAuthConfig | None = None) -> None:
        super().__init__(config)
        self.authenticator = MTLSAuthenticator(self.config)
        self._anonymous: Any = None

    def bind(self, context: PluginContext) -> None:
        consumers: Mapping[str, Any] = context.consumers
        self.authenticator.bind(consumers)
        # Names every auth plugin with a missing anonymous consumer, with its path.
        self._anonymous = resolve_anonymous(context, self.name, self.config.anonymous)

    async def on_request(self, request: Request) -> Response | None:
        if request.identity is not None:
            return None  # an earlier authenticator already decided
        identity = await self.authenticator.authenticate(request)
        if identity is None:
            anonymous = self._anonymous
            if anonymous is None:
                raise NoClientCertificate("no verified client certificate was presented")
            request.consumer = anonymous
            identity = Identity(
                subject=anonymous.key,
                consumer=anonymous.key,
                groups=frozenset(anonymous.groups),
                anonymous=True,
            )
        request.identity = identity
        # The service behind learns who called through Kong's identity headers.
        set_identity_headers(request.headers, identity, request.consumer)
        return None
