"""A Consul test double: the agent and health endpoints gatekeep uses, as an ASGI app.

No Consul binary can be installed on these machines, so the discovery tests
run against this double, served on a real loopback socket.  It follows
HashiCorp's documented HTTP API for the endpoints below -- the JSON shapes
(``Node``, ``Service``, ``Checks`` with the node's ``serfHealth`` check whose
``ServiceID`` is ""), ``X-Consul-Index``, blocking queries (``index`` +
``wait``, held until the index moves past the one sent or the wait passes,
plus up to wait/16 of jitter), ``passing``, ``tag``, ``dc``, ACL tokens --
and nothing more:

- ``GET  /v1/health/service/<name>``     ``passing``, ``tag`` (repeatable), ``dc``, ``index``, ``wait``
- ``PUT  /v1/agent/service/register``    the service definition (``replace-existing-checks``)
- ``PUT  /v1/agent/service/deregister/<id>``   a no-op for an unknown id
- ``PUT  /v1/agent/check/pass|warn|fail/<check id>``  TTL checks only (``note``)
- ``PUT  /v1/agent/check/update/<check id>``   ``{"Status", "Output"}``
- ``PUT  /v1/catalog/register``           a service on another node or datacenter
- ``GET  /v1/agent/services``, ``GET /v1/agent/checks``
- ``GET  /v1/kv/<key>``                     ``index``/``wait`` (blocking on the key), ``raw``, ``dc``;
  404 when absent
- ``PUT  /v1/kv/<key>``                     the raw body as the value; ``cas`` (0: only if absent), ``flags``;
  answers ``true``/``false``
- ``DELETE /v1/kv/<key>``                   ``cas``; answers ``true``/``false``

TTL checks turn critical when their TTL passes without an update, as in
Consul.  HTTP/TCP/gRPC checks are recorded but not run: they keep the
``Status`` they were registered with (``critical`` by default, as in Consul),
so the tests drive health through TTL checks, which behave the same on a
real agent.  Test-only powers (``restore``, ``fail_with``, ``hold``: a hung
agent that reads requests and answers none until the event is set) have no
HTTP endpoint; tests that use them skip against a real agent.

When ``CONSUL_HTTP_ADDR`` is set, ``consul_endpoint()`` yields that agent
instead of the double (``CONSUL_HTTP_TOKEN`` for its token).
"""

from __future__ import annotations

import base64
import json
import os
import random
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, unquote

import anyio
import attrs
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSListener

from gatekeep._miniserver import _connection
from gatekeep.discovery import parse_duration
from gatekeep.testing import serve_asgi

__all__ = ["ConsulDouble", "ConsulEndpoint", "consul_endpoint", "serve_consul"]

_STATUSES = ("passing", "warning", "critical")


def _status_rank(status: str) -> int:
    return {"passing": 0, "warning": 1}.get(status, 2)


class ConsulDouble:
    """The state of one Consul cluster (one agent node per datacenter, more via the catalog)."""

    def __init__(
        self,
        *,
        datacenter: str = "dc1",
        node: str = "node-1",
        node_address: str = "127.0.0.1",
        token: str | None = None,
        datacenters: tuple[str, ...] = (),
        rng: random.Random | None = None,
    ) -> None:
        self.datacenter = datacenter
        self.agent_node = node
        self.token = token
        self.datacenters = {datacenter, *datacenters}
        self.index = 10
        self.nodes: dict[tuple[str, str], dict[str, Any]] = {}
        # (dc, node, service id) -> Service object
        self.services: dict[tuple[str, str, str], dict[str, Any]] = {}
        # (dc, node, check id) -> Check object (+ "_ttl", "_expires" private keys)
        self.checks: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.service_index: dict[tuple[str, str], int] = {}
        # (dc, key) -> KV entry (``Value`` as bytes here, base64 on the wire); the index of
        # each key's last change (deletes too), for blocking queries on a key.
        self.kv: dict[tuple[str, str], dict[str, Any]] = {}
        self.kv_index: dict[tuple[str, str], int] = {}
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.fail_with: tuple[int, str] | None = None
        self.hold: anyio.Event | None = None
        self._changed = anyio.Event()
        self._epoch = 0
        self._rng = rng or random.Random(1)
        for dc in self.datacenters:
            self.add_node(node if dc == datacenter else f"{node}-{dc}", node_address, dc)

    # -- state changes --------------------------------------------------------

    def _bump(self, dc: str, names: set[str]) -> None:
        self.index += 1
        for name in names:
            self.service_index[(dc, name)] = self.index
        self._changed.set()
        self._changed = anyio.Event()

    def add_node(self, name: str, address: str, dc: str | None = None) -> None:
        dc = dc or self.datacenter
        self.datacenters.add(dc)
        self.index += 1
        self.nodes[(dc, name)] = {
            "ID": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{dc}.{name}")),
            "Node": name,
            "Address": address,
            "Datacenter": dc,
            "TaggedAddresses": {"lan": address, "lan_ipv4": address, "wan": address, "wan_ipv4": address},
            "Meta": {"consul-network-segment": ""},
            "CreateIndex": self.index,
            "ModifyIndex": self.index,
        }
        self.checks[(dc, name, "serfHealth")] = {
            "Node": name,
            "CheckID": "serfHealth",
            "Name": "Serf Health Status",
            "Status": "passing",
            "Notes": "",
            "Output": "Agent alive and reachable",
            "ServiceID": "",
            "ServiceName": "",
            "ServiceTags": [],
            "Type": "",
            "Interval": "",
            "Timeout": "",
            "ExposedPort": 0,
            "Definition": {},
            "CreateIndex": self.index,
            "ModifyIndex": self.index,
        }

    def set_node_health(self, name: str, status: str, dc: str | None = None) -> None:
        """Flip a node's ``serfHealth`` (as when its agent stops answering gossip)."""
        dc = dc or self.datacenter
        self.checks[(dc, name, "serfHealth")]["Status"] = status
        names = {s["Service"] for (d, n, _), s in self.services.items() if d == dc and n == name}
        self._bump(dc, names)

    def restore(self, index: int) -> None:
        """Move every index back to ``index`` (a snapshot restore); wake blocked queries."""
        self.index = index
        for key in self.service_index:
            self.service_index[key] = min(self.service_index[key], index)
        self._epoch += 1
        self._changed.set()
        self._changed = anyio.Event()

    def _register(self, dc: str, node: str, body: Mapping[str, Any], replace_checks: bool) -> None:
        name = body["Name"] if "Name" in body else body.get("Service")
        service_id = body.get("ID") or name
        old = self.services.get((dc, node, service_id))
        names = {name} | ({old["Service"]} if old else set())
        self.index += 1
        address = body.get("Address", "") or ""
        port = body.get("Port", 0) or 0
        weights = body.get("Weights") or {"Passing": 1, "Warning": 1}
        tagged = body.get("TaggedAddresses") or {}
        if address and not tagged:
            tagged = {
                "lan_ipv4": {"Address": address, "Port": port},
                "wan_ipv4": {"Address": address, "Port": port},
            }
        self.services[(dc, node, service_id)] = {
            "ID": service_id,
            "Service": name,
            "Tags": list(body.get("Tags") or []),
            "Address": address,
            "TaggedAddresses": tagged,
            "Meta": dict(body.get("Meta") or {}),
            "Port": port,
            "Weights": {"Passing": weights.get("Passing", 1), "Warning": weights.get("Warning", 1)},
            "EnableTagOverride": bool(body.get("EnableTagOverride", False)),
            "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}},
            "Connect": {},
            "PeerName": "",
            "CreateIndex": old["CreateIndex"] if old else self.index,
            "ModifyIndex": self.index,
        }
        checks = ([body["Check"]] if body.get("Check") else []) + list(body.get("Checks") or [])
        if replace_checks:
            for key in [
                k for k, c in self.checks.items() if k[:2] == (dc, node) and c["ServiceID"] == service_id
            ]:
                del self.checks[key]
        for n, check in enumerate(checks, start=1):
            check_id = check.get("CheckID") or check.get("ID")
            if not check_id:
                check_id = f"service:{service_id}" if len(checks) == 1 else f"service:{service_id}:{n}"
            previous = self.checks.get((dc, node, check_id))
            kind = next((k for k in ("HTTP", "TCP", "TTL", "GRPC", "UDP", "H2PING") if k in check), "")
            status = check.get("Status") or (previous["Status"] if previous else "critical")
            entry = {
                "Node": node,
                "CheckID": check_id,
                "Name": check.get("Name") or f"Service '{name}' check",
                "Status": status,
                "Notes": check.get("Notes", ""),
                "Output": "",
                "ServiceID": service_id,
                "ServiceName": name,
                "ServiceTags": list(body.get("Tags") or []),
                "Type": kind.lower(),
                "Interval": check.get("Interval", ""),
                "Timeout": check.get("Timeout", ""),
                "ExposedPort": 0,
                "Definition": {},
                "CreateIndex": self.index,
                "ModifyIndex": self.index,
            }
            if kind == "TTL":
                ttl = parse_duration(check["TTL"])
                entry["_ttl"] = ttl
                entry["_expires"] = time.monotonic() + ttl
            self.checks[(dc, node, check_id)] = entry
        self._bump(dc, names)

    def register(self, body: Mapping[str, Any], *, node: str | None = None, dc: str | None = None) -> None:
        """Register a service directly (what ``/v1/catalog/register`` does)."""
        self._register(dc or self.datacenter, node or self.agent_node, body, False)

    def _deregister(self, dc: str, node: str, service_id: str) -> None:
        old = self.services.pop((dc, node, service_id), None)
        if old is None:
            return
        for key in [
            k for k, c in self.checks.items() if k[:2] == (dc, node) and c["ServiceID"] == service_id
        ]:
            del self.checks[key]
        self._bump(dc, {old["Service"]})

    def _set_check(self, dc: str, node: str, check_id: str, status: str, output: str) -> int:
        check = self.checks.get((dc, node, check_id))
        if check is None:
            return 404
        if "_ttl" not in check:
            return 500
        check["_expires"] = time.monotonic() + check["_ttl"]
        if check["Status"] != status or check["Output"] != output:
            check["Status"] = status
            check["Output"] = output
            self._bump(dc, {check["ServiceName"]})
            check["ModifyIndex"] = self.index
        return 200

    def _expire(self) -> float | None:
        """Turn overdue TTL checks critical; return when the next one is due."""
        now = time.monotonic()
        soonest: float | None = None
        for (dc, _, _), check in self.checks.items():
            expires = check.get("_expires")
            if expires is None:
                continue
            if expires <= now:
                check["_expires"] = None
                if check["Status"] != "critical":
                    check["Status"] = "critical"
                    check["Output"] = "TTL expired"
                    self._bump(dc, {check["ServiceName"]})
            elif soonest is None or expires < soonest:
                soonest = expires
        return soonest

    # -- queries ---------------------------------------------------------------

    def health(self, dc: str, name: str, tags: list[str], passing: bool) -> list[dict[str, Any]]:
        out = []
        for (sdc, node, _), service in sorted(self.services.items()):
            if sdc != dc or service["Service"] != name:
                continue
            if any(t not in service["Tags"] for t in tags):
                continue
            checks = [
                {k: v for k, v in c.items() if not k.startswith("_")}
                for (cdc, cnode, _), c in sorted(self.checks.items())
                if cdc == dc and cnode == node and c["ServiceID"] in ("", service["ID"])
            ]
            if passing and any(c["Status"] != "passing" for c in checks):
                continue
            out.append({"Node": self.nodes[(dc, node)], "Service": service, "Checks": checks})
        return out

    def current_index(self, dc: str, name: str) -> int:
        return self.service_index.get((dc, name), self.index)

    # -- ASGI --------------------------------------------------------------------

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        method: str = scope["method"]
        path: str = scope["path"]
        query: dict[str, list[str]] = {}
        for k, v in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True):
            query.setdefault(k, []).append(v)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self.requests.append((method, path, query))
        if self.hold is not None:
            await self.hold.wait()
        status, payload, extra = await self._handle(method, path, query, headers, body)
        if isinstance(payload, str):
            data = payload.encode()
            content_type = b"text/plain; charset=utf-8"
        else:
            data = json.dumps(payload).encode()
            content_type = b"application/json"
        out = [(b"content-type", content_type), (b"content-length", str(len(data)).encode())]
        out += [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": data})

    def _token_state(self, headers: Mapping[str, str]) -> str:
        """``ok``, ``anonymous`` or ``invalid``."""
        if self.token is None:
            return "ok"
        given = headers.get("x-consul-token")
        auth = headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given:
            return "anonymous"
        return "ok" if given == self.token else "invalid"

    async def _handle(
        self, method: str, path: str, query: dict[str, list[str]], headers: Mapping[str, str], body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        if self.fail_with is not None:
            return self.fail_with[0], self.fail_with[1], {}
        self._expire()
        token = self._token_state(headers)
        if token == "invalid":
            return 403, "ACL not found", {}
        dc = (query.get("dc") or [self.datacenter])[0]
        if dc not in self.datacenters:
            return 500, "No path to datacenter", {}
        write = method in ("PUT", "DELETE")
        if write and token != "ok":
            return 403, "Permission denied", {}
        if path.startswith("/v1/kv/"):
            return await self._kv(method, dc, unquote(path[len("/v1/kv/") :]), query, body, token == "ok")
        if path.startswith("/v1/health/service/"):
            if method != "GET":
                return 405, "method not allowed", {}
            return await self._health(dc, path[len("/v1/health/service/") :], query, token == "ok")
        if path == "/v1/agent/services" and method == "GET":
            services = {
                sid: {**s, "Datacenter": d}
                for (d, n, sid), s in self.services.items()
                if d == self.datacenter and n == self.agent_node
            }
            return 200, services if token == "ok" else {}, {}
        if path == "/v1/agent/checks" and method == "GET":
            checks = {
                cid: {k: v for k, v in c.items() if not k.startswith("_")}
                for (d, n, cid), c in self.checks.items()
                if d == self.datacenter and n == self.agent_node and cid != "serfHealth"
            }
            return 200, checks if token == "ok" else {}, {}
        if not write:
            return 405 if path.startswith("/v1/agent/") else 404, "method not allowed", {}
        try:
            data = json.loads(body) if body else None
        except ValueError as exc:
            return 400, f"Request decode failed: {exc}", {}
        if path == "/v1/agent/service/register":
            if not isinstance(data, dict) or not data.get("Name"):
                return (
                    400,
                    "Invalid Service Meta: missing service name" if data else "Missing service name",
                    {},
                )
            replace = query.get("replace-existing-checks", ["false"])[0] in ("", "true", "1")
            self._register(self.datacenter, self.agent_node, data, replace)
            return 200, "", {}
        if path.startswith("/v1/agent/service/deregister/"):
            self._deregister(self.datacenter, self.agent_node, unquote(path.rsplit("/", 1)[1]))
            return 200, "", {}
        if path == "/v1/catalog/register":
            if not isinstance(data, dict) or not data.get("Node"):
                return 400, "Must provide node", {}
            rdc = data.get("Datacenter") or self.datacenter
            if (rdc, data["Node"]) not in self.nodes:
                self.add_node(data["Node"], data.get("Address", ""), rdc)
            if data.get("Service"):
                self._register(rdc, data["Node"], data["Service"], False)
            return 200, True, {}
        for verb, status in (("pass", "passing"), ("warn", "warning"), ("fail", "critical")):
            prefix = f"/v1/agent/check/{verb}/"
            if path.startswith(prefix):
                check_id = unquote(path[len(prefix) :])
                note = (query.get("note") or [""])[0]
                return self._check_answer(
                    check_id, self._set_check(dc, self.agent_node, check_id, status, note)
                )
        if path.startswith("/v1/agent/check/update/"):
            check_id = unquote(path[len("/v1/agent/check/update/") :])
            if not isinstance(data, dict) or data.get("Status") not in _STATUSES:
                return 400, "Invalid check status", {}
            code = self._set_check(dc, self.agent_node, check_id, data["Status"], data.get("Output", ""))
            return self._check_answer(check_id, code)
        return 404, "404 page not found", {}

    def kv_put(self, key: str, value: bytes, *, cas: int | None = None, dc: str | None = None) -> bool:
        """Set ``key`` (check-and-set against its ModifyIndex when ``cas`` is given; 0: only if absent)."""
        dc = dc or self.datacenter
        old = self.kv.get((dc, key))
        if cas is not None and (old["ModifyIndex"] if old else 0) != cas:
            return False
        self.index += 1
        self.kv[(dc, key)] = {
            "LockIndex": 0,
            "Key": key,
            "Flags": old["Flags"] if old else 0,
            "Value": value,
            "CreateIndex": old["CreateIndex"] if old else self.index,
            "ModifyIndex": self.index,
        }
        self._kv_changed(dc, key)
        return True

    def _kv_changed(self, dc: str, key: str) -> None:
        self.kv_index[(dc, key)] = self.index
        self._changed.set()
        self._changed = anyio.Event()

    async def _kv(
        self, method: str, dc: str, key: str, query: dict[str, list[str]], body: bytes, allowed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        if not key:
            return 400, "Missing key name", {}
        cas = int(query["cas"][0]) if "cas" in query else None
        if method == "PUT":
            if len(body) > 512 * 1024:
                return 413, "Value exceeds 524288 byte limit", {}
            ok = self.kv_put(key, body, cas=cas, dc=dc)
            if ok and "flags" in query:
                self.kv[(dc, key)]["Flags"] = int(query["flags"][0])
            return 200, ok, {}
        if method == "DELETE":
            old = self.kv.get((dc, key))
            if cas is not None and (old["ModifyIndex"] if old else 0) != cas:
                return 200, False, {}
            if old is not None:
                del self.kv[(dc, key)]
                self.index += 1
                self._kv_changed(dc, key)
            return 200, True, {}
        if method != "GET":
            return 405, "method not allowed", {}
        index = int((query.get("index") or ["0"])[0] or 0)
        if index > 0:
            wait = min(parse_duration((query.get("wait") or ["5m"])[0]), 600.0)
            deadline = time.monotonic() + wait + self._rng.uniform(0, wait / 16)
            epoch = self._epoch
            while self.kv_index.get((dc, key), 1) <= index and self._epoch == epoch:
                now = time.monotonic()
                if now >= deadline:
                    break
                changed = self._changed
                with anyio.move_on_after(deadline - now):
                    await changed.wait()
        entry = self.kv.get((dc, key)) if allowed else None
        extra = {"X-Consul-Index": str(self.kv_index.get((dc, key), 1)), "X-Consul-Knownleader": "true"}
        if entry is None:
            return 404, "", extra
        if "raw" in query:
            return 200, entry["Value"].decode("latin-1"), extra
        wire = {**entry, "Value": base64.b64encode(entry["Value"]).decode("ascii")}
        return 200, [wire], extra

    @staticmethod
    def _check_answer(check_id: str, code: int) -> tuple[int, Any, dict[str, str]]:
        if code == 404:
            return 404, f'Unknown check ID "{check_id}"', {}
        if code == 500:
            return 500, f'CheckID "{check_id}" does not have associated TTL', {}
        return 200, "", {}

    async def _health(
        self, dc: str, name: str, query: dict[str, list[str]], allowed: bool
    ) -> tuple[int, Any, dict[str, str]]:
        name = unquote(name)
        index = int((query.get("index") or ["0"])[0] or 0)
        if index > 0:
            wait = parse_duration((query.get("wait") or ["5m"])[0])
            wait = min(wait, 600.0)
            deadline = time.monotonic() + wait + self._rng.uniform(0, wait / 16)
            epoch = self._epoch
            while self.current_index(dc, name) <= index and self._epoch == epoch:
                now = time.monotonic()
                if now >= deadline:
                    break
                until = deadline
                due = self._expire()
                if due is not None:
                    until = min(until, due + 0.001)
                changed = self._changed
                with anyio.move_on_after(until - now):
                    await changed.wait()
                self._expire()
        extra = {"X-Consul-Index": str(self.current_index(dc, name)), "X-Consul-Knownleader": "true"}
        extra["X-Consul-Lastcontact"] = "0"
        passing = "passing" in query and query["passing"][0].lower() not in ("false", "0")
        if not allowed:
            extra["X-Consul-Results-Filtered-By-ACLs"] = "true"
            return 200, [], extra
        return 200, self.health(dc, name, query.get("tag", []), passing), extra


@asynccontextmanager
async def serve_consul(
    double: ConsulDouble, *, ssl_context: ssl.SSLContext | None = None, port: int = 0
) -> AsyncIterator[str]:
    """Serve ``double`` on 127.0.0.1 (HTTPS when ``ssl_context`` is given); yield its address."""
    if ssl_context is None:
        async with serve_asgi(double, port=port) as bound:
            yield f"http://127.0.0.1:{bound}"
        return
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
    bound = tcp.extra(SocketAttribute.local_port)
    listener = TLSListener(tcp, ssl_context, standard_compatible=False)

    async def handle(stream: Any) -> None:
        await _connection(stream, double)

    async def serve_one(stream: Any) -> None:
        try:
            await handle(stream)
        except Exception:  # a failed handshake (the mTLS test) ends that connection only
            await anyio.aclose_forcefully(stream)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve_one, tg)
        try:
            yield f"https://127.0.0.1:{bound}"
        finally:
            tg.cancel_scope.cancel()


@attrs.define
class ConsulEndpoint:
    """Where the tests' Consul is; ``double`` is ``None`` against a real agent."""

    address: str
    token: str | None
    double: ConsulDouble | None

    @property
    def real(self) -> bool:
        return self.double is None


@asynccontextmanager
async def consul_endpoint(**double_options: Any) -> AsyncIterator[ConsulEndpoint]:
    """The real agent at ``CONSUL_HTTP_ADDR`` when set, else a fresh double on loopback."""
    real = os.environ.get("CONSUL_HTTP_ADDR")
    if real:
        address = real if "://" in real else f"http://{real}"
        yield ConsulEndpoint(address, os.environ.get("CONSUL_HTTP_TOKEN"), None)
        return
    double = ConsulDouble(**double_options)
    async with AsyncExitStack() as stack:
        address = await stack.enter_async_context(serve_consul(double))
        yield ConsulEndpoint(address, double.token, double)
