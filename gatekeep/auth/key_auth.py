"""``key-auth``: API keys in a header or a query parameter (Kong's plugin).

Consumers carry ``keyauth_credentials = [{key = "..."}]``.  Keys are kept
in memory only as SHA-256 digests: a presented key is hashed and looked up
in a dict of digests, so the lookup's timing depends on the digest, which
tells an attacker nothing about any stored key, and no plain key stays in
the filter's memory after ``bind``.

Fields (Kong's): ``key_names`` (default ``["apikey"]``), ``key_in_header``,
``key_in_query``, ``key_in_body`` (form-urlencoded or JSON bodies),
``hide_credentials`` (strip the key before proxying), ``anonymous``,
``run_on_preflight``, ``realm``.  A missing key answers 401 "No API key found
in request", a wrong one 401 "Invalid authentication credentials", both with
``WWW-Authenticate: Key realm="..."``.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, unquote_to_bytes

import attrs

from .._errors import AuthError, ConfigError, FieldError
from .._filter import BaseFilter
from .._http import Request, Response
from .._protocols import Identity
from ._anonymous import (
    HeaderCache,
    already_authenticated,
    anonymous_identity,
    authenticate,
    resolve_anonymous,
)
from ._errors import InvalidCredentials, MissingCredentials

if TYPE_CHECKING:
    from .._gateway import Gateway

__all__ = ["KeyAuthConfig", "KeyAuthFilter"]

_FORM = b"application/x-www-form-urlencoded"
_JSON = b"application/json"
_MAX_BODY = 64 * 1024


def _key_names(_: Any, attribute: Any, value: tuple[str, ...]) -> None:
    if not value:
        raise ValueError("needs at least one key name")
    for name in value:
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise ValueError(f"{name!r} is not a valid header or parameter name")


@attrs.frozen
class KeyAuthConfig:
    key_names: tuple[str, ...] = attrs.field(default=("apikey",), validator=_key_names)
    key_in_header: bool = True
    key_in_query: bool = True
    key_in_body: bool = False
    hide_credentials: bool = False
    anonymous: str | None = None
    run_on_preflight: bool = True
    realm: str = "gatekeep"


def digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


class KeyAuthFilter(BaseFilter):
    name: ClassVar[str] = "key-auth"
    priority: ClassVar[int] = 1250
    Config = KeyAuthConfig
    config: KeyAuthConfig

    def __init__(self, config: KeyAuthConfig | None = None) -> None:
        super().__init__(config)
        c = self.config
        self.header_names = tuple(n.lower().encode("latin-1") for n in c.key_names)
        self.param_names = tuple(n.encode("latin-1") for n in c.key_names)
        self.text_names = frozenset(c.key_names)
        # sha256(key) -> (consumer config, identity without per-request state)
        self.keys: dict[bytes, tuple[Any, Identity]] = {}
        self.anonymous: Any = None
        self.header_cache = HeaderCache()

    def bind(self, gateway: Gateway) -> None:
        self.anonymous = resolve_anonymous(gateway, self.name, self.config.anonymous)
        errors = []
        for ci, consumer in enumerate(gateway.config.consumers):
            for ki, credential in enumerate(consumer.keyauth_credentials):
                d = digest(credential.key)
                if d in self.keys:
                    errors.append(
                        FieldError(f"consumers[{ci}].keyauth_credentials[{ki}].key", "duplicate API key")
                    )
                    continue
                identity = Identity(
                    subject=consumer.username or consumer.id or consumer.custom_id or "",
                    consumer=consumer.key,
                    credential=credential.id or d.hex()[:16],
                    groups=frozenset(consumer.groups),
                )
                self.keys[d] = (consumer, identity)
        if errors:
            raise ConfigError(errors)

    async def _find(self, request: Request) -> bytes | None:
        c = self.config
        headers = request.headers
        if c.key_in_header:
            for name in self.header_names:
                value = headers.get(name)
                if value:
                    return value
        if c.key_in_query and request.query_string:
            for part in request.query_string.split(b"&"):
                name, _, value = part.partition(b"=")
                if name in self.param_names and value:
                    return unquote_to_bytes(value.replace(b"+", b" "))
        if c.key_in_body and request.method not in ("GET", "HEAD", "OPTIONS"):
            return await self._from_body(request)
        return None

    async def _from_body(self, request: Request) -> bytes | None:
        ctype = (request.headers.get(b"content-type") or b"").split(b";")[0].strip().lower()
        if ctype not in (_FORM, _JSON):
            return None
        length = request.headers.get(b"content-length")
        if length is None or not length.isdigit() or int(length) > _MAX_BODY:
            return None  # unknown or large bodies are not buffered for a key
        body = await request.read(_MAX_BODY)
        if ctype == _FORM:
            for name, value in parse_qsl(body.decode("latin-1"), keep_blank_values=False):
                if name in self.text_names:
                    return value.encode("latin-1")
            return None
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        if isinstance(doc, dict):
            for name in self.config.key_names:
                found = doc.get(name)
                if isinstance(found, str) and found:
                    return found.encode("utf-8")
        return None

    async def on_request(self, request: Request) -> Response | None:
        c = self.config
        if request.method == "OPTIONS" and not c.run_on_preflight:
            return None
        anonymous = self.anonymous
        if anonymous is not None and already_authenticated(request):
            return None
        try:
            key = await self._find(request)
            if key is None:
                raise MissingCredentials("No API key found in request", scheme="Key", realm=c.realm)
            found = self.keys.get(digest(key))
            if found is None:
                raise InvalidCredentials("Invalid authentication credentials", realm=c.realm)
        except AuthError:
            if anonymous is None:
                raise
            authenticate(request, anonymous_identity(anonymous), anonymous)
            return None
        consumer, identity = found
        if c.hide_credentials:
            self._hide(request)
        authenticate(request, identity, consumer, self.header_cache)
        return None

    def _hide(self, request: Request) -> None:
        c = self.config
        if c.key_in_header:
            request.headers.remove(*self.header_names)
        if c.key_in_query and request.query_string:
            kept = [
                p for p in request.query_string.split(b"&") if p.partition(b"=")[0] not in self.param_names
            ]
            request.query_string = b"&".join(kept)
