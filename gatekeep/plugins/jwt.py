"""``jwt``: verify bearer JWTs (Kong's plugin, plus OIDC issuers, JWKS, audiences and leeway).

Kong's fields: ``key_claim_name``, ``secret_is_base64``, ``claims_to_verify``,
``maximum_expiration``, ``header_names``, ``uri_param_names``,
``cookie_names``, ``run_on_preflight``, ``anonymous``; ours: ``issuers``,
``keys``, ``audiences``, ``leeway``, ``required_claims``, ``typ``,
``cache_size``, ``roles_claims``/``scopes_claims``/``groups_claims``,
``consumer_claims`` (rbac's spelling; the singular names of one release ago
are accepted too), ``hide_credentials``, ``jwks`` (cache policy).

When it is bound, the plugin warns (``gatekeep check`` prints it) about HMAC
secrets shorter than their hash (RFC 7518 §3.2: HS256 needs at least 32
bytes, HS384 48, HS512 64).

Consumer credentials are the consumers' ``jwt_secrets`` (``JWTSecret``, Kong's
shape), a credential field this plugin declares and reads in ``bind``.
The verification is a ``JWTAuthenticator`` (a ``gatekeep.Authenticator``:
find the token, verify it); the filter around it adds ``anonymous``,
``hide_credentials`` and the consumer.  On success the filter sets
``request.identity`` (a ``gatekeep.Identity``), ``request.consumer`` (the
``ConsumerConfig`` when the token maps to one) and the identity headers sent
upstream.  Failures are 401 problem+json with
an RFC 6750 ``WWW-Authenticate`` challenge (``error="invalid_token"``, or no
``error`` when there was no token at all).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import unquote_to_bytes

import attrs

from gatekeep import AuthError, BasePlugin, ConfigError, FieldError, Identity, Request, Response, validators
from gatekeep.auth import (
    Algorithm,
    BadKey,
    Credential,
    InvalidToken,
    IssuerConfig,
    JWKSPolicy,
    JWTVerifier,
    KeyConfig,
    KeysUnavailable,
    MissingCredentials,
    VerificationKey,
    VerifierConfig,
    already_authenticated,
    anonymous_identity,
    authenticate,
    identity_header_pairs,
    key_from_pem,
    key_from_secret,
    resolve_anonymous,
    strip_identity_headers,
)

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from gatekeep import PluginContext

__all__ = ["JWTAuthenticator", "JWTFilter", "JWTFilterConfig", "JWTSecret"]

_BEARER = re.compile(rb"^\s*[Bb][Ee][Aa][Rr][Ee][Rr]\s+([^\s]+)\s*$")


@attrs.frozen
class JWTSecret:
    """A consumer's JWT credential (Kong's ``jwt_secrets`` entry).

    ``key`` is matched against the token's ``key_claim_name`` claim (``iss``
    by default).  HS algorithms take ``secret``; the others take
    ``rsa_public_key`` (Kong's name, used for EC and EdDSA PEMs too; ``pem``,
    the name of the plugin's static ``keys``, is accepted for it).
    """

    kong_names: ClassVar[Mapping[str, str]] = validators.kong_fields(
        "key", "algorithm", "secret", "rsa_public_key", "id", "tags"
    )

    key: str = attrs.field(validator=validators.non_empty)
    algorithm: Algorithm = "HS256"
    secret: str | None = attrs.field(default=None, repr=False)
    rsa_public_key: str | None = attrs.field(default=None, metadata=validators.also_named("pem"))
    id: str | None = None
    tags: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        if attrs.validators.get_disabled():
            return  # a config with errors already reported, built for the other checks
        if self.algorithm.startswith("HS"):
            if not self.secret:
                raise ValueError(f"{self.algorithm} needs a 'secret'")
            if self.rsa_public_key:
                raise ValueError(f"{self.algorithm} takes a 'secret', not an 'rsa_public_key'")
        else:
            if not self.rsa_public_key:
                raise ValueError(f"{self.algorithm} needs an 'rsa_public_key' (a PEM public key)")
            if self.secret:
                raise ValueError(f"{self.algorithm} takes an 'rsa_public_key', not a 'secret'")
            try:
                key_from_pem(self.algorithm, self.rsa_public_key)
            except BadKey as exc:
                raise ValueError(f"rsa_public_key: {exc}") from None

    def verification_key(self, *, secret_is_base64: bool = False) -> VerificationKey:
        """The key tokens of this credential are verified with.

        Raises:
            BadKey: the secret is not valid base64 (with ``secret_is_base64``) or unusable.
        """
        if self.secret is not None:
            return key_from_secret(self.algorithm, self.secret, base64_encoded=secret_is_base64)
        assert self.rsa_public_key is not None
        return key_from_pem(self.algorithm, self.rsa_public_key)


@attrs.frozen
class JWTFilterConfig:
    """The ``jwt`` plugin's config: Kong's fields, then issuers (OIDC/JWKS), static keys and claims."""

    kong_names: ClassVar[Mapping[str, str]] = validators.kong_fields(
        "key_claim_name",
        "secret_is_base64",
        "claims_to_verify",
        "maximum_expiration",
        "header_names",
        "uri_param_names",
        "cookie_names",
        "run_on_preflight",
        "anonymous",
    )

    # Kong's fields.
    # The claim that names a consumer's jwt_secrets entry (by its key).
    key_claim_name: str = "iss"
    # Consumers' HS secrets are base64.
    secret_is_base64: bool = False
    # Registered claims checked when present (exp, nbf).
    claims_to_verify: tuple[Literal["exp", "nbf"], ...] = ("exp",)
    # Seconds: refuse tokens that live longer (0: no bound).
    maximum_expiration: int = attrs.field(default=0, validator=validators.non_negative)
    # Headers the token is read from (Authorization: Bearer, or the raw value of another header).
    header_names: tuple[str, ...] = ("authorization",)
    # Query parameters the token is read from.
    uri_param_names: tuple[str, ...] = ("jwt",)
    # Cookies the token is read from.
    cookie_names: tuple[str, ...] = ()
    # Authenticate OPTIONS preflights too.
    run_on_preflight: bool = True
    # A consumer (id, username or custom_id) for requests without a valid token.
    anonymous: str | None = None
    # Ours.
    # OIDC issuers: keys from their JWKS (discovery or jwks_uri), or static keys.
    issuers: tuple[IssuerConfig, ...] = ()
    # Static verification keys (pem, jwk or secret), for tokens of no configured issuer.
    keys: tuple[KeyConfig, ...] = ()
    # Accepted 'aud' values for static keys and consumer credentials (empty: not checked).
    audiences: tuple[str, ...] = ()
    # Seconds of clock skew allowed for exp and nbf.
    leeway: float = attrs.field(default=0.0, validator=validators.non_negative)
    # Claims every token must carry.
    required_claims: tuple[str, ...] = ()
    # The 'typ' header a token must have ("at+jwt" for RFC 9068 access tokens).
    typ: str | None = None
    # Bytes: longer tokens are refused before they are parsed.
    max_token_size: int = attrs.field(default=8192, validator=validators.non_negative)
    # Verified tokens kept (by their bytes) so a repeated token is not verified again.
    cache_size: int = attrs.field(default=10_000, validator=validators.non_negative)
    # Seconds a verified token stays cached (never past its exp).
    cache_ttl: float = attrs.field(default=300.0, validator=validators.non_negative)
    # Claim paths of the roles (rbac's name; the singular of one release ago is accepted).
    roles_claims: tuple[str, ...] = attrs.field(
        default=("roles", "realm_access.roles"), metadata=validators.also_named("roles_claim")
    )
    # Claim paths of the scopes (a space-separated string or an array).
    scopes_claims: tuple[str, ...] = attrs.field(
        default=("scope", "scp"), metadata=validators.also_named("scopes_claim")
    )
    # Claim paths of the groups.
    groups_claims: tuple[str, ...] = attrs.field(default=(), metadata=validators.also_named("groups_claim"))
    # Claims whose value names a consumer (id, username or custom_id) for issuer tokens.
    consumer_claims: tuple[str, ...] = attrs.field(
        default=(), metadata=validators.also_named("consumer_claim")
    )
    # Remove the token from the request before it goes upstream.
    hide_credentials: bool = False
    # The realm of the WWW-Authenticate challenge.
    realm: str | None = None
    # JWKS cache and refetch policy.
    jwks: JWKSPolicy = JWKSPolicy()

    def __attrs_post_init__(self) -> None:
        if attrs.validators.get_disabled():
            return  # a config with errors already reported, built for the other checks
        self.verifier_config()  # the verifier's own checks, at load time

    def verifier_config(self) -> VerifierConfig:
        return VerifierConfig(
            issuers=self.issuers,
            keys=self.keys,
            audiences=self.audiences,
            key_claim_name=self.key_claim_name,
            claims_to_verify=self.claims_to_verify,
            required_claims=self.required_claims,
            leeway=self.leeway,
            maximum_expiration=self.maximum_expiration,
            typ=self.typ,
            max_token_size=self.max_token_size,
            cache_size=self.cache_size,
            cache_ttl=self.cache_ttl,
            roles_claim=self.roles_claims,
            scopes_claim=self.scopes_claims,
            groups_claim=self.groups_claims,
            consumer_claim=self.consumer_claims,
            jwks=self.jwks,
        )


class JWTAuthenticator:
    """An ``Authenticator``: the identity a request's bearer JWT proves.

    Args:
        config: where tokens are looked for, and the verifier's settings.
        verifier: verifies a token (default: a ``JWTVerifier`` of ``config``).
    """

    def __init__(self, config: JWTFilterConfig | None = None, verifier: JWTVerifier | None = None) -> None:
        c = self.config = config if config is not None else JWTFilterConfig()
        self.verifier = verifier or JWTVerifier(c.verifier_config())
        self.headers = tuple(h.lower().encode("latin-1") for h in c.header_names)
        self.params = tuple(p.encode("latin-1") for p in c.uri_param_names)
        self.cookies = tuple(n.encode("latin-1") for n in c.cookie_names)
        self._header_names = frozenset(self.headers)

    def token(self, request: Request) -> bytes | None:
        """The token the request carries (query, then cookies, then headers, as Kong).

        Raises:
            InvalidToken: the request carries several different tokens.
        """
        token: bytes | None = None
        if (request.query_string and self.params) or self.cookies:
            found = self._elsewhere(request)
            if found:
                token = found[0]
                if any(t != token for t in found):
                    raise self._several()
        # One pass over the headers (a request carries a handful; every token must be the same,
        # so the order in which they are found does not matter).
        names = self._header_names
        for name, value in request.headers.raw:
            if name in names:
                if value[:7].lower() == b"bearer " and value.find(b" ", 7) < 0:
                    found_here: bytes | None = value[7:]
                else:
                    m = _BEARER.match(value)
                    if m:
                        found_here = m.group(1)
                    elif name != b"authorization" and value.strip():
                        found_here = value.strip()
                    else:
                        continue
                if token is None:
                    token = found_here
                elif found_here != token:
                    raise self._several()
        return token

    def _several(self) -> InvalidToken:
        return InvalidToken("the request carries several different tokens", realm=self.config.realm)

    def _elsewhere(self, request: Request) -> list[bytes]:
        """The tokens of the query string and the cookies."""
        found: list[bytes] = []
        if self.params and request.query_string:
            for part in request.query_string.split(b"&"):
                name, _, value = part.partition(b"=")
                if name in self.params and value:
                    found.append(unquote_to_bytes(value))
        if self.cookies:
            for header in request.headers.get_all(b"cookie"):
                for part in header.split(b";"):
                    name, _, value = part.strip().partition(b"=")
                    if name in self.cookies and value:
                        found.append(value.strip(b'"'))
        return found

    async def authenticate(self, request: Request) -> Identity | None:
        """The verified token's identity; ``None`` without a token.

        Raises:
            AuthError: the token is invalid (``InvalidToken`` ...).
            KeysUnavailable: the issuer's keys cannot be fetched now.
        """
        token = self.token(request)
        if token is None:
            return None
        return await self.verifier.verify(token)


# Bytes of a token header's value that key the values seen before (the end of the signature).
_TAIL = 24

# RFC 7518 §3.2: a key of the same size as the hash output or larger.
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}


def _warn_short(context: PluginContext, path: str, key: VerificationKey) -> None:
    least = _HMAC_MIN_BYTES.get(key.algorithm)
    if least is not None and isinstance(key.key, bytes) and len(key.key) < least:
        context.warn(
            path,
            f"a {key.algorithm} secret of {len(key.key)} byte(s) can be guessed: RFC 7518 §3.2 asks "
            f"for at least {least} random bytes (e.g. python -c 'import secrets; "
            f"print(secrets.token_urlsafe({least}))')",
        )


class JWTFilter(BasePlugin[JWTFilterConfig]):
    name: ClassVar[str] = "jwt"
    priority: ClassVar[int] = 1450
    anonymous_option: ClassVar[bool] = True
    config: JWTFilterConfig
    consumer_credentials: ClassVar[Mapping[str, type[Any]]] = {"jwt_secrets": JWTSecret}

    def __init__(self, config: JWTFilterConfig | None = None, *, verifier: JWTVerifier | None = None) -> None:
        super().__init__(config)
        c = self.config
        self.authenticator = JWTAuthenticator(c, verifier)
        self.verifier = self.authenticator.verifier
        self.headers = self.authenticator.headers
        self.params = self.authenticator.params
        self.cookies = self.authenticator.cookies
        self.anonymous: Any = None
        self.consumers: dict[str, Any] = {}
        # Per identity object: (identity, consumer, identity header pairs); bounded by clearing.
        self._memo: dict[int, tuple[Identity, Any, list[tuple[bytes, bytes]]]] = {}
        self._memo_size = max(c.cache_size, 1)
        # Token header values seen before, by their last bytes (the token's signature): the value's
        # prefix, the token parsed from it and the value's length, so that a value is recognised
        # only when it is the same bytes.  Only values whose token verified are kept; bounded by
        # clearing.
        self._seen: dict[bytes, tuple[bytes, bytes, int]] = {}
        self._headers_only = not self.cookies
        self._header_names = frozenset(self.headers)
        # Hot-path constants and bound methods, read once per request.
        self._token = self.authenticator.token
        self._cached = self.verifier.cached
        self._skip_preflight = not c.run_on_preflight
        self._hide_credentials = c.hide_credentials

    def bind(self, context: PluginContext) -> None:
        self.anonymous = resolve_anonymous(context, self.name, self.config.anonymous)
        for ki, static in enumerate(self.config.keys):
            _warn_short(context, f"config.keys[{ki}].secret", static.build())
        for ii, issuer in enumerate(self.config.issuers):
            for ki, static in enumerate(issuer.keys):
                _warn_short(context, f"config.issuers[{ii}].keys[{ki}].secret", static.build())
        credentials: dict[str, Credential] = {}
        errors = []
        for ci, consumer in enumerate(context.config.consumers):
            self.consumers[consumer.key] = consumer
            secrets: tuple[JWTSecret, ...] = consumer.credentials.get("jwt_secrets", ())
            for si, secret in enumerate(secrets):
                try:
                    key = secret.verification_key(secret_is_base64=self.config.secret_is_base64)
                except BadKey as exc:
                    errors.append((f"consumers[{ci}].jwt_secrets[{si}]", str(exc)))
                    continue
                _warn_short(context, f"consumers[{ci}].jwt_secrets[{si}].secret", key)
                if secret.key in credentials:
                    errors.append((f"consumers[{ci}].jwt_secrets[{si}].key", f"duplicate key {secret.key!r}"))
                credentials[secret.key] = Credential(
                    key, consumer.key, secret.id or secret.key, frozenset(consumer.groups)
                )
        if errors:
            raise ConfigError([FieldError(p, m) for p, m in errors])
        self.verifier.credentials.update(credentials)
        if self.config.consumer_claims:
            for name, consumer in context.consumers.items():
                self.verifier.consumers[name] = (consumer.key, frozenset(consumer.groups))
        self._memo.clear()  # the consumers it remembers are these now

    async def start(self, task_group: TaskGroup) -> None:
        await self.verifier.start(task_group)

    async def stop(self) -> None:
        await self.verifier.stop()

    def token(self, request: Request) -> bytes | None:
        """The token the request carries (see ``JWTAuthenticator.token``)."""
        return self.authenticator.token(request)

    async def on_request(self, request: Request) -> Response | None:
        if request.method == "OPTIONS" and self._skip_preflight:
            return None
        anonymous = self.anonymous
        if anonymous is not None and already_authenticated(request):
            return None
        try:
            # ``JWTAuthenticator.authenticate``, with the verifier's cache asked first: a token seen
            # before costs no coroutine and no decoding.
            token = value = None
            if self._headers_only and not (request.query_string and self.params):
                # The token can only come from the one header that carries it: when that header's
                # value was seen before, its token is the one parsed then (the very bytes object the
                # verifier's cache holds: no copy, no hashing of the whole token).
                names = self._header_names
                for name, v in request.headers.raw:
                    if name in names:
                        if value is not None:
                            value = None  # several: the full scan decides
                            break
                        value = v
                if value is not None:
                    seen = self._seen.get(value[-_TAIL:])
                    # The value is the one seen (its prefix, then its token) when it has its length,
                    # starts with its prefix and ends with its token.
                    if (
                        seen is not None
                        and len(value) == seen[2]
                        and value.endswith(seen[1])
                        and value.startswith(seen[0])
                    ):
                        token = seen[1]
            if token is None:
                token = self._token(request)
                if token is None:
                    raise MissingCredentials("no bearer token in the request", realm=self.config.realm)
                identity = self._cached(token)
                if identity is None:
                    identity = await self.verifier.verify(token)
                if value is not None:
                    self._remember_value(value, token)
            else:
                identity = self._cached(token)
                if identity is None:
                    identity = await self.verifier.verify(token)
        except (AuthError, KeysUnavailable):
            if anonymous is None:
                raise
            authenticate(request, anonymous_identity(anonymous), anonymous)
            return None
        self._accept(request, identity)
        return None

    def _accept(self, request: Request, identity: Identity) -> None:
        """Record ``identity`` (and its consumer) on ``request``, with its identity headers."""
        # The consumer and the identity headers of this identity object (the verifier's cache hands
        # out the same one for every request of a token): computed on its first request.
        memo = self._memo.get(id(identity))
        if memo is None or memo[0] is not identity:
            memo = self._remember(identity)
        if self._hide_credentials:
            self._hide(request)
        # ``authenticate(request, identity, consumer, cache)``, inline: record who made the request,
        # replace whatever identity headers are there with its own.
        request.identity = identity
        request.consumer = memo[1]
        headers = request.headers
        strip_identity_headers(headers)
        headers.raw.extend(memo[2])

    def _fast_request_phase(self) -> Callable[[Request], Awaitable[Response | None] | None] | None:
        """``_request_now`` for the chain, unless a subclass changed ``on_request``."""
        return self._request_now if type(self).on_request is JWTFilter.on_request else None

    def _request_now(self, request: Request) -> Awaitable[Response | None] | None:
        """``on_request`` without a coroutine for a token seen before (most requests), else ``on_request``."""
        if not self._headers_only or (request.query_string and self.params):
            return self.on_request(request)
        if request.method == "OPTIONS" and self._skip_preflight:
            return None
        if self.anonymous is not None and already_authenticated(request):
            return None
        names = self._header_names
        value = None
        for name, v in request.headers.raw:
            if name in names:
                if value is not None:
                    return self.on_request(request)  # several: the full scan decides
                value = v
        if value is None:
            return self.on_request(request)
        seen = self._seen.get(value[-_TAIL:])
        if (
            seen is None
            or len(value) != seen[2]
            or not value.endswith(seen[1])
            or not value.startswith(seen[0])
        ):
            return self.on_request(request)
        try:
            identity = self._cached(seen[1])
        except (AuthError, KeysUnavailable):
            return self.on_request(request)  # decided (and answered) the whole way
        if identity is None:
            return self.on_request(request)
        self._accept(request, identity)
        return None

    def _remember_value(self, value: bytes, token: bytes) -> None:
        """Remember that header value ``value`` carries ``token`` (a token that verified).

        Kept as the value's prefix (``Bearer ``) and the token object itself (the one the verifier's
        cache holds too): the value's bytes are not kept twice.
        """
        if not value.endswith(token):
            return  # (a value with trailing spaces: parsed every time)
        if len(self._seen) >= self._memo_size:
            self._seen.clear()
        self._seen[value[-_TAIL:]] = (value[: len(value) - len(token)], token, len(value))

    def _remember(self, identity: Identity) -> tuple[Identity, Any, list[tuple[bytes, bytes]]]:
        consumer = self.consumers.get(identity.consumer) if identity.consumer is not None else None
        entry = (identity, consumer, identity_header_pairs(identity, consumer))
        if len(self._memo) >= self._memo_size:
            self._memo.clear()
        self._memo[id(identity)] = entry  # holding it: its id is not reused meanwhile
        return entry

    def _hide(self, request: Request) -> None:
        headers = request.headers
        for name in self.headers:
            if name in headers:
                headers.remove(name)
        if self.params and request.query_string:
            kept = [p for p in request.query_string.split(b"&") if p.partition(b"=")[0] not in self.params]
            request.query_string = b"&".join(kept)
        if self.cookies and b"cookie" in headers:
            values = []
            for header in headers.get_all(b"cookie"):
                parts = [p for p in header.split(b";") if p.strip().partition(b"=")[0] not in self.cookies]
                if any(p.strip() for p in parts):
                    values.append(b";".join(parts).strip())
            headers.remove(b"cookie")
            for v in values:
                headers.add(b"cookie", v)
