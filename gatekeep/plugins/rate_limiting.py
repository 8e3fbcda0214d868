"""``rate-limiting``: Kong's plugin, on token buckets decided all-or-none.

Each configured window (``second`` ... ``year``) is a token bucket of ``rate``
tokens per window (capacity ``rate``, or ``burst``); a request takes ``cost``
tokens from every bucket of its key in one atomic step (``RateLimiter``), and
a refused request takes nothing.  ``policy = "local"`` keeps the buckets in
this process (``MemoryRateLimiter``); ``policy = "redis"`` shares them between
every gateway process (``RedisRateLimiter``: one Lua call per request, or one
per lease with ``sync_rate``).  Any other ``policy`` names a ``RateLimiter``
given to the gateway (``Gateway(config, rate_limiters={"name": limiter})``):
the plugin then takes its decisions from that object, which it neither opens
nor closes (its owner does).

Keys.  A bucket is named by ``bucket_key(scope, kind, identifier)``: the scope
is where this plugin instance applies (``global``, ``service:<name>``,
``route:<name>``, or the set of routes it serves; for a consumer-scoped
instance, the consumer), the kind is what ``limit_by`` used (``ip`` when the
identifier was empty, as Kong falls back) -- so a header value can never
name another client's bucket.  ``subject`` is the authenticated identity's
subject (with its token's ``iss``, so two issuers' "42" differ), whatever
plugin established it; ``claim`` a string or integer claim at a path
(``tenant.id``), precompiled into keys.  An anonymous identity has neither.

Failure modes (``policy = "redis"``, or a named limiter that raises
``RateLimiterUnavailable``).  When Redis is unreachable, slow past
``redis.timeout`` or answers an error: ``fault_tolerant = true`` decides with a
per-process ``MemoryRateLimiter`` of the same limits, ``false`` answers 503.
The outage is logged once when it starts and once when it ends, and for one
second after a failure requests do not try Redis at all (no request waits for
a Redis known to be down); then one request probes it, and the first success
ends the outage.  ``stats`` counts the decisions by result.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar, Literal, cast

import attrs

from gatekeep import (
    BadRequest,
    BasePlugin,
    Decision,
    Limit,
    RateLimited,
    RateLimiter,
    Request,
    Response,
    named_part,
    validators,
)
from gatekeep.ratelimit import (
    LeasedRateLimiter,
    MemoryRateLimiter,
    RateLimiterUnavailable,
    RedisSettings,
    SentinelNode,
    bucket_key,
    close_store,
    open_store,
)

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from gatekeep import PluginContext

__all__ = [
    "RateLimitStats",
    "RateLimitingConfig",
    "RateLimitingFilter",
    "RedisSettings",
    "RoleLimits",
    "SentinelNode",
]

log = logging.getLogger("gatekeep.rate_limiting")

WINDOWS: dict[str, float] = {
    "second": 1.0,
    "minute": 60.0,
    "hour": 3600.0,
    "day": 86400.0,
    "month": 30 * 86400.0,
    "year": 365 * 86400.0,
}
_STATE = "rate-limiting"
# After a failure, how long requests skip Redis before one probes it again.
PROBE_INTERVAL = 1.0
_MAX_COST_DIGITS = 9
# Bucket keys kept by (scope, kind, identifier): a returning client's key is not built again.
_MAX_KEYS = 4096


def _burst(_: object, attribute: object, value: int | Mapping[str, int] | None) -> None:
    if value is None:
        return
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"must be at least 1, got {value}")
        return
    for window, size in value.items():
        if window not in WINDOWS:
            raise ValueError(f"unknown window {window!r} (expected one of: {', '.join(WINDOWS)})")
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"{window}: must be an integer of at least 1, got {size!r}")


def _claim(_: object, attribute: object, value: str | tuple[str, ...] | None) -> None:
    if value is None:
        return
    keys = value.split(".") if isinstance(value, str) else value
    if not keys or not all(keys):
        raise ValueError(f"{value!r} is not a claim path (keys separated by '.', none empty)")


@attrs.frozen
class RoleLimits:
    """The windows (and burst) of one limit.

    A role's entry in ``roles`` (they replace the defaults for identities holding
    it), and the base of ``RateLimitingConfig``: the same fields, checked once.
    """

    # Requests per window (any subset, at least one); each window is a token bucket.
    second: int | None = attrs.field(default=None, validator=validators.positive)
    # Requests per minute.
    minute: int | None = attrs.field(default=None, validator=validators.positive)
    # Requests per hour.
    hour: int | None = attrs.field(default=None, validator=validators.positive)
    # Requests per day.
    day: int | None = attrs.field(default=None, validator=validators.positive)
    # Requests per 30 days.
    month: int | None = attrs.field(default=None, validator=validators.positive)
    # Requests per 365 days.
    year: int | None = attrs.field(default=None, validator=validators.positive)
    # Bucket capacity: an integer for the shortest window, or a table by window (default: the rate).
    burst: int | Mapping[str, int] | None = attrs.field(default=None, validator=_burst)

    def __attrs_post_init__(self) -> None:
        configured = [w for w in WINDOWS if getattr(self, w) is not None]
        if not configured:
            raise ValueError(f"set at least one of {', '.join(WINDOWS)}")
        if isinstance(self.burst, Mapping):
            for window in self.burst:
                if window in WINDOWS and getattr(self, window) is None:
                    raise ValueError(f"burst.{window} is set but {window} is not")


@attrs.frozen
class RateLimitingConfig(RoleLimits):
    """Kong's ``rate-limiting`` fields, plus ``roles``, ``burst``, ``cost``, leases and IETF headers.

    The windows and ``burst`` are ``RoleLimits``'s.
    """

    kong_names: ClassVar[Mapping[str, str]] = validators.kong_fields(
        *WINDOWS,
        "limit_by",
        "header_name",
        "path",
        "policy",
        "redis",
        "fault_tolerant",
        "hide_client_headers",
        "error_code",
        "error_message",
        "sync_rate",
    )

    # Whose requests share a bucket; an empty identifier falls back to the client IP (Kong's rule).
    # "subject": the authenticated identity's subject (and issuer); "claim": the token's claim at `claim`.
    limit_by: Literal[
        "consumer", "credential", "ip", "service", "header", "path", "route", "subject", "claim"
    ] = "consumer"
    # The header for limit_by "header".
    header_name: str | None = attrs.field(default=None, validator=validators.header_name)
    # For limit_by "path": requests to exactly this path share one bucket.
    path: str | None = None
    # For limit_by "claim": a claim of the identity's token, dotted ("tenant.id") or an array of keys.
    claim: str | tuple[str, ...] | None = attrs.field(default=None, validator=_claim)
    # "local", "redis", or the name of a ``RateLimiter`` given to ``Gateway(rate_limiters=...)``.
    policy: str = attrs.field(default="local", validator=validators.non_empty)
    # Kong's flat redis_host, redis_port, redis_timeout ... are accepted as members of this table.
    redis: RedisSettings | None = attrs.field(default=None, metadata=validators.flattened("redis_"))
    # When the store fails: true decides per process, false answers 503.
    fault_tolerant: bool = True
    # Send no rate-limit headers (Retry-After on a refusal is still sent).
    hide_client_headers: bool = False
    # The status of a refusal (400-599).
    error_code: int = 429
    # The detail of the refusal's problem document.
    error_message: str = "API rate limit exceeded"
    # Ours.
    # Per-role windows: an identity holding a listed role gets that table's windows (first listed wins).
    roles: Mapping[str, RoleLimits] = attrs.field(factory=dict)
    # Tokens a request takes from every bucket.
    cost: int = attrs.field(default=1, validator=validators.positive)
    # Read the cost from this header (a whole number, clamped to [cost, max_cost]; else 400).
    cost_header: str | None = attrs.field(default=None, validator=validators.header_name)
    # The most a cost_header can ask.
    max_cost: int = attrs.field(default=100, validator=validators.positive)
    # -1: ask Redis for every request; seconds > 0: spend local leases of lease_size tokens, at most that old.
    sync_rate: float = -1.0
    # Tokens taken from Redis per round trip when sync_rate > 0.
    lease_size: int = attrs.field(default=10, validator=validators.positive)
    # Also send the IETF draft's RateLimit-Policy and RateLimit fields.
    ietf_headers: bool = False

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.limit_by == "header" and not self.header_name:
            raise ValueError("limit_by 'header' needs header_name")
        if self.limit_by == "path" and not (self.path and self.path.startswith("/")):
            raise ValueError("limit_by 'path' needs a path starting with '/'")
        if self.limit_by == "claim" and self.claim is None:
            raise ValueError("limit_by 'claim' needs claim (a claim path such as 'tenant.id')")
        if self.policy == "redis" and self.redis is None:
            raise ValueError("policy 'redis' needs a redis table (host, port ... or url)")
        if not 400 <= self.error_code <= 599:
            raise ValueError(f"error_code must be an HTTP error status (400-599), got {self.error_code}")
        if self.max_cost < self.cost:
            raise ValueError(f"max_cost ({self.max_cost}) must not be below cost ({self.cost})")
        if self.sync_rate != -1 and not self.sync_rate > 0:
            raise ValueError(f"sync_rate must be -1 (every request) or seconds > 0, got {self.sync_rate}")
        if self.sync_rate > 0 and self.policy != "redis":
            raise ValueError("sync_rate (leases) needs policy 'redis'")


@attrs.define
class RateLimitStats:
    """Decisions by result, for metrics (``gatekeep_ratelimit_decisions_total{result}``).

    ``allowed``/``rejected`` were decided by the configured policy;
    ``fallback_allowed``/``fallback_rejected`` by the per-process fallback
    during a Redis outage (``fault_tolerant``); ``unavailable`` were answered
    503 (not fault tolerant).  ``outages`` counts outages (not requests).
    """

    allowed: int = 0
    rejected: int = 0
    fallback_allowed: int = 0
    fallback_rejected: int = 0
    unavailable: int = 0
    outages: int = 0

    @property
    def fallback(self) -> int:
        return self.fallback_allowed + self.fallback_rejected

    def as_dict(self) -> dict[str, int]:
        return {
            "allowed": self.allowed,
            "rejected": self.rejected,
            "fallback_allowed": self.fallback_allowed,
            "fallback_rejected": self.fallback_rejected,
            "unavailable": self.unavailable,
        }


class _Policy:
    """The limits for one set of windows, and the header bytes that never change."""

    __slots__ = (
        "limit_fields",
        "limit_names",
        "limit_values",
        "limits",
        "policy_field",
        "remaining_names",
        "totals",
        "windows",
    )

    def __init__(self, source: RoleLimits) -> None:
        windows = [w for w in WINDOWS if getattr(source, w) is not None]
        burst = source.burst
        sizes: dict[str, int] = {}
        if isinstance(burst, int):
            sizes[windows[0]] = burst  # the shortest window
        elif isinstance(burst, Mapping):
            sizes.update(burst)
        self.windows = tuple(windows)
        self.limits = tuple(
            Limit(rate=getattr(source, w), period=WINDOWS[w], burst=sizes.get(w), name=w) for w in windows
        )
        self.limit_names = tuple([f"x-ratelimit-limit-{w}".encode() for w in windows])
        self.remaining_names = tuple([f"x-ratelimit-remaining-{w}".encode() for w in windows])
        self.limit_values = tuple([str(lim.rate).encode() for lim in self.limits])
        # The fields that never change, as the answer carries them.
        self.limit_fields = tuple(zip(self.limit_names, self.limit_values, strict=True))
        self.totals = tuple([(b"ratelimit-limit", value) for value in self.limit_values])
        self.policy_field = ", ".join(
            f'"{w}";q={lim.rate};w={int(lim.period)}' for w, lim in zip(windows, self.limits, strict=True)
        ).encode()


_OWN_HEADERS = frozenset(
    [f"x-ratelimit-{kind}-{w}".encode() for kind in ("limit", "remaining") for w in WINDOWS]
    + [b"ratelimit-limit", b"ratelimit-remaining", b"ratelimit-reset", b"ratelimit-policy", b"ratelimit"]
)


class RateLimitingFilter(BasePlugin[RateLimitingConfig]):
    """Kong's ``rate-limiting`` (priority 910: after authentication and ACLs)."""

    name: ClassVar[str] = "rate-limiting"
    priority: ClassVar[int] = 910

    def __init__(self, config: RateLimitingConfig | None = None) -> None:
        super().__init__(config)
        c: RateLimitingConfig = self.config
        self.stats = RateLimitStats()
        self._default = _Policy(c)
        self._roles = [(role, _Policy(limits)) for role, limits in c.roles.items()]
        self._limit_by = c.limit_by
        self._cost_default = c.cost
        self._hide = c.hide_client_headers
        self._ietf = c.ietf_headers
        self._keys: dict[tuple[str, str, str], str] = {}
        claim = c.claim or ()
        self._claim: tuple[str, ...] = tuple(claim.split(".") if isinstance(claim, str) else claim)
        self._header = c.header_name.lower().encode("latin-1") if c.header_name else b""
        self._cost_header = c.cost_header.lower().encode("latin-1") if c.cost_header else b""
        self._scope: str | None = "global"
        self._error: type[RateLimited] = RateLimited
        if c.error_code != RateLimited.status:
            self._error = cast(
                "type[RateLimited]", type("RateLimitExceeded", (RateLimited,), {"status": c.error_code})
            )
        # The local policy's buckets, or the fallback's during a Redis outage.
        self._memory = MemoryRateLimiter()
        self._store: RateLimiter | None = None
        self._opened = False  # the store is ours to close (policy "redis")
        self._down_since = 0.0
        self._probe_at = 0.0

    # -- lifespan -----------------------------------------------------------------

    def carry_over(self, previous: RateLimitingFilter) -> None:
        """A reload left this entry unchanged: keep counting in its predecessor's local buckets."""
        self._memory = previous._memory
        self.stats = previous.stats

    def bind(self, context: PluginContext) -> None:
        """Find where this instance applies, to scope its keys like Kong's route/service ids;
        warn when ``limit_by`` can never find its identifier in this config."""
        self._named_limiter(context.rate_limiters)
        self._warn_identity(context)
        routes = context.routes_of(self)
        if len(routes) == len(context.routes):
            self._scope = "global"
        elif not routes:
            self._scope = None  # consumer-scoped: keyed by the consumer at request time
        else:
            services = {r.service.name for r in routes}
            if len(services) == 1:
                (service,) = services
                if len(routes) == sum(1 for r in context.routes if r.service.name == service):
                    self._scope = f"service:{service}"
                    return
            if len(routes) == 1:
                self._scope = f"route:{routes[0].name}"
            else:
                self._scope = "routes:" + ",".join(sorted(r.name for r in routes))

    def _warn_identity(self, context: PluginContext) -> None:
        by = self._limit_by
        if by not in ("consumer", "subject", "claim"):
            return
        authenticating = context.authenticating_plugins
        if by == "consumer" and authenticating and not context.can_name_consumers:
            context.warn(
                "config.limit_by",
                f"limit_by 'consumer', but the config has no consumers: {', '.join(authenticating)} "
                "can name none, so every request is limited by client IP; limit_by = 'subject' "
                "limits each authenticated caller (the token's 'sub')",
            )
        elif by in ("subject", "claim") and not authenticating and not context.authenticators:
            context.warn(
                "config.limit_by",
                f"limit_by {by!r}, but no plugin of this config authenticates a request "
                "(jwt, key-auth ...): every request is limited by client IP",
            )

    def _named_limiter(self, limiters: Mapping[str, RateLimiter]) -> None:
        """Take the ``RateLimiter`` named by ``policy`` (not "local" or "redis") from the gateway.

        Raises:
            ConfigError: the gateway was given no limiter of that name.
        """
        policy = self.config.policy
        if policy in ("local", "redis"):
            return
        self._store = named_part(
            limiters,
            policy,
            path="config.policy",
            what="rate limiter",
            argument="rate_limiters",
            also="'local', 'redis'",
        )

    async def start(self, task_group: TaskGroup) -> None:
        c: RateLimitingConfig = self.config
        if c.policy != "redis" or c.redis is None:
            return
        shared = open_store(c.redis)
        self._opened = True
        if c.sync_rate > 0:
            self._store = LeasedRateLimiter(shared, size=c.lease_size, max_age=c.sync_rate)
        else:
            self._store = shared

    async def stop(self) -> None:
        c: RateLimitingConfig = self.config
        if self._opened and c.redis is not None:
            self._store = None
            self._opened = False
            await close_store(c.redis)

    # -- the request --------------------------------------------------------------

    async def on_request(self, request: Request) -> Response | None:
        policy = self._policy(request)
        kind, identifier = self._identify(request) if self._limit_by != "ip" else ("ip", request.client_ip)
        scope = self._scope
        if scope is None:
            scope = "consumer:" + _consumer_key(request)
        named = (scope, kind, identifier)
        key = self._keys.get(named)
        if key is None:
            key = bucket_key(scope, kind, identifier)
            if len(self._keys) >= _MAX_KEYS:
                self._keys.clear()
            self._keys[named] = key
        cost = self._cost(request) if self._cost_header else self._cost_default
        store = self._store
        if store is not None and not self._down_since:  # the common case, one frame less
            try:
                decision = await store.acquire(key, policy.limits, cost)
            except RateLimiterUnavailable as exc:
                self._failed(exc)
                decision = self._fallback(key, policy.limits, cost)
            else:
                if self._down_since:  # another request failed meanwhile: this success ends it
                    self._recovered()
                if decision.allowed:
                    self.stats.allowed += 1
                else:
                    self.stats.rejected += 1
        else:
            decision = await self._decide(key, policy.limits, cost)
        request.state[_STATE] = (policy, decision)
        if decision.allowed:
            return None
        retry = str(max(1, math.ceil(decision.retry_after - 1e-9)))
        raise self._error(self.config.error_message, headers=[("retry-after", retry)])

    async def on_response(self, request: Request, response: Response) -> Response | None:
        return self._add_headers(request, response)

    def _fast_response_phase(self) -> Callable[[Request, Response], Response | None] | None:
        """``_add_headers`` itself for the chain (no coroutine), unless a subclass changed ``on_response``."""
        return self._add_headers if type(self).on_response is RateLimitingFilter.on_response else None

    def _add_headers(self, request: Request, response: Response) -> Response | None:
        """The response phase (the limit headers); it never waits."""
        found = request.state.get(_STATE)
        if found is None or self._hide:
            return None
        policy, decision = found
        raw = response.headers.raw
        for k, _ in raw:
            if k in _OWN_HEADERS:
                raw[:] = [(k, v) for k, v in raw if k not in _OWN_HEADERS]
                break
        remaining = decision.remaining
        tightest = 0
        least = remaining[0]
        least_text = b""
        names = policy.remaining_names
        for i, left in enumerate(remaining):
            text = b"%d" % left
            raw += (policy.limit_fields[i], (names[i], text))
            # Kong: the fewest remaining; on a tie, the longer window.
            if left <= least:
                tightest, least, least_text = i, left, text
        raw += (
            policy.totals[tightest],
            (b"ratelimit-remaining", least_text),
            (b"ratelimit-reset", _seconds(decision.reset[tightest])),
        )
        if self._ietf:
            raw.append((b"ratelimit-policy", policy.policy_field))
            raw.append(
                (
                    b"ratelimit",
                    ", ".join(
                        f'"{w}";r={left};t={_seconds(r).decode()}'
                        for w, left, r in zip(policy.windows, remaining, decision.reset, strict=True)
                    ).encode(),
                )
            )
        return None

    def _policy(self, request: Request) -> _Policy:
        if self._roles:
            identity = request.identity
            roles = getattr(identity, "roles", None)
            if roles:
                for role, policy in self._roles:
                    if role in roles:
                        return policy
        return self._default

    def _identify(self, request: Request) -> tuple[str, str]:
        by = self._limit_by
        identifier = ""
        if by == "consumer":
            identifier = _consumer_key(request)
            if not identifier:
                credential = getattr(request.identity, "credential", None)
                if credential:
                    return "credential", str(credential)
        elif by == "subject":
            identity = request.identity
            if identity is not None and not identity.anonymous and identity.subject:
                identifier = identity.subject
                issuer = identity.claims.get("iss")
                if isinstance(issuer, str):
                    # Two issuers may both have a subject "42": each keeps its own bucket.
                    identifier = bucket_key(issuer, identifier)
        elif by == "claim":
            identity = request.identity
            if identity is not None and not identity.anonymous:
                identifier = _claim_value(identity.claims, self._claim)
        elif by == "credential":
            identifier = str(getattr(request.identity, "credential", None) or "")
        elif by == "service":
            identifier = getattr(request.service, "name", "") or ""
        elif by == "route":
            identifier = getattr(request.route, "name", "") or ""
        elif by == "header":
            value = request.headers.get(self._header)
            identifier = value.decode("latin-1") if value else ""
        elif by == "path":
            identifier = request.path if request.path == self.config.path else ""
        if not identifier:
            return "ip", request.client_ip
        return by, identifier

    def _cost(self, request: Request) -> int:
        c: RateLimitingConfig = self.config
        raw = request.headers.get(self._cost_header)
        if raw is None:
            return c.cost
        raw = raw.strip()
        if not raw.isdigit() or len(raw) > _MAX_COST_DIGITS:
            raise BadRequest(f"{c.cost_header} must be a whole number")
        return min(max(int(raw), c.cost), c.max_cost)

    async def _decide(self, key: str, limits: Sequence[Limit], cost: int) -> Decision:
        store = self._store
        if store is None:
            if self.config.policy != "local":
                raise RuntimeError(
                    f"the rate-limiting filter (policy {self.config.policy!r}) was not started"
                )
            decision = self._memory.acquire_nowait(key, limits, cost)
        else:
            if self._down_since:
                now = time.monotonic()
                if now < self._probe_at:
                    return self._fallback(key, limits, cost)
                self._probe_at = now + PROBE_INTERVAL  # this request probes; the others skip
            try:
                decision = await store.acquire(key, limits, cost)
            except RateLimiterUnavailable as exc:
                self._failed(exc)
                return self._fallback(key, limits, cost)
            if self._down_since:
                self._recovered()
        if decision.allowed:
            self.stats.allowed += 1
        else:
            self.stats.rejected += 1
        return decision

    def _fallback(self, key: str, limits: Sequence[Limit], cost: int) -> Decision:
        if not self.config.fault_tolerant:
            self.stats.unavailable += 1
            raise RateLimiterUnavailable("rate limiting is unavailable; try again later")
        decision = self._memory.acquire_nowait(key, limits, cost)
        if decision.allowed:
            self.stats.fallback_allowed += 1
        else:
            self.stats.fallback_rejected += 1
        return decision

    def _failed(self, exc: RateLimiterUnavailable) -> None:
        now = time.monotonic()
        self._probe_at = now + PROBE_INTERVAL
        if self._down_since:
            return
        self._down_since = now
        self.stats.outages += 1
        how = "deciding per process" if self.config.fault_tolerant else "answering 503"
        log.warning("rate-limiting: Redis is unavailable (%s); %s until it answers again", exc.detail, how)

    def _recovered(self) -> None:
        outage = time.monotonic() - self._down_since
        self._down_since = 0.0
        self._probe_at = 0.0
        log.warning("rate-limiting: Redis answers again after %.1f s", outage)


def _claim_value(claims: Mapping[str, object], keys: tuple[str, ...]) -> str:
    """The string (or integer) at ``keys`` in ``claims``; ``""`` for anything else (claims come
    from outside: an object or a list would name a bucket its sender could vary)."""
    node: object = claims
    for key in keys:
        if not isinstance(node, Mapping):
            return ""
        node = node.get(key)
    if isinstance(node, str):
        return node
    if isinstance(node, int) and not isinstance(node, bool):
        return str(node)
    return ""


def _consumer_key(request: Request) -> str:
    consumer = request.consumer
    if consumer is None:
        return str(getattr(request.identity, "consumer", None) or "")
    if isinstance(consumer, str):
        return consumer
    key = getattr(consumer, "key", None)
    return key if isinstance(key, str) else ""


def _seconds(value: float) -> bytes:
    """Whole seconds, rounded up (a header must never invite a client back early)."""
    return b"%d" % max(0, math.ceil(value - 1e-9))
