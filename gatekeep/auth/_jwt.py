"""The JWT verifier core: parse, pick a key, verify, check claims, cache.

Usable on its own (service-side helpers import it) and by the ``jwt``
filter::

    verifier = JWTVerifier(VerifierConfig(issuers=(IssuerConfig(
        issuer="https://idp.example.com/realms/shop", audiences=("orders",)),)))
    async with anyio.create_task_group() as tg:
        await verifier.start(tg)          # background JWKS refresh
        identity = await verifier.verify(token)

Where the key comes from, in this order:

1. the token's ``iss`` is a configured issuer: that issuer's static keys and
   its JWKS (``jwks_uri``, or discovered from the issuer), with its own
   ``algorithms`` and ``audiences``;
2. the token's ``key_claim_name`` claim (payload, then header; ``iss`` by
   default) names a consumer credential (Kong's ``jwt_secrets``);
3. the static keys of the config, by ``kid`` (or by algorithm without one).

A key is never taken from the token (``jwk``, ``jku``, ``x5c``, ``x5u`` are
ignored), ``alg`` must be the algorithm the chosen key is bound to (so
``none`` and HS/RS confusion cannot pass), and a token carrying ``crit``
extensions is refused.  pyjwt (via ``VerificationKey``) does the crypto;
everything that can go wrong is an ``InvalidToken`` (401) or, before the
first JWKS of an issuer ever arrived, ``KeysUnavailable`` (503).

Verified tokens are cached (LRU, ``cache_size``) by their full text until
``exp`` (at most ``cache_ttl`` seconds), and a cached token is dropped as
soon as the key that verified it left its JWKS.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs
from anyio.abc import TaskGroup

from .. import validators
from .._protocols import Identity
from ._claims import strings_at
from ._errors import InvalidToken, KeysUnavailable
from ._fetch import is_loopback_url
from ._jwks import JWKSPolicy, JWKSStats, RemoteKeySet
from ._key_config import Algorithm, KeyConfig
from ._keys import ALGORITHMS, VerificationKey

__all__ = ["Credential", "IssuerConfig", "JWTVerifier", "VerifierConfig"]

log = logging.getLogger("gatekeep.auth")

_SEGMENT = re.compile(rb"^[A-Za-z0-9_-]*$")
_MAX_CANDIDATES = 4  # keys tried for one token without a kid
_MAX_EXPIRATION = 31_536_000  # Kong's bound: one year
_NONE: frozenset[str] = frozenset()


def _https_or_loopback(_: Any, attribute: Any, value: str | None) -> None:
    if value is None:
        return
    if not (value.startswith("https://") or (value.startswith("http://") and is_loopback_url(value))):
        raise ValueError(f"must be an https:// URL (http:// only on loopback), got {value!r}")


def _ca_file(_: Any, attribute: Any, value: str | None) -> None:
    if value is None:
        return
    try:
        ssl.create_default_context(cafile=value)
    except OSError as exc:  # no such file, no PEM certificate in it (ssl.SSLError) ...
        raise ValueError(f"cannot load CA certificates from {value!r}: {exc.strerror or exc}") from exc


def _issuer(_: Any, attribute: Any, value: str) -> None:
    if not value:
        raise ValueError("must not be empty")


def _algorithms(_: Any, attribute: Any, value: tuple[str, ...]) -> None:
    if not value:
        raise ValueError("needs at least one algorithm")


@attrs.frozen
class IssuerConfig:
    """A token issuer: its keys come from ``jwks_uri``, discovery, or ``keys``.

    Without ``jwks_uri`` and with ``discovery`` (the default), the JWKS URI
    is read from ``<issuer>/.well-known/openid-configuration``.  Empty
    ``audiences`` means ``aud`` is not checked for this issuer.
    """

    issuer: str = attrs.field(validator=_issuer)
    jwks_uri: str | None = attrs.field(default=None, validator=_https_or_loopback)
    audiences: tuple[str, ...] = ()
    algorithms: tuple[Algorithm, ...] = attrs.field(default=("RS256",), validator=_algorithms)
    keys: tuple[KeyConfig, ...] = ()
    discovery: bool = True
    # PEM CA bundle trusted for this issuer's discovery and JWKS fetches (default: the system's CAs).
    ca_file: str | None = attrs.field(default=None, validator=_ca_file)

    def __attrs_post_init__(self) -> None:
        if attrs.validators.get_disabled():
            return  # a config with errors already reported, built for the other checks
        if self.jwks_uri is None and self.discovery:
            _https_or_loopback(None, None, self.issuer)
        if self.jwks_uri is None and not self.discovery and not self.keys:
            raise ValueError("an issuer needs a jwks_uri, discovery, or static keys")
        for k in self.keys:
            alg = k.build().algorithm
            if alg not in self.algorithms:
                raise ValueError(f"a static key is for {alg}, which is not in 'algorithms'")


@attrs.frozen
class VerifierConfig:
    """What a ``JWTVerifier`` accepts.  Times are in seconds."""

    issuers: tuple[IssuerConfig, ...] = ()
    keys: tuple[KeyConfig, ...] = ()
    # Audiences for tokens verified by static keys or consumer credentials (empty: not checked).
    audiences: tuple[str, ...] = ()
    key_claim_name: str = "iss"
    # Claims that must be present (and valid); exp and nbf are always checked when present.
    claims_to_verify: tuple[Literal["exp", "nbf"], ...] = ("exp",)
    required_claims: tuple[str, ...] = ()
    leeway: float = attrs.field(default=0.0, validator=validators.non_negative)
    maximum_expiration: int = attrs.field(default=0, validator=validators.non_negative)
    typ: str | None = None
    max_token_size: int = attrs.field(default=8192, validator=validators.non_negative)
    cache_size: int = attrs.field(default=10_000, validator=validators.non_negative)
    cache_ttl: float = attrs.field(default=300.0, validator=validators.non_negative)
    roles_claim: tuple[str, ...] = ("roles", "realm_access.roles")
    scopes_claim: tuple[str, ...] = ("scope", "scp")
    groups_claim: tuple[str, ...] = ()
    # Claims whose value names a consumer (id, username or custom_id) for issuer and static-key tokens.
    consumer_claim: tuple[str, ...] = ()
    jwks: JWKSPolicy = JWKSPolicy()

    def __attrs_post_init__(self) -> None:
        if attrs.validators.get_disabled():
            return  # a config with errors already reported, built for the other checks
        if self.maximum_expiration > _MAX_EXPIRATION:
            raise ValueError(f"maximum_expiration must be at most {_MAX_EXPIRATION} (one year)")
        if self.maximum_expiration and "exp" not in self.claims_to_verify:
            raise ValueError("maximum_expiration needs 'exp' in claims_to_verify")
        seen: set[str] = set()
        for i in self.issuers:
            if i.issuer in seen:
                raise ValueError(f"issuer {i.issuer!r} is configured twice")
            seen.add(i.issuer)


@attrs.frozen
class Credential:
    """A consumer credential: the key, whose consumer it is, and its id."""

    key: VerificationKey
    consumer: str
    id: str
    groups: frozenset[str] = frozenset()


@attrs.frozen
class _Issuer:
    config: IssuerConfig
    static: tuple[VerificationKey, ...]
    remote: RemoteKeySet | None
    audiences: frozenset[str]
    algorithms: frozenset[str]


@attrs.define(slots=True)
class _Entry:
    identity: Identity
    until: float
    key: VerificationKey
    remote: RemoteKeySet | None


def _b64(segment: bytes) -> bytes:
    if not _SEGMENT.match(segment):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))


_ABSENT: Any = object()


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    # A registered time claim is a NumericDate (RFC 7519 §2) when present at all: "exp": null
    # must not read as "never expires", nor a huge integer overflow into a 500.
    value = claims.get(name, _ABSENT)
    if value is _ABSENT:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken(f"the '{name}' claim must be a number")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidToken(f"the '{name}' claim must be a number") from None
    if not math.isfinite(number):
        raise InvalidToken(f"the '{name}' claim must be a number")
    return number


class JWTVerifier:
    """Verifies JWTs against issuers, static keys and consumer credentials.

    Args:
        config: what to accept.
        credentials: consumer credentials by their key (the ``jwt`` filter fills them in ``bind``).
        clock: wall-clock seconds (``exp``, ``nbf``, ``iat`` are wall-clock).
        monotonic: for the JWKS caches.
        ssl_context: TLS settings for JWKS and discovery fetches (default: system CAs).
    """

    def __init__(
        self,
        config: VerifierConfig | None = None,
        *,
        credentials: Mapping[str, Credential] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config = config if config is not None else VerifierConfig()
        self.clock = clock
        self.credentials: dict[str, Credential] = dict(credentials or {})
        # Consumers tokens may name through ``consumer_claim``: name -> (consumer key, groups).
        self.consumers: dict[str, tuple[str, frozenset[str]]] = {}
        self.issuers: dict[str, _Issuer] = {}
        for ic in config.issuers:
            remote = None
            if ic.jwks_uri is not None or ic.discovery:
                context = ssl_context
                if ic.ca_file is not None:
                    context = ssl.create_default_context(cafile=ic.ca_file)
                remote = RemoteKeySet(
                    issuer=ic.issuer,
                    jwks_uri=ic.jwks_uri,
                    algorithms=ic.algorithms,
                    policy=config.jwks,
                    ssl_context=context,
                    clock=monotonic,
                )
            if not ic.audiences:
                log.warning("issuer %s: no audiences configured, 'aud' is not checked", ic.issuer)
            self.issuers[ic.issuer] = _Issuer(
                ic,
                tuple(k.build() for k in ic.keys),
                remote,
                frozenset(ic.audiences),
                frozenset(ic.algorithms),
            )
        self.static: list[tuple[VerificationKey, str | None]] = [(k.build(), k.issuer) for k in config.keys]
        self.audiences = frozenset(config.audiences)
        self.required = tuple(config.required_claims) + tuple(
            c for c in config.claims_to_verify if c not in config.required_claims
        )
        self._typ = _normal_typ(config.typ) if config.typ else None
        self._cache: OrderedDict[str | bytes, _Entry] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0

    # -- lifecycle ---------------------------------------------------------

    async def start(self, task_group: TaskGroup) -> None:
        """Start the background JWKS refreshers in ``task_group``."""
        for issuer in self.issuers.values():
            if issuer.remote is not None:
                await issuer.remote.start(task_group)

    async def stop(self) -> None:
        for issuer in self.issuers.values():
            if issuer.remote is not None:
                await issuer.remote.stop()

    @property
    def stats(self) -> dict[str, JWKSStats]:
        """JWKS fetch statistics by issuer."""
        return {name: i.remote.stats for name, i in self.issuers.items() if i.remote is not None}

    def remote(self, issuer: str) -> RemoteKeySet | None:
        i = self.issuers.get(issuer)
        return i.remote if i is not None else None

    # -- verification ------------------------------------------------------

    async def verify(self, token: str | bytes) -> Identity:
        """The identity a token proves.

        Raises:
            InvalidToken: the token is malformed, expired, wrongly signed ... (401).
            KeysUnavailable: the token's issuer has never served keys yet (503).
        """
        max_size = self.config.max_token_size
        if max_size and len(token) > max_size:
            # (Before any decoding or hashing; an ASCII token has as many bytes as characters, and
            # one that is not ASCII is refused below anyway.)
            raise InvalidToken(f"the token is larger than {max_size} bytes")
        cached = self.cached(token)
        if cached is not None:
            return cached
        # The cache key is what the caller gave (the ``jwt`` filter gives bytes: no decoding on a
        # hit); a token verified once as str and once as bytes is simply cached twice.
        key_of_cache = token
        if isinstance(token, bytes):
            try:
                token = token.decode("ascii")
            except UnicodeDecodeError:
                raise InvalidToken("the token is not a JWS in compact form") from None
        now = self.clock()
        self.cache_misses += 1
        identity, key, remote, exp = await self._verify(token, now)
        size = self.config.cache_size
        if size:
            until = now + self.config.cache_ttl
            if exp is not None:
                until = min(until, exp + self.config.leeway)
            self._cache[key_of_cache] = _Entry(identity, until, key, remote)
            if len(self._cache) > size:
                self._cache.popitem(last=False)
        return identity

    def cached(self, token: str | bytes) -> Identity | None:
        """The identity of ``token`` when it was verified before and its entry still holds
        (before its ``exp``, within ``cache_ttl``, its key still in its JWKS); else ``None``.

        No await and no parsing: the hot path of a repeated token (``verify`` starts with it).
        """
        entry = self._cache.get(token)
        if entry is None:
            return None
        if self.clock() < entry.until and (entry.remote is None or entry.remote.state.holds(entry.key)):
            self._cache.move_to_end(token)
            self.cache_hits += 1
            return entry.identity
        del self._cache[token]
        return None

    async def _verify(
        self, token: str, now: float
    ) -> tuple[Identity, VerificationKey, RemoteKeySet | None, float | None]:
        raw = token.encode("ascii", "replace")
        parts = raw.split(b".")
        if len(parts) != 3:
            raise InvalidToken("the token is not a JWS in compact form (three base64url parts)")
        try:
            header = json.loads(_b64(parts[0]))
            claims = json.loads(_b64(parts[1]))
            signature = _b64(parts[2])
        except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError) as exc:
            raise InvalidToken("the token is not valid base64url JSON") from exc
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise InvalidToken("the token's header and payload must be JSON objects")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise InvalidToken("the token's algorithm is not accepted")
        if "crit" in header or header.get("b64") is False:
            raise InvalidToken("the token uses critical header extensions, which are not supported")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("the token's kid must be a string")
        if self._typ is not None:
            typ = header.get("typ")
            if not isinstance(typ, str) or _normal_typ(typ) != self._typ:
                raise InvalidToken(f"the token's typ must be {self.config.typ}")

        candidates, audiences, remote, cred = await self._keys(header, claims, alg, kid)
        signing_input = parts[0] + b"." + parts[1]
        key = None
        for candidate in candidates[:_MAX_CANDIDATES]:
            if candidate.verify(signing_input, signature):
                key = candidate
                break
        if key is None:
            raise InvalidToken("the token's signature is invalid")

        exp = self._check_times(claims, now)
        if audiences:
            aud = claims.get("aud")
            auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if not any(isinstance(a, str) and a in audiences for a in auds):
                raise InvalidToken("the token is not meant for this audience")
        for name in self.required:
            if name not in claims:
                raise InvalidToken(f"the token has no '{name}' claim")
        sub = claims.get("sub")
        cfg = self.config
        consumer, credential, groups = cred
        if consumer is None and self.consumers:
            for name in cfg.consumer_claim:
                value = claims.get(name)
                if isinstance(value, str) and value in self.consumers:
                    consumer, groups = self.consumers[value]
                    break
        identity = Identity(
            subject=sub if isinstance(sub, str) else (credential or ""),
            consumer=consumer,
            credential=credential,
            roles=strings_at(claims, cfg.roles_claim),
            scopes=strings_at(claims, cfg.scopes_claim),
            groups=strings_at(claims, cfg.groups_claim) | groups,
            claims=claims,
        )
        return identity, key, remote, exp

    async def _keys(
        self, header: Mapping[str, Any], claims: Mapping[str, Any], alg: str, kid: str | None
    ) -> tuple[
        list[VerificationKey],
        frozenset[str],
        RemoteKeySet | None,
        tuple[str | None, str | None, frozenset[str]],
    ]:
        iss = claims.get("iss")
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is not None:
            if alg not in issuer.algorithms:
                raise InvalidToken("the token's algorithm is not accepted for its issuer")
            found = [k for k in issuer.static if k.algorithm == alg and (kid is None or k.kid in (None, kid))]
            remote = issuer.remote
            if not found and remote is not None:
                found = await remote.keys_for(kid, alg)
                if not found and not remote.state.has_keys:
                    raise KeysUnavailable(f"the signing keys of {issuer.config.issuer} are not available yet")
            if not found:
                raise InvalidToken("no key of the token's issuer matches its kid and algorithm")
            client = claims.get("azp") or claims.get("client_id")
            return found, issuer.audiences, remote, (None, client if isinstance(client, str) else None, _NONE)

        name = self.config.key_claim_name
        value = claims.get(name, header.get(name))
        if isinstance(value, str) and value in self.credentials:
            cred = self.credentials[value]
            if cred.key.algorithm != alg:
                raise InvalidToken("the token's algorithm does not match its credential")
            return [cred.key], self.audiences, None, (cred.consumer, cred.id, cred.groups)

        found = [
            k
            for k, key_issuer in self.static
            if k.algorithm == alg
            and (kid is None or k.kid in (None, kid))
            and (key_issuer is None or key_issuer == iss)
        ]
        if found:
            return found, self.audiences, None, (None, kid, _NONE)
        raise InvalidToken("no key is configured for this token")

    def _check_times(self, claims: Mapping[str, Any], now: float) -> float | None:
        leeway = self.config.leeway
        exp = _number(claims, "exp")
        if exp is not None and now >= exp + leeway:
            raise InvalidToken("the token has expired")
        nbf = _number(claims, "nbf")
        if nbf is not None and now < nbf - leeway:
            raise InvalidToken("the token is not valid yet")
        iat = _number(claims, "iat")
        if iat is not None and now < iat - leeway:
            raise InvalidToken("the token was issued in the future")
        max_exp = self.config.maximum_expiration
        if max_exp:
            # Without exp the lifetime is unbounded: refuse rather than skip the check.
            if exp is None:
                raise InvalidToken("the token has no 'exp' claim")
            if exp - now > max_exp + leeway:
                raise InvalidToken("the token's lifetime exceeds the maximum allowed expiration")
        return exp

    # -- cache -------------------------------------------------------------

    def clear_cache(self) -> None:
        self._cache.clear()

    @property
    def cache_length(self) -> int:
        return len(self._cache)


def _normal_typ(typ: str) -> str:
    typ = typ.strip().lower()
    return typ[len("application/") :] if typ.startswith("application/") else typ
