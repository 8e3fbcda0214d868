"""Remote key sets (JWKS): a sans-IO cache state machine and a thin fetcher.

``KeySetState`` holds the keys of one ``jwks_uri`` and decides, from an
injected monotonic clock, when to refresh:

- a fetched set lives ``max-age`` seconds (``Cache-Control``), clamped to
  ``[min_ttl, max_ttl]`` (``default_ttl`` without one); it is refreshed in
  the background when ``refresh_ahead`` of that time has passed;
- a failed fetch (down, garbage, slow) keeps the last good keys and retries
  with exponential backoff from ``retry_min`` to ``retry_max``; keys stay
  usable up to ``max_stale`` seconds past their expiry, then are dropped;
- a token with an unknown ``kid`` triggers a refetch unless a fetch (of any
  kind: start-up, background, an earlier unknown kid) started less than
  ``unknown_kid_cooldown`` seconds ago (5 s).  A key the issuer rotated in is
  therefore usable within that time, even right after start-up, while forged
  kids make at most one fetch per cooldown: the fetch is single-flight and the
  cooldown counts from its start.

``RemoteKeySet`` is the I/O shell: discovery (``/.well-known/openid-configuration``),
the fetch (``_fetch.fetch``), a background refresher in the task group given
to ``start`` and single-flight refetches (many waiting requests, one fetch;
each waits at most ``wait_timeout``).  ``stats`` counts fetch results for
``gatekeep_jwks_fetches_total{result}``.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import time
from collections.abc import Callable, Collection, Iterable, Mapping

import anyio
import attrs
from anyio.abc import TaskGroup

from .. import validators
from ._fetch import FetchError, fetch, is_loopback_url
from ._keys import ALGORITHMS, BadKey, VerificationKey, key_from_jwk

__all__ = [
    "JWKSError",
    "JWKSPolicy",
    "JWKSStats",
    "KeySetState",
    "RemoteKeySet",
    "parse_jwks",
    "parse_max_age",
]

log = logging.getLogger("gatekeep.auth.jwks")


@attrs.frozen
class JWKSPolicy:
    """How a remote key set is cached and refreshed (seconds)."""

    min_ttl: float = attrs.field(default=60.0, validator=validators.positive)
    max_ttl: float = attrs.field(default=86_400.0, validator=validators.positive)
    default_ttl: float = attrs.field(default=600.0, validator=validators.positive)
    refresh_ahead: float = attrs.field(default=0.8, validator=validators.positive)
    # Short, so that a rotated key works within seconds; the fetch is single-flight, so a flood
    # of forged kids still costs the issuer one request per cooldown (12 a minute).
    unknown_kid_cooldown: float = attrs.field(default=5.0, validator=validators.positive)
    retry_min: float = attrs.field(default=5.0, validator=validators.positive)
    retry_max: float = attrs.field(default=300.0, validator=validators.positive)
    max_stale: float = attrs.field(default=86_400.0, validator=validators.positive)
    fetch_timeout: float = attrs.field(default=5.0, validator=validators.positive)
    wait_timeout: float = attrs.field(default=2.0, validator=validators.positive)
    max_size: int = attrs.field(default=512 * 1024, validator=validators.positive)

    def __attrs_post_init__(self) -> None:
        if attrs.validators.get_disabled():
            return  # a config with errors already reported, built for the other checks
        if self.min_ttl > self.max_ttl:
            raise ValueError("min_ttl must not be greater than max_ttl")
        if self.refresh_ahead > 1:
            raise ValueError("refresh_ahead is a fraction of the TTL, at most 1")


class JWKSError(Exception):
    """A JWKS or discovery document that cannot be used (the old keys stay)."""


@attrs.define
class JWKSStats:
    """Counters for metrics: fetches by result, keys held, last error."""

    fetches: dict[str, int] = attrs.field(factory=lambda: {"success": 0, "error": 0, "invalid": 0})
    keys: int = 0
    stale: bool = False
    last_error: str = ""
    last_success: float = 0.0


_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)\"?", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|[,\s])(?:no-cache|no-store)(?:$|[,\s=])", re.IGNORECASE)


def parse_max_age(cache_control: str | None) -> float | None:
    """``max-age`` of a ``Cache-Control`` value (0 for ``no-cache``/``no-store``), else ``None``."""
    if not cache_control:
        return None
    if _NO_CACHE.search(cache_control):
        return 0.0
    m = _MAX_AGE.search(cache_control)
    return float(m.group(1)) if m else None


def parse_jwks(body: bytes, algorithms: Collection[str]) -> list[VerificationKey]:
    """The signature keys of a JWKS document usable with ``algorithms``.

    Keys with ``use`` other than ``sig``, ``key_ops`` without ``verify``, an
    ``alg`` not allowed, or that do not parse are skipped.  A key without
    ``alg`` is bound to each allowed algorithm its type can serve.

    Raises:
        JWKSError: not JSON, no ``keys`` array, or no usable key at all.
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise JWKSError("the JWKS is not JSON") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JWKSError("the JWKS has no 'keys' array")
    allowed = [a for a in algorithms if a in ALGORITHMS]
    out: list[VerificationKey] = []
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict):
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        ops = jwk.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            continue
        alg = jwk.get("alg")
        candidates = [alg] if alg is not None else allowed
        for candidate in candidates:
            if candidate not in allowed:
                continue
            try:
                out.append(key_from_jwk(jwk, candidate))
            except BadKey as exc:
                if alg is not None:
                    log.debug("JWKS key %r skipped: %s", jwk.get("kid"), exc)
    if not out:
        raise JWKSError("the JWKS has no usable signature key")
    return out


class KeySetState:
    """The sans-IO cache of one key set.  Times come from ``clock`` (monotonic seconds)."""

    def __init__(self, policy: JWKSPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.clock = clock
        self.stats = JWKSStats()
        self._by_kid: dict[str, list[VerificationKey]] = {}
        self._all: list[VerificationKey] = []
        self._ids: frozenset[str] = frozenset()
        self.expires_at = 0.0
        self.refresh_at = 0.0  # due at once: nothing fetched yet
        self.next_attempt_at = 0.0
        self.last_fetch_at = -float("inf")
        self.failures = 0
        self.has_keys = False

    # -- lookups (the request path) ----------------------------------------

    def candidates(self, kid: str | None, algorithm: str) -> list[VerificationKey]:
        """Keys that may have signed a token with this ``kid`` and ``alg``."""
        if kid is not None:
            return [k for k in self._by_kid.get(kid, ()) if k.algorithm == algorithm]
        return [k for k in self._all if k.algorithm == algorithm]

    def holds(self, key: VerificationKey) -> bool:
        """Whether ``key`` is still in the set (for the verified-token cache)."""
        return key.id in self._ids

    # -- scheduling -------------------------------------------------------

    def due(self) -> bool:
        now = self.clock()
        return now >= self.refresh_at and now >= self.next_attempt_at

    def next_wakeup(self) -> float:
        """Seconds until the next scheduled fetch."""
        return max(0.0, max(self.refresh_at, self.next_attempt_at) - self.clock())

    def may_refetch_for_unknown_kid(self) -> bool:
        now = self.clock()
        return now - self.last_fetch_at >= self.policy.unknown_kid_cooldown and now >= self.next_attempt_at

    def expire_stale(self) -> None:
        """Drop keys held longer than ``max_stale`` past their expiry."""
        if self.has_keys and self.clock() > self.expires_at + self.policy.max_stale:
            log.error(
                "JWKS keys expired %.0f s ago and could not be refreshed: dropped", self.policy.max_stale
            )
            self._set([])
            self.has_keys = False
        self.stats.stale = self.has_keys and self.clock() > self.expires_at

    # -- transitions ------------------------------------------------------

    def fetch_started(self) -> None:
        self.last_fetch_at = self.clock()

    def fetched(self, body: bytes, cache_control: str | None, algorithms: Collection[str]) -> None:
        """A 200 answer arrived: take its keys, or count it invalid and keep the old ones."""
        try:
            keys = parse_jwks(body, algorithms)
        except JWKSError as exc:
            self.failed(str(exc), result="invalid")
            return
        now = self.clock()
        max_age = parse_max_age(cache_control)
        p = self.policy
        ttl = p.default_ttl if max_age is None else min(max(max_age, p.min_ttl), p.max_ttl)
        self._set(keys)
        self.has_keys = True
        self.expires_at = now + ttl
        self.refresh_at = now + ttl * p.refresh_ahead
        self.next_attempt_at = 0.0
        if self.failures:
            log.warning("JWKS fetch recovered after %d failure(s)", self.failures)
        self.failures = 0
        s = self.stats
        s.fetches["success"] += 1
        s.keys = len(keys)
        s.stale = False
        s.last_success = now

    def failed(self, reason: str, *, result: str = "error") -> None:
        """A fetch failed: keep the keys, back off."""
        self.failures += 1
        p = self.policy
        backoff = min(p.retry_max, p.retry_min * 2 ** min(self.failures - 1, 20))
        self.next_attempt_at = self.clock() + backoff
        s = self.stats
        s.fetches[result] = s.fetches.get(result, 0) + 1
        s.last_error = reason
        if self.failures == 1:
            # Logged once per outage; the counters say the rest.
            log.warning(
                "JWKS fetch failed (%s); %s",
                reason,
                "serving the last good keys" if self.has_keys else "no keys yet",
            )
        self.expire_stale()

    def _set(self, keys: Iterable[VerificationKey]) -> None:
        by_kid: dict[str, list[VerificationKey]] = {}
        all_keys = list(keys)
        for k in all_keys:
            if k.kid is not None:
                by_kid.setdefault(k.kid, []).append(k)
        self._by_kid = by_kid
        self._all = all_keys
        self._ids = frozenset(k.id for k in all_keys)
        self.stats.keys = len(all_keys)


class RemoteKeySet:
    """The keys of one issuer's ``jwks_uri`` (or discovered from its ``issuer``), kept fresh.

    Call ``start(task_group)`` to refresh in the background (the gateway does
    it); without it, fetches run in the requesting task, bounded by
    ``wait_timeout``.
    """

    def __init__(
        self,
        *,
        issuer: str | None,
        jwks_uri: str | None,
        algorithms: Collection[str],
        policy: JWKSPolicy = JWKSPolicy(),
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if jwks_uri is None and issuer is None:
            raise ValueError("a remote key set needs a jwks_uri or an issuer")
        self.issuer = issuer
        self.jwks_uri = jwks_uri
        self.algorithms = frozenset(algorithms)
        self.policy = policy
        self.ssl_context = ssl_context
        self.state = KeySetState(policy, clock)
        self._task_group: TaskGroup | None = None
        self._inflight: anyio.Event | None = None
        self._stopped = False

    @property
    def stats(self) -> JWKSStats:
        return self.state.stats

    @property
    def source(self) -> str:
        return self.jwks_uri or f"{self.issuer} (discovery)"

    async def start(self, task_group: TaskGroup) -> None:
        self._task_group = task_group
        self._stopped = False
        task_group.start_soon(self._refresher, name=f"gatekeep JWKS refresher {self.source}")

    async def stop(self) -> None:
        self._stopped = True
        self._task_group = None

    async def _refresher(self) -> None:
        while not self._stopped:
            if self.state.due():
                await self.refresh()
            self.state.expire_stale()
            await anyio.sleep(max(0.05, self.state.next_wakeup()))

    async def refresh(self) -> None:
        """Fetch now, or join the fetch already running (single-flight); wait at most ``wait_timeout``."""
        event = self._inflight
        if event is None:
            event = self._inflight = anyio.Event()
            self.state.fetch_started()
            if self._task_group is not None:
                self._task_group.start_soon(self._fetch, event)
            else:
                with anyio.move_on_after(self.policy.wait_timeout):
                    await self._fetch(event)
                return
        with anyio.move_on_after(self.policy.wait_timeout):
            await event.wait()

    async def keys_for(self, kid: str | None, algorithm: str) -> list[VerificationKey]:
        """Candidate keys for a token, refetching on a first use or an unknown ``kid``."""
        state = self.state
        if not state.has_keys and (self._inflight is not None or state.clock() >= state.next_attempt_at):
            await self.refresh()
        found = state.candidates(kid, algorithm)
        if (
            not found
            and kid is not None
            and (self._inflight is not None or state.may_refetch_for_unknown_kid())
        ):
            await self.refresh()
            found = state.candidates(kid, algorithm)
        return found

    async def _fetch(self, event: anyio.Event) -> None:
        try:
            uri = self.jwks_uri or await self._discover()
            answer = await fetch(
                uri,
                time_limit=self.policy.fetch_timeout,
                max_size=self.policy.max_size,
                ssl_context=self.ssl_context,
            )
            self.state.fetched(answer.body, answer.headers.get("cache-control"), self.algorithms)
        except (FetchError, JWKSError) as exc:
            self.state.failed(str(exc), result="invalid" if isinstance(exc, JWKSError) else "error")
        finally:
            self._inflight = None
            event.set()

    async def _discover(self) -> str:
        assert self.issuer is not None
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        answer = await fetch(
            url,
            time_limit=self.policy.fetch_timeout,
            max_size=self.policy.max_size,
            ssl_context=self.ssl_context,
        )
        try:
            doc = json.loads(answer.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise JWKSError("the discovery document is not JSON") from exc
        if not isinstance(doc, Mapping):
            raise JWKSError("the discovery document is not an object")
        if doc.get("issuer") != self.issuer:
            raise JWKSError("the discovery document names another issuer")
        uri = doc.get("jwks_uri")
        if not isinstance(uri, str) or not (uri.startswith("https://") or is_loopback_url(uri)):
            raise JWKSError("the discovery document has no https jwks_uri")
        self.jwks_uri = uri
        return uri
