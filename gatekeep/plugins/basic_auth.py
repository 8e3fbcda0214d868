"""``basic-auth``: HTTP Basic credentials of consumers (Kong's plugin, RFC 7617).

Consumers carry ``basicauth_credentials = [{username = "...", password = "..."}]``
(``BasicAuthCredential``, Kong's shape as decK writes it), a credential field
this plugin declares.  Passwords are kept only as salted scrypt hashes
(``hashlib.scrypt``), written ``scrypt$<log2 N>$<r>$<p>$<salt b64>$<hash b64>``:
a ``password`` in that form is taken as it is (make one with
``gatekeep secret hash-password`` or ``hash_password``); any other ``password``
is a plaintext, hashed when the config loads and not kept.  (Kong's own
SHA-1 hashes cannot be verified: hash the passwords again.)

Fields (Kong's): ``anonymous``, ``hide_credentials`` (remove the
``Authorization`` header before proxying), ``realm`` (of the
``WWW-Authenticate: Basic realm="..."`` challenge on a 401).

Verification never blocks the event loop: scrypt runs in a worker thread, at
most ``_CONCURRENT`` at once per filter (each takes ``128 * r * N`` bytes), and a
successful verification is remembered for ``_CACHE_SECONDS`` under an HMAC of the
username and password with a key made when the filter starts, so a client
sending the same credentials on every request pays for scrypt once a minute.
A failed one is never remembered: each guess costs a full scrypt.  An unknown
username is checked against a dummy hash, so that its answer takes as long as a
wrong password's.  Hashes are compared with ``hmac.compare_digest``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import attrs

from gatekeep import AuthError, BasePlugin, ConfigError, FieldError, Identity, Request, Response, validators
from gatekeep.auth import (
    HeaderCache,
    InvalidCredentials,
    MissingCredentials,
    already_authenticated,
    anonymous_identity,
    authenticate,
    hash_password,
    is_password_hash,
    parse_password_hash,
    resolve_anonymous,
    verify_password,
)

if TYPE_CHECKING:
    from gatekeep import PluginContext

__all__ = ["BasicAuthConfig", "BasicAuthCredential", "BasicAuthFilter", "hash_password", "verify_password"]

_CONCURRENT = 4
_CACHE_SECONDS = 60.0
_CACHE_SIZE = 10_000
_HEADERS = (b"authorization", b"proxy-authorization")


def _hashed(value: str) -> str:
    """A config's ``password``: kept if already a scrypt hash, else hashed now."""
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    if is_password_hash(value):
        parse_password_hash(value)
        return value
    return hash_password(value)


def _username(_: Any, attribute: Any, value: str) -> None:
    if not value or ":" in value:
        raise ValueError("must be a non-empty name without ':'")


@attrs.frozen
class BasicAuthConfig:
    kong_names: ClassVar[Mapping[str, str]] = validators.kong_fields("anonymous", "hide_credentials", "realm")

    # A consumer (id, username or custom_id) that requests without valid credentials run as.
    anonymous: str | None = None
    # Remove the Authorization (or Proxy-Authorization) header before proxying.
    hide_credentials: bool = False
    # The realm of the WWW-Authenticate: Basic challenge on a 401.
    realm: str = attrs.field(default="service", validator=validators.non_empty)


@attrs.frozen
class BasicAuthCredential:
    """A consumer's username and password (Kong's ``basicauth_credentials`` entry).

    ``password`` is always a scrypt hash: a plaintext is hashed on the way in.
    """

    kong_names: ClassVar[Mapping[str, str]] = validators.kong_fields("username", "password", "id", "tags")

    # Unique over all consumers; no ':'.
    username: str = attrs.field(validator=_username)
    # A scrypt hash (scrypt$<log2 N>$<r>$<p>$<salt>$<hash>), or a plaintext hashed at load and not kept.
    password: str = attrs.field(converter=_hashed, repr=False)
    id: str | None = None
    tags: tuple[str, ...] = ()


@functools.cache
def _dummy() -> str:
    """A hash no password matches, for unknown usernames (made on first use: scrypt is slow)."""
    return hash_password(secrets.token_hex(16))


class _VerifiedCache:
    """Keyed digests of credentials that verified, with their expiry (monotonic)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, tuple[float, str]] = OrderedDict()
        self._clock = clock

    def digest(self, username: bytes, password: bytes) -> bytes:
        return hmac.new(self._key, username + b"\x00" + password, hashlib.sha256).digest()

    def get(self, digest: bytes) -> str | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[digest]
            return None
        return entry[1]

    def put(self, digest: bytes, username: str) -> None:
        self._entries[digest] = (self._clock() + _CACHE_SECONDS, username)
        self._entries.move_to_end(digest)
        while len(self._entries) > _CACHE_SIZE:
            self._entries.popitem(last=False)


class BasicAuthFilter(BasePlugin[BasicAuthConfig]):
    name: ClassVar[str] = "basic-auth"
    priority: ClassVar[int] = 1100
    anonymous_option: ClassVar[bool] = True
    config: BasicAuthConfig
    consumer_credentials: ClassVar[Mapping[str, type[Any]]] = {"basicauth_credentials": BasicAuthCredential}

    def __init__(self, config: BasicAuthConfig | None = None, *, clock: Callable[[], float] = time.monotonic):
        super().__init__(config)
        # username -> (stored hash, consumer, identity)
        self.credentials: dict[str, tuple[str, Any, Identity]] = {}
        self.anonymous: Any = None
        self.header_cache = HeaderCache()
        self.cache = _VerifiedCache(clock)
        self.limiter = anyio.CapacityLimiter(_CONCURRENT)
        self.verifications = 0  # scrypt runs, for tests and curiosity

    def bind(self, context: PluginContext) -> None:
        self.anonymous = resolve_anonymous(context, self.name, self.config.anonymous)
        errors = []
        for ci, consumer in enumerate(context.config.consumers):
            entries: tuple[BasicAuthCredential, ...] = consumer.credentials.get("basicauth_credentials", ())
            for ki, credential in enumerate(entries):
                if credential.username in self.credentials:
                    errors.append(
                        FieldError(
                            f"consumers[{ci}].basicauth_credentials[{ki}].username",
                            f"duplicate username {credential.username!r}",
                        )
                    )
                    continue
                identity = Identity(
                    subject=consumer.username or consumer.id or consumer.custom_id or "",
                    consumer=consumer.key,
                    credential=credential.username,  # Kong's X-Credential-Identifier
                    groups=frozenset(consumer.groups),
                )
                self.credentials[credential.username] = (credential.password, consumer, identity)
        if errors:
            raise ConfigError(errors)

    def _challenge(self) -> dict[str, str]:
        return {"scheme": "Basic", "realm": self.config.realm}

    def _parse(self, request: Request) -> tuple[bytes, bytes, bytes] | None:
        """``(header name, username, password)`` of the request's Basic credentials, if any."""
        for name in _HEADERS:
            value = request.headers.get(name)
            if value is None:
                continue
            scheme, _, encoded = value.strip().partition(b" ")
            if scheme.lower() != b"basic":
                continue
            try:
                decoded = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise InvalidCredentials("Invalid authentication credentials", **self._challenge()) from None
            username, sep, password = decoded.partition(b":")
            if not sep or not username:
                raise InvalidCredentials("Invalid authentication credentials", **self._challenge())
            return name, username, password
        return None

    async def _verify(self, username: bytes, password: bytes) -> tuple[Any, Identity]:
        try:
            user = username.decode("utf-8")
        except UnicodeDecodeError:
            user = ""
        found = self.credentials.get(user)
        digest = self.cache.digest(username, password)
        if found is not None and self.cache.get(digest) == user:
            return found[1], found[2]
        stored = found[0] if found is not None else _dummy()
        self.verifications += 1
        ok = await anyio.to_thread.run_sync(verify_password, password, stored, limiter=self.limiter)
        if not ok or found is None:
            raise InvalidCredentials("Invalid authentication credentials", **self._challenge())
        self.cache.put(digest, user)
        return found[1], found[2]

    async def on_request(self, request: Request) -> Response | None:
        anonymous = self.anonymous
        if anonymous is not None and already_authenticated(request):
            return None
        try:
            parsed = self._parse(request)
            if parsed is None:
                raise MissingCredentials("No credentials found in request", **self._challenge())
            header, username, password = parsed
            consumer, identity = await self._verify(username, password)
        except AuthError:
            if anonymous is None:
                raise
            authenticate(request, anonymous_identity(anonymous), anonymous)
            return None
        if self.config.hide_credentials:
            request.headers.remove(header)
        authenticate(request, identity, consumer, self.header_cache)
        return None
