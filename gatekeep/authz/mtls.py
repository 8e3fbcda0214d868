"""``mtls-auth``: a consumer from the client certificate the TLS server verified.

gatekeep does not terminate TLS itself; the server in front of it does, and
has already verified the client's certificate against its CA (``cert_reqs``
required).  This module only *reads* that verified certificate and maps its
names to a consumer, as Kong's ``mtls-auth`` does.  Where it finds the
certificate (``peer_certificate``):

* ``request.state["tls"]``: the ASGI TLS extension (``scope["extensions"]["tls"]``,
  ``client_cert_chain`` = PEM strings, leaf first; a single PEM string as in
  the 0.3 draft; or ``client_cert`` as DER bytes).  No released ASGI server
  we test (uvicorn 0.54, hypercorn 0.18, granian 2.8) fills it yet: see
  ``docs/authorization.md``.
* ``request.state["wsgi.environ"]``: gunicorn's ``gunicorn.socket`` (an
  ``ssl.SSLSocket`` when gunicorn terminates TLS), or Apache ``mod_ssl``'s
  ``SSL_CLIENT_VERIFY=SUCCESS`` with ``SSL_CLIENT_CERT`` (``SSLOptions
  +ExportCertData``).  Server variables, never request headers.

Names of a certificate, tried in the order of ``match``: ``san_uri``
(SPIFFE IDs), ``san_dns``, ``san_email``, ``cn`` (the subject's common name).
The first that names a consumer (by ``consumer_by``: username, custom_id,
id) wins.  With ``skip_consumer_lookup`` the identity is the certificate's
first name, with the subject CN (or the whole DN) as its group, for ``rbac``.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import attrs
from cryptography import x509
from cryptography.x509.oid import NameOID

from .._errors import AuthError
from .._filter import BaseFilter
from .._http import Request, Response
from .._protocols import Identity

__all__ = [
    "CertificateNames",
    "MTLSAuthConfig",
    "MTLSAuthFilter",
    "MTLSAuthenticator",
    "NoClientCertificate",
    "UnknownClientCertificate",
    "certificate_names",
    "peer_certificate",
    "peer_certificate_from_environ",
    "peer_certificate_from_tls",
]

NameKind = Literal["san_uri", "san_dns", "san_email", "cn"]


class NoClientCertificate(AuthError):
    """The request came without a verified client certificate (401)."""

    slug = "no-client-certificate"


class UnknownClientCertificate(AuthError):
    """The certificate is valid but names no consumer (401)."""

    slug = "unknown-client-certificate"


@attrs.frozen
class CertificateNames:
    """The names a certificate vouches for."""

    uris: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    cn: str | None = None
    dn: str = ""

    def of(self, kind: NameKind) -> tuple[str, ...]:
        if kind == "san_uri":
            return self.uris
        if kind == "san_dns":
            return self.dns
        if kind == "san_email":
            return self.emails
        return (self.cn,) if self.cn else ()

    def all(self) -> frozenset[str]:
        return frozenset((*self.uris, *self.dns, *self.emails, *((self.cn,) if self.cn else ())))


def certificate_names(cert: x509.Certificate) -> CertificateNames:
    """The SAN entries, subject CN and RFC 4514 DN of ``cert``."""
    uris: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        dns = tuple(san.get_values_for_type(x509.DNSName))
        emails = tuple(san.get_values_for_type(x509.RFC822Name))
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = cns[0].value if cns else None
    return CertificateNames(
        uris, dns, emails, cn if isinstance(cn, str) else None, cert.subject.rfc4514_string()
    )


def _load(data: str | bytes) -> x509.Certificate | None:
    try:
        if isinstance(data, str):
            return x509.load_pem_x509_certificate(data.encode("ascii"))
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except (ValueError, UnicodeEncodeError):
        return None


def peer_certificate_from_tls(tls: Mapping[str, Any] | None) -> x509.Certificate | None:
    """The client's leaf certificate from an ASGI TLS extension dict, if any."""
    if not tls:
        return None
    der = tls.get("client_cert")
    if isinstance(der, bytes) and der:
        return _load(der)
    chain = tls.get("client_cert_chain")
    if isinstance(chain, str):
        return _load(chain) if chain else None  # the 0.3 draft: one PEM string, leaf first
    if isinstance(chain, list | tuple) and chain and isinstance(chain[0], str | bytes):
        return _load(chain[0])
    return None


def peer_certificate_from_environ(environ: Mapping[str, Any] | None) -> x509.Certificate | None:
    """The verified client certificate a WSGI server put in ``environ``, if any."""
    if not environ:
        return None
    sock = environ.get("gunicorn.socket")
    if isinstance(sock, ssl.SSLSocket):
        try:
            der = sock.getpeercert(binary_form=True)
        except (ValueError, OSError):
            der = None
        return _load(der) if der else None
    if environ.get("SSL_CLIENT_VERIFY") == "SUCCESS":
        pem = environ.get("SSL_CLIENT_CERT")
        if isinstance(pem, str) and pem:
            return _load(pem)
    return None


def peer_certificate(request: Request) -> x509.Certificate | None:
    """The verified client certificate of ``request`` (see the module comment)."""
    state = request.state
    cert = peer_certificate_from_tls(state.get("tls"))
    if cert is None:
        cert = peer_certificate_from_environ(state.get("wsgi.environ"))
    return cert


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
        consumers: the consumers to match against (``gateway.consumers`` or
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
            return Identity(subject=first, credential=credential, groups=groups, claims=_claims(names)), None
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
                        claims=_claims(names),
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


def _claims(names: CertificateNames) -> dict[str, Any]:
    return {"dn": names.dn, "cn": names.cn, "san_uri": list(names.uris), "san_dns": list(names.dns)}


class MTLSAuthFilter(BaseFilter):
    """``mtls-auth`` (priority 1600, before ``jwt`` and ``key-auth``)."""

    name: ClassVar[str] = "mtls-auth"
    priority: ClassVar[int] = 1600
    Config = MTLSAuthConfig

    def __init__(self, config: MTLSAuthConfig | None = None) -> None:
        super().__init__(config)
        self.authenticator = MTLSAuthenticator(self.config)
        self._anonymous: Any = None

    def bind(self, gateway: Any) -> None:
        consumers: Mapping[str, Any] = gateway.consumers
        self.authenticator.bind(consumers)
        from ..auth._anonymous import resolve_anonymous

        # Names every auth plugin with a missing anonymous consumer, with its path.
        self._anonymous = resolve_anonymous(gateway, self.name, self.config.anonymous)

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
        from ..auth import set_identity_headers

        set_identity_headers(request.headers, identity, request.consumer)
        return None
