"""The ``[admin]`` table: where the Admin API listens and who may use it.

The Admin API changes what the gateway does, so by default it listens on
loopback only.  Any other address needs a way to tell operators from the rest
of the network: a token (``Kong-Admin-Token`` header by default) or TLS with
client certificates (mTLS); a config that has neither is refused before
anything starts, like every other config error (``admin.listen: ...``).
"""

from __future__ import annotations

import ipaddress

import attrs

from .. import validators
from .._structure import Errors, join

__all__ = ["AdminSettings", "AdminTLS", "check_admin", "split_listen"]


def split_listen(listen: str) -> tuple[str, int] | None:
    """``host:port`` (``[v6]:port``) as a pair, or ``None`` when malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = int(port)
    return (host, number) if 0 <= number < 65536 else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@attrs.frozen
class AdminTLS:
    """TLS on the Admin API listener; ``client_ca_file`` makes it mTLS."""

    cert_file: str = attrs.field(validator=validators.non_empty)
    key_file: str = attrs.field(validator=validators.non_empty)
    # Client certificates must chain to this CA: only their holders get an answer.
    client_ca_file: str | None = attrs.field(default=None, validator=validators.non_empty)


@attrs.frozen
class AdminSettings:
    """The Admin API listener (the ``[admin]`` table; see docs/admin-api.md).

    Attributes:
        listen: ``host:port``; loopback unless ``token`` or ``tls.client_ca_file`` is set.
        token: the secret an operator sends in ``token_header`` (a ``{env://NAME}``
            reference keeps it out of the file).
        token_header: Kong Enterprise's name by default.
        tls: serve HTTPS (and with ``client_ca_file``, require client certificates).
        max_body_bytes: larger request bodies are answered 413.
    """

    listen: str = "127.0.0.1:8001"
    token: str | None = attrs.field(default=None, repr=False, validator=validators.non_empty)
    token_header: str = attrs.field(default="Kong-Admin-Token", validator=validators.header_name)
    tls: AdminTLS | None = None
    max_body_bytes: int = attrs.field(default=1024 * 1024, validator=validators.positive)

    @property
    def address(self) -> tuple[str, int]:
        parsed = split_listen(self.listen)
        assert parsed is not None, "checked by check_admin"
        return parsed

    @property
    def mtls(self) -> bool:
        return self.tls is not None and self.tls.client_ca_file is not None


def check_admin(settings: AdminSettings | None, path: str, errors: Errors) -> None:
    """The checks that need more than one field of ``[admin]``."""
    if settings is None:
        return
    where = join(path, "listen")
    parsed = split_listen(settings.listen)
    if parsed is None:
        errors.add(where, f"expected 'host:port', got {settings.listen!r}")
        return
    if not is_loopback(parsed[0]) and settings.token is None and not settings.mtls:
        errors.add(
            where,
            f"{settings.listen!r} is not a loopback address: the Admin API there needs a 'token' "
            "or mTLS ('tls.client_ca_file')",
        )
