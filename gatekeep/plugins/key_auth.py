"""``key-auth``: API keys in a header or a query parameter (Kong's plugin).

Consumers carry ``keyauth_credentials = [{key = "..."}]`` (``KeyAuthCredential``,
Kong's shape), a credential field this plugin declares.  Finding and checking
the key is a ``KeyAuthenticator`` (a ``gatekeep.Authenticator``); the filter
around it adds ``anonymous``, ``hide_credentials`` and the consumer.  Keys are kept
in memory only as SHA-256 digests: a presented key is hashed and looked up
in a dict of digests, so the lookup's timing depends on the digest, which
tells an attacker nothing about any stored key, and no plain key stays in
the filter's memory after ``bind``.

Fields (Kong's): ``key_names`` (default ``["apikey"]``), ``key_in_header``,
``key_in_query``, ``key_in_body`` (form-urlencoded or JSON bodies),
``hide_credentials`` (strip the key before proxying), ``anonymous``,
``run_on_preflight``, ``realm``.

Bodies are read only with ``key_in_body``, only when they announce a form or
JSON ``content-type`` and a ``content-length`` of at most 64 KiB (a chunked or
larger body is streamed untouched and carries no key for this filter).  With
``hide_credentials`` the key fields are removed from such a body: the other
form fields keep their bytes; a JSON object is re-serialised (compact,
ASCII) without them; ``content-length`` is rewritten.  Only top-level JSON
fields are keys, and a JSON document this filter cannot read back exactly
(``NaN``, ``Infinity``, a number out of a double's range) is not a JSON body
to it.  A missing key answers 401 "No API key found
in request", a wrong one 401 "Invalid authentication credentials", both with
``WWW-Authenticate: Key realm="..."``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote_to_bytes

import attrs

from gatekeep import (
    AuthError,
    BasePlugin,
    ConfigError,
    FieldError,
    Identity,
    Request,
    Response,
    replayable,
    validators,
)
from gatekeep.auth import (
    HeaderCache,
    InvalidCredentials,
    MissingCredentials,
    already_authenticated,
    anonymous_identity,
    authenticate,
    resolve_anonymous,
)

if TYPE_CHECKING:
    from gatekeep import PluginContext

__all__ = ["KeyAuthConfig", "KeyAuthCredential", "KeyAuthFilter", "KeyAuthenticator"]

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
    kong_names: ClassVar[Mapping[str, str]] = validators.kong_fields(
        *"key_names key_in_header key_in_query key_in_body hide_credentials anonymous".split(),
        *"run_on_preflight realm".split(),
    )

    key_names: tuple[str, ...] = attrs.field(default=("apikey",), validator=_key_names)
    key_in_header: bool = True
    key_in_query: bool = True
    key_in_body: bool = False
    hide_credentials: bool = False
    anonymous: str | None = None
    run_on_preflight: bool = True
    realm: str = "gatekeep"


@attrs.frozen
class KeyAuthCredential:
    """A consumer's API key (Kong's ``keyauth_credentials`` entry)."""

    kong_names: ClassVar[Mapping[str, str]] = validators.kong_fields("key", "id", "tags")

    key: str = attrs.field(validator=validators.non_empty, repr=False)
    id: str | None = None
    tags: tuple[str, ...] = ()


def digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number out of range")
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, if it is one that re-serialises to the same data."""
    try:
        doc = json.loads(body, parse_float=_finite, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _form_name(part: bytes) -> bytes:
    return unquote_to_bytes(part.partition(b"=")[0].replace(b"+", b" "))


class KeyAuthenticator:
    """An ``Authenticator``: the consumer identity of the API key a request carries.

    ``keys`` maps ``digest(key)`` to the consumer and its identity (filled by
    the ``key-auth`` filter's ``bind``, or by hand).
    """

    def __init__(self, config: KeyAuthConfig | None = None) -> None:
        c = self.config = config if config is not None else KeyAuthConfig()
        self.header_names = tuple(n.lower().encode("latin-1") for n in c.key_names)
        self.param_names = tuple(n.encode("latin-1") for n in c.key_names)
        # sha256(key) -> (consumer config, identity without per-request state)
        self.keys: dict[bytes, tuple[Any, Identity]] = {}

    async def authenticate(self, request: Request) -> Identity | None:
        """The identity of the request's key; ``None`` without a key.

        Raises:
            InvalidCredentials: the key is unknown.
        """
        key = await self._find(request)
        if key is None:
            return None
        found = self.keys.get(digest(key))
        if found is None:
            raise InvalidCredentials("Invalid authentication credentials", realm=self.config.realm)
        return found[1]

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
        if c.key_in_body:
            return await self._from_body(request)
        return None

    async def body(self, request: Request) -> tuple[bytes, bytes] | None:
        """``(content type, body)`` of a form or JSON body this filter may read, else ``None``."""
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return None
        headers = request.headers
        ctype = (headers.get(b"content-type") or b"").split(b";")[0].strip().lower()
        if ctype not in (_FORM, _JSON):
            return None
        length = headers.get(b"content-length")
        if length is None or not length.isdigit() or int(length) > _MAX_BODY:
            return None  # unknown or large bodies are not buffered for a key
        return ctype, await request.read(_MAX_BODY)  # kept: read again at no cost

    async def _from_body(self, request: Request) -> bytes | None:
        found = await self.body(request)
        if found is None:
            return None
        ctype, body = found
        if ctype == _FORM:
            for part in body.split(b"&"):
                value = part.partition(b"=")[2]
                if value and _form_name(part) in self.param_names:
                    return unquote_to_bytes(value.replace(b"+", b" "))
            return None
        doc = _json_object(body)
        if doc is not None:
            for name in self.config.key_names:
                key = doc.get(name)
                if isinstance(key, str) and key:
                    return key.encode("utf-8", "surrogatepass")
        return None


class KeyAuthFilter(BasePlugin[KeyAuthConfig]):
    name: ClassVar[str] = "key-auth"
    priority: ClassVar[int] = 1250
    anonymous_option: ClassVar[bool] = True
    config: KeyAuthConfig
    consumer_credentials: ClassVar[Mapping[str, type[Any]]] = {"keyauth_credentials": KeyAuthCredential}

    def __init__(self, config: KeyAuthConfig | None = None) -> None:
        super().__init__(config)
        c = self.config
        self.authenticator = KeyAuthenticator(c)
        self.header_names = self.authenticator.header_names
        self.param_names = self.authenticator.param_names
        self.text_names = frozenset(c.key_names)
        self.keys = self.authenticator.keys
        # consumer key -> consumer config, for the identity the authenticator returns
        self.consumers: dict[str, Any] = {}
        self.anonymous: Any = None
        self.header_cache = HeaderCache()

    def bind(self, context: PluginContext) -> None:
        self.anonymous = resolve_anonymous(context, self.name, self.config.anonymous)
        errors = []
        for ci, consumer in enumerate(context.config.consumers):
            credentials: tuple[KeyAuthCredential, ...] = consumer.credentials.get("keyauth_credentials", ())
            for ki, credential in enumerate(credentials):
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
                self.consumers[consumer.key] = consumer
        if errors:
            raise ConfigError(errors)

    async def _hide_in_body(self, request: Request) -> None:
        found = await self.authenticator.body(request)
        if found is None:
            return
        ctype, body = found
        stripped: bytes | None = None
        if ctype == _FORM:
            parts = body.split(b"&")
            kept = [p for p in parts if _form_name(p) not in self.param_names]
            if len(kept) != len(parts):
                stripped = b"&".join(kept)
        else:
            doc = _json_object(body)
            if doc is not None and not self.text_names.isdisjoint(doc):
                for name in self.text_names:
                    doc.pop(name, None)
                stripped = json.dumps(doc, separators=(",", ":")).encode("ascii")
        if stripped is not None:
            request.body = replayable(stripped)
            request.headers.set(b"content-length", str(len(stripped)).encode("ascii"))

    async def on_request(self, request: Request) -> Response | None:
        c = self.config
        if request.method == "OPTIONS" and not c.run_on_preflight:
            return None
        anonymous = self.anonymous
        if anonymous is not None and already_authenticated(request):
            return None
        try:
            identity = await self.authenticator.authenticate(request)
            if identity is None:
                raise MissingCredentials("No API key found in request", scheme="Key", realm=c.realm)
        except AuthError:
            if anonymous is None:
                raise
            authenticate(request, anonymous_identity(anonymous), anonymous)
            return None
        consumer = self.consumers[identity.consumer] if identity.consumer is not None else None
        if c.hide_credentials:
            await self._hide(request)
        authenticate(request, identity, consumer, self.header_cache)
        return None

    async def _hide(self, request: Request) -> None:
        c = self.config
        if c.key_in_header:
            request.headers.remove(*self.header_names)
        if c.key_in_query and request.query_string:
            kept = [
                p for p in request.query_string.split(b"&") if p.partition(b"=")[0] not in self.param_names
            ]
            request.query_string = b"&".join(kept)
        if c.key_in_body:
            await self._hide_in_body(request)
