"""TLS termination for the front server: the ``[server.tls]`` table, its contexts, their reload.

Theory of operation
-------------------

asyncio takes one ``ssl.SSLContext`` when the server starts listening, for
good.  That *listening* context never serves a certificate of its own choice:
its ``sni_callback`` runs on every ClientHello (with ``server_name=None`` when
the client sent no SNI) and points the handshake at the context of the current
``_Contexts`` that matches the name (exact name, then a ``*.`` wildcard one
label deep, then the default certificate).  A reload builds a whole new
``_Contexts`` from the files and swaps one reference: handshakes from then on
get the new certificates (and the new client CA), connections already open
keep theirs.  A reload that fails (a missing file, a key that does not match,
half a PEM written) keeps the old contexts and logs the error; so does the
first load, except that there it is a config error and the server does not
start.

OpenSSL takes the verify mode and the minimum version from the context a
connection was created with (the listening one), the certificate, key and
trust store from the one the callback chose: all of them are built from the
same settings, which are read once, so they agree.

Reloads come from SIGHUP (the server's job) and from ``watch``, which looks
at the files' modification times every ``reload_interval`` seconds.

The verified client certificate reaches the app as the ASGI TLS extension
(``scope["extensions"]["tls"]``), built once per connection by
``tls_extension``: ``client_cert_chain`` (PEM strings, leaf first) is what
``gatekeep.auth.peer_certificate`` and so ``mtls-auth`` read.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable
from typing import Any, Final, Literal

import attrs
from cryptography import x509

from .. import validators
from .._errors import ConfigError
from .._structure import Errors, join

__all__ = ["CertificateSettings", "TLSSettings", "TLSTerminator", "check_tls", "tls_extension"]

log = logging.getLogger("gatekeep.serve")

VerifyClient = Literal["none", "optional", "required"]

_VERIFY: Final = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_MIN_VERSION: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# The ASGI TLS extension's tls_version: the protocol's code point.
_VERSION_CODES: Final = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
_ALPN: Final = ["http/1.1"]


def _server_names(_: Any, attribute: Any, value: tuple[str, ...]) -> None:
    for name in value:
        label = name[2:] if name.startswith("*.") else name
        if not label or "*" in label or not all(c.isalnum() or c in "-." for c in label):
            raise ValueError(f"expected a host name or *.domain, got {name!r}")


@attrs.frozen
class CertificateSettings:
    """One more certificate, served to the clients that ask for one of its names (SNI).

    Attributes:
        cert_file: PEM certificate chain, leaf first.
        key_file: PEM private key (unencrypted) of the leaf.
        server_names: host names (``api.example.com``, ``*.example.com``) it serves;
            empty: the DNS names of the certificate's subjectAltName.
    """

    cert_file: str = attrs.field(validator=validators.non_empty)
    key_file: str = attrs.field(validator=validators.non_empty)
    server_names: tuple[str, ...] = attrs.field(default=(), validator=_server_names)


@attrs.frozen
class TLSSettings:
    """The ``[server.tls]`` table: HTTPS on ``gatekeep serve``'s port.

    Attributes:
        cert_file: PEM certificate chain (leaf first) served by default.
        key_file: PEM private key (unencrypted) of that certificate.
        client_ca_file: PEM CA certificates client certificates are verified against.
        verify_client: ``none`` (no client certificate asked for), ``optional`` (asked
            for; a client without one is let through for ``mtls-auth`` to decide, a
            certificate that does not verify is refused in the handshake) or
            ``required`` (a client without a valid one is refused in the handshake).
        min_version: the lowest TLS version accepted.
        certificates: more certificates, chosen by the name the client asks for (SNI).
        reload_interval: seconds between two looks at the files' modification times
            (a change reloads them); 0: only on SIGHUP.
        handshake_timeout: seconds for a client to finish the TLS handshake.
    """

    cert_file: str = attrs.field(validator=validators.non_empty)
    key_file: str = attrs.field(validator=validators.non_empty)
    client_ca_file: str | None = attrs.field(default=None, validator=validators.non_empty)
    verify_client: VerifyClient = "none"
    min_version: Literal["1.2", "1.3"] = "1.2"
    certificates: tuple[CertificateSettings, ...] = ()
    reload_interval: float = attrs.field(default=10.0, validator=validators.non_negative)
    handshake_timeout: float = attrs.field(default=10.0, validator=validators.positive)

    def __attrs_post_init__(self) -> None:
        if self.verify_client != "none" and self.client_ca_file is None:
            raise ValueError(f'verify_client = "{self.verify_client}" needs client_ca_file')
        if self.verify_client == "none" and self.client_ca_file is not None:
            # A CA that is never asked for would look like mTLS and be none.
            raise ValueError('client_ca_file is set but verify_client = "none": say "optional" or "required"')

    def files(self) -> tuple[str, ...]:
        """Every file the contexts are built from (what a reload watches)."""
        files = [self.cert_file, self.key_file]
        files += (f for c in self.certificates for f in (c.cert_file, c.key_file))
        if self.client_ca_file is not None:
            files.append(self.client_ca_file)
        return tuple(files)


class _Contexts:
    """The contexts built from one reading of the files: the default one, and by server name."""

    __slots__ = ("default", "exact", "wildcard")

    def __init__(
        self, default: ssl.SSLContext, exact: dict[str, ssl.SSLContext], wildcard: dict[str, ssl.SSLContext]
    ) -> None:
        self.default = default
        self.exact = exact
        self.wildcard = wildcard  # "example.com" for *.example.com

    def for_name(self, name: str | None) -> ssl.SSLContext:
        if name is None:
            return self.default
        name = name.lower().rstrip(".")
        found = self.exact.get(name)
        if found is None:
            _, _, parent = name.partition(".")
            found = self.wildcard.get(parent, self.default)
        return found


def _read(file: str, path: str, errors: Errors) -> bytes | None:
    try:
        with open(file, "rb") as f:
            return f.read()
    except OSError as exc:
        errors.add(path, f"cannot read {file!r}: {exc.strerror}")
        return None


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise ValueError("encrypted keys are not supported")


def _context(
    settings: TLSSettings, cert_file: str, key_file: str, path: str, errors: Errors
) -> tuple[ssl.SSLContext | None, list[x509.Certificate]]:
    """A server context for one certificate; ``None`` (with errors added) if its files do not load."""
    start = len(errors)
    cert_data = _read(cert_file, join(path, "cert_file"), errors)
    key_data = _read(key_file, join(path, "key_file"), errors)
    certs: list[x509.Certificate] = []
    if cert_data is not None:
        try:
            certs = x509.load_pem_x509_certificates(cert_data)
        except ValueError:
            errors.add(join(path, "cert_file"), f"{cert_file!r} holds no PEM certificate")
    if key_data is not None and b"PRIVATE KEY-----" not in key_data:
        errors.add(join(path, "key_file"), f"{key_file!r} holds no PEM private key")
    if len(errors) != start:
        return None, certs
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _MIN_VERSION[settings.min_version]
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(_ALPN)
    context.verify_mode = _VERIFY[settings.verify_client]
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_password)
    except ValueError:
        errors.add(join(path, "key_file"), f"{key_file!r} is encrypted; give an unencrypted key")
        return None, certs
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            message = f"{key_file!r} is not the key of the certificate in {cert_file!r}"
            errors.add(join(path, "key_file"), message)
        else:
            errors.add(join(path, "key_file"), f"cannot load {key_file!r} with {cert_file!r}: {exc.reason}")
        return None, certs
    except OSError as exc:  # pragma: no cover - read above; a file replaced in between
        errors.add(join(path, "cert_file"), f"cannot read {cert_file!r}: {exc.strerror}")
        return None, certs
    if settings.client_ca_file is not None:
        file = settings.client_ca_file
        try:
            context.load_verify_locations(cafile=file)
        except ssl.SSLError:
            _add_once(errors, "server.tls.client_ca_file", f"{file!r} holds no PEM CA certificate")
            return None, certs
        except OSError as exc:
            _add_once(errors, "server.tls.client_ca_file", f"cannot read {file!r}: {exc.strerror}")
            return None, certs
    return context, certs


def _add_once(errors: Errors, path: str, message: str) -> None:
    # The client CA is loaded into every certificate's context: one error is enough.
    if not any(e.path == path and e.message == message for e in errors):
        errors.add(path, message)


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [name.lower() for name in san.get_values_for_type(x509.DNSName)]


def _load(settings: TLSSettings, path: str = "server.tls") -> _Contexts:
    """Every context ``settings`` names.

    Raises:
        ConfigError: a file is missing or unreadable, not PEM, or a key does not match its certificate.
    """
    errors = Errors()
    default, _ = _context(settings, settings.cert_file, settings.key_file, path, errors)
    exact: dict[str, ssl.SSLContext] = {}
    wildcard: dict[str, ssl.SSLContext] = {}
    for n, entry in enumerate(settings.certificates):
        epath = join(join(path, "certificates"), n)
        context, certs = _context(settings, entry.cert_file, entry.key_file, epath, errors)
        if context is None:
            continue
        names = entry.server_names or tuple(_dns_names(certs[0]))
        if not names:
            message = f"{entry.cert_file!r} names no DNS host: list server_names"
            errors.add(join(epath, "server_names"), message)
        for name in names:
            name = name.lower()
            if name.startswith("*."):
                wildcard.setdefault(name[2:], context)
            else:
                exact.setdefault(name, context)
    if errors or default is None:
        raise ConfigError(errors)
    return _Contexts(default, exact, wildcard)


def check_tls(settings: TLSSettings | None) -> None:
    """Load ``[server.tls]``'s files once, as the server will.

    Raises:
        ConfigError: listing every file problem with its config path.
    """
    if settings is not None:
        _load(settings)


def _mtimes(files: tuple[str, ...]) -> tuple[float, ...]:
    times = []
    for file in files:
        try:
            times.append(os.stat(file).st_mtime)
        except OSError:
            times.append(-1.0)
    return tuple(times)


class TLSTerminator:
    """The TLS side of one server process: the listening context and the current certificates."""

    def __init__(self, settings: TLSSettings) -> None:
        self.settings = settings
        self._files = settings.files()
        self._mtimes = _mtimes(self._files)
        self._current = _load(settings)
        # The listening context: the default certificate, and the callback that picks the real one.
        self.context, _ = _context(settings, settings.cert_file, settings.key_file, "server.tls", Errors())
        assert self.context is not None  # loaded just above
        self.context.sni_callback = self._choose
        self.reloads = 0

    def _choose(self, ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        ssl_object.context = self._current.for_name(server_name)

    def reload(self) -> bool:
        """Read the files again; on any error keep the certificates in use (logged)."""
        self._mtimes = _mtimes(self._files)
        try:
            contexts = _load(self.settings)
        except ConfigError as exc:
            for error in exc.errors:
                log.error("TLS reload failed, keeping the certificates in use: %s", error)
            return False
        self._current = contexts
        self.reloads += 1
        log.info("TLS certificates reloaded")
        return True

    async def watch(self, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        """Reload whenever a file's modification time changes (every ``reload_interval`` s)."""
        interval = self.settings.reload_interval
        if not interval:
            return
        while True:
            await sleep(interval)
            if _mtimes(self._files) != self._mtimes:
                self.reload()


def tls_extension(ssl_object: ssl.SSLObject) -> dict[str, Any]:
    """The ASGI TLS extension of a connection whose handshake is done."""
    der = ssl_object.getpeercert(binary_form=True)
    chain: list[str] = []
    name = None
    if der:
        chain = _verified_chain(ssl_object) or [ssl.DER_cert_to_PEM_cert(der)]
        try:
            name = x509.load_der_x509_certificate(der).subject.rfc4514_string()
        except ValueError:  # pragma: no cover - OpenSSL verified it
            name = None
    version = ssl_object.version()
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,  # a certificate that does not verify fails the handshake
        "tls_version": _VERSION_CODES.get(version or ""),
        "cipher_suite": None,
    }


def _verified_chain(ssl_object: ssl.SSLObject) -> list[str]:
    """The client's chain as OpenSSL verified it (leaf first), PEM; [] where Python does not tell."""
    public = getattr(ssl_object, "get_verified_chain", None)  # Python 3.13: DER bytes
    if public is not None:
        return [ssl.DER_cert_to_PEM_cert(der) for der in public()]
    inner = getattr(ssl_object, "_sslobj", None)
    private = getattr(inner, "get_verified_chain", None)  # Python 3.10-3.12: certificate objects
    if private is None:
        return []
    try:
        return [str(cert.public_bytes()) for cert in private() or ()]
    except (AttributeError, TypeError, ValueError):  # pragma: no cover - another Python's shape
        return []
