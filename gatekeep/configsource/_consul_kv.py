"""``ConsulKVStore``: the config as one Consul KV key, watched with blocking queries.

Theory of operation
-------------------
The value is the config's canonical JSON (``gatekeep config push`` converts a
TOML or decK file).  ``GET /v1/kv/<key>`` answers ``[{"Key", "Value"
(base64), "ModifyIndex", ...}]`` or 404; the version is the key's
``ModifyIndex`` (``"0"``: no key).  ``watch`` repeats the read as a blocking
query (``?index=<X-Consul-Index>&wait=``), with the index rules of
``gatekeep.discovery.next_index``, and yields whenever ``ModifyIndex``
moved: every gateway of a fleet sees a push within one round trip.  A failed
query is retried after a backoff with jitter (0.1 s doubling to 5 s); the
gateway keeps its config meanwhile.  ``write`` is ``PUT /v1/kv/<key>?cas=<index>``
(Consul answers ``true`` or ``false``): check-and-set, ``cas=0`` for "only if absent".
The client is discovery's ``ConsulClient`` (same pool, TLS, token handling).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import random
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio

from .._errors import ConfigError, FieldError
from .._upstream import TLSSettings
from ..discovery import ConsulClient, ConsulConfig, ConsulError, ConsulHTTPError, ConsulTLSConfig, next_index
from ..discovery import parse_duration as _parse_duration
from ._document import ConfigDocument, Snapshot, canonical_json, parse_config_bytes
from ._errors import ConfigSourceError, VersionConflict
from ._store import as_document

__all__ = ["ConsulKVStore"]

log = logging.getLogger("gatekeep.config")


class ConsulKVStore:
    """A config kept in one Consul KV key.

    Args:
        address: the agent, ``http://127.0.0.1:8500`` (as discovery's ``address``).
        key: the KV key, ``gatekeep/config``.
        token: an ACL token (``X-Consul-Token``).
        tls: TLS to an ``https`` agent (a ``ConsulTLSConfig`` or ``TLSSettings``).
        dc: the datacenter (default: the agent's).
        wait: the longest a blocking query waits (Consul's duration syntax).
    """

    def __init__(
        self,
        address: str,
        key: str,
        *,
        token: str | None = None,
        tls: TLSSettings | ConsulTLSConfig | None = None,
        dc: str | None = None,
        wait: str = "30s",
        connect_timeout: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        key = key.strip("/")
        if not key:
            raise ValueError("a Consul KV key is needed (consul://host:8500/gatekeep/config)")
        ConsulConfig(address=address, wait=wait)  # checks the address and wait as discovery does
        self.address = address
        self.key = key
        self.dc = dc
        self.wait = wait
        self._wait_seconds = _parse_duration(wait)
        self._client = ConsulClient(address, token=token, tls=tls, connect_timeout=connect_timeout)
        self._rng = rng or random.Random()

    @property
    def name(self) -> str:
        return f"consul+{self.address}/{self.key}"

    def _query(self, *extra: tuple[str, str]) -> list[tuple[str, str]]:
        query = [("dc", self.dc)] if self.dc else []
        return query + list(extra)

    async def _get(self, index: int) -> tuple[Snapshot, int | None]:
        """One read (blocking when ``index`` > 0): the snapshot and ``X-Consul-Index``."""
        query = self._query()
        read_timeout = 10.0
        if index > 0:
            query += [("index", str(index)), ("wait", self.wait)]
            read_timeout = self._wait_seconds * 17 / 16 + 10.0
        try:
            reply = await self._client.request("GET", f"/v1/kv/{self.key}", query, read_timeout=read_timeout)
        except ConsulHTTPError as exc:
            if exc.code == 404:
                # No key: the answer still carries X-Consul-Index, but ConsulHTTPError drops it;
                # a plain read then blocks from 1 (safe, never spins thanks to the caller's backoff).
                return Snapshot(None, "0"), None
            raise ConfigSourceError(f"{self.name}: {exc.detail}") from exc
        except ConsulError as exc:
            raise ConfigSourceError(f"{self.name}: {exc.detail}") from exc
        return self._parse(reply.body), reply.index

    def _parse(self, body: bytes) -> Snapshot:
        try:
            entries = json.loads(body)
            entry = entries[0]
            version = str(int(entry["ModifyIndex"]))
            value = entry.get("Value")
        except (ValueError, LookupError, TypeError) as exc:
            raise ConfigSourceError(f"{self.name}: not the documented KV answer: {exc}") from exc
        if value is None:
            return Snapshot(None, version, ConfigError([_field(f"{self.name}: the key is empty")]))
        try:
            raw = base64.b64decode(value, validate=True)
            data = parse_config_bytes(raw, "json", self.name)
            return Snapshot(ConfigDocument.of(data), version)
        except binascii.Error as exc:
            return Snapshot(None, version, ConfigError([_field(f"{self.name}: bad base64: {exc}")]))
        except ConfigError as exc:
            return Snapshot(None, version, exc)

    async def read(self) -> Snapshot:
        snapshot, _ = await self._get(0)
        return snapshot

    async def write(self, data: Mapping[str, Any] | ConfigDocument, expected_version: str | None) -> str:
        document = as_document(data)
        body = canonical_json(document.data)
        extra: list[tuple[str, str]] = []
        if expected_version is not None:
            extra.append(("cas", expected_version))
        try:
            reply = await self._client.request("PUT", f"/v1/kv/{self.key}", self._query(*extra), body=body)
        except ConsulError as exc:
            raise ConfigSourceError(f"{self.name}: {exc.detail}") from exc
        if reply.json() is not True:
            current = await self.read()
            raise VersionConflict(expected_version or "", current.version)
        # Consul's PUT does not say the new ModifyIndex: read it back.  When another write landed
        # in between, our version is unknown: "0" makes the caller's next check-and-set fail
        # (a conflict, so it reads again) rather than overwrite a change it never saw.
        stored = await self.read()
        if stored.document is None or stored.document.hash != document.hash:
            return "0"
        return stored.version

    async def watch(self, after_version: str) -> AsyncIterator[Snapshot]:
        index = 0
        seen = after_version
        failures = 0
        while True:
            held = index
            try:
                snapshot, returned = await self._get(held)
            except ConfigSourceError as exc:
                failures += 1
                if failures == 1:
                    log.warning("config store %s failed (%s); keeping the current config", self.name, exc)
                index = 0
                delay = min(5.0, 0.1 * 2.0 ** min(failures - 1, 10))
                await anyio.sleep(delay / 2 + self._rng.uniform(0, delay / 2))
                continue
            if failures:
                log.warning("config store %s works again after %d failed reads", self.name, failures)
            failures = 0
            index = next_index(held, returned)
            if returned is None:
                # No key (404): poll gently until it appears.
                await anyio.sleep(0.2)
            if snapshot.version != seen:
                seen = snapshot.version
                yield snapshot

    async def aclose(self) -> None:
        await self._client.aclose()


def _field(message: str) -> FieldError:
    return FieldError("", message)
