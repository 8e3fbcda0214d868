"""A small authoritative DNS server on 127.0.0.1 (UDP and TCP, one port), on dnspython's message API.

dnsmasq is not installed on these machines; this answers what discovery asks:
SRV, A and AAAA records set by the test, with their TTLs, and the targets'
addresses in the additional section when ``additional`` is on (as Consul's
DNS does).  Unknown names get NXDOMAIN; a known name without the asked type
gets an empty NOERROR answer.  ``mode`` simulates failures: ``"servfail"``
answers SERVFAIL, ``"drop"`` never answers (the resolver times out).
UDP answers larger than the client's payload size are truncated (TC), and the
resolver retries over TCP, as with a real server.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any, Literal

import anyio
import anyio.abc
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["DnsServer", "serve_dns"]


def _name(text: str) -> dns.name.Name:
    return dns.name.from_text(text)


class DnsServer:
    """The zone data and behaviour; ``queries`` lists every (name, type) asked."""

    def __init__(self) -> None:
        self.srv: dict[dns.name.Name, tuple[int, list[tuple[int, int, int, str]]]] = {}
        self.addresses: dict[tuple[dns.name.Name, str], tuple[int, list[str]]] = {}
        self.additional = True
        self.mode: Literal["ok", "servfail", "drop"] = "ok"
        self.queries: list[tuple[str, str]] = []

    def set_srv(self, name: str, records: list[tuple[int, int, int, str]], ttl: int = 30) -> None:
        """``records``: (priority, weight, port, target)."""
        self.srv[_name(name)] = (ttl, records)

    def set_a(self, name: str, addresses: list[str], ttl: int = 30, rdtype: str = "A") -> None:
        self.addresses[(_name(name), rdtype)] = (ttl, addresses)

    def count(self, name: str, rdtype: str = "SRV") -> int:
        text = _name(name).to_text()
        return sum(1 for n, t in self.queries if n == text and t == rdtype)

    def _known(self, name: dns.name.Name) -> bool:
        return name in self.srv or any(n == name for n, _ in self.addresses)

    def answer(self, wire: bytes) -> dns.message.Message | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if not query.question:
            return None
        question = query.question[0]
        self.queries.append((question.name.to_text(), dns.rdatatype.to_text(question.rdtype)))
        if self.mode == "drop":
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if self.mode == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        name, rdtype = question.name, question.rdtype
        if not self._known(name):
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        if rdtype == dns.rdatatype.SRV and name in self.srv:
            ttl, records = self.srv[name]
            texts = [f"{p} {w} {port} {target}" for p, w, port, target in records]
            response.answer.append(dns.rrset.from_text_list(name, ttl, "IN", "SRV", texts))
            if self.additional:
                for _, _, _, target in records:
                    for kind in ("A", "AAAA"):
                        found = self.addresses.get((_name(target), kind))
                        if found and target != ".":
                            response.additional.append(
                                dns.rrset.from_text_list(_name(target), found[0], "IN", kind, found[1])
                            )
        elif rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            kind = dns.rdatatype.to_text(rdtype)
            found = self.addresses.get((name, kind))
            if found:
                response.answer.append(dns.rrset.from_text_list(name, found[0], "IN", kind, found[1]))
        return response


async def _serve_udp(server: DnsServer, sock: Any) -> None:
    async for wire, peer in sock:
        response = server.answer(wire)
        if response is None:
            continue
        limit = max(512, response.payload if response.edns >= 0 else 512)
        try:
            data = response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer.clear()
            response.additional.clear()
            response.flags |= dns.flags.TC
            data = response.to_wire()
        await sock.sendto(data, *peer)


async def _serve_tcp_connection(server: DnsServer, stream: anyio.abc.SocketStream) -> None:
    async with stream:
        buffer = b""
        with suppress(anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
            while True:
                while len(buffer) < 2 or len(buffer) < 2 + struct.unpack("!H", buffer[:2])[0]:
                    buffer += await stream.receive()
                size = struct.unpack("!H", buffer[:2])[0]
                wire, buffer = buffer[2 : 2 + size], buffer[2 + size :]
                response = server.answer(wire)
                if response is None:
                    continue
                data = response.to_wire()
                await stream.send(struct.pack("!H", len(data)) + data)


@asynccontextmanager
async def serve_dns(server: DnsServer) -> AsyncIterator[int]:
    """Serve ``server`` on 127.0.0.1, UDP and TCP on the same port; yield the port."""
    # TCP first, on a port the system picks: anyio 4.7 (our floor) leaks the
    # socket of a TCP listener whose bind fails, which filterwarnings=error turns
    # into a failure; a UDP socket whose bind fails is closed properly.
    for _ in range(20):
        tcp = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = tcp.extra(anyio.abc.SocketAttribute.local_port)
        try:
            udp = await anyio.create_udp_socket(local_host="127.0.0.1", local_port=port)
        except OSError:
            await tcp.aclose()
            continue
        break
    else:  # pragma: no cover - 20 ports taken in a row
        raise RuntimeError("no free port for both UDP and TCP")

    async def tcp_handler(stream: anyio.abc.SocketStream) -> None:
        await _serve_tcp_connection(server, stream)

    async with udp, tcp, anyio.create_task_group() as tg:
        tg.start_soon(_serve_udp, server, udp)
        tg.start_soon(tcp.serve, tcp_handler, tg)
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()
