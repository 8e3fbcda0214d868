"""The verified client certificate of a request, and the names it vouches for.

The gateway does not terminate TLS; its server does (``gatekeep serve``'s
front server, gunicorn, ...), and has already verified the client's
certificate against its CA.  This module
only *reads* that certificate where the server put it:

* the ASGI TLS extension (``scope["extensions"]["tls"]``, kept in
  ``request.state["tls"]``): ``client_cert_chain`` = PEM strings, leaf first;
  a single PEM string as in the 0.3 draft; or ``client_cert`` as DER bytes.
  ``gatekeep serve`` with ``[server.tls]`` fills it; no released third-party
  ASGI server we test (uvicorn 0.54, hypercorn 0.18, granian 2.8) does yet:
  see ``docs/authorization.md``.
* the WSGI environ (``request.state["wsgi.environ"]``): gunicorn's
  ``gunicorn.socket`` (an ``ssl.SSLSocket`` when gunicorn terminates TLS), or
  Apache ``mod_ssl``'s ``SSL_CLIENT_VERIFY=SUCCESS`` with ``SSL_CLIENT_CERT``
  (``SSLOptions +ExportCertData``).  Server variables, never request headers.

Used by the ``mtls-auth`` plugin and by ``gatekeep.service`` (to prove that a
request comes from the gateway).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any, Literal

import attrs
from cryptography import x509
from cryptography.x509.oid import NameOID

from .._http import Request

__all__ = [
    "CertificateNames",
    "NameKind",
    "certificate_names",
    "peer_certificate",
    "peer_certificate_from_environ",
    "peer_certificate_from_tls",
]

NameKind = Literal["san_uri", "san_dns", "san_email", "cn"]


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
