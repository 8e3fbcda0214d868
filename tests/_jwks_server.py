"""A real OIDC issuer for the auth tests: discovery + JWKS over loopback HTTP.

``jwks_server()`` serves an ASGI app on ``gatekeep.testing.serve_asgi`` and
yields a ``JWKSServer`` whose behaviour the test changes while it runs:
``rotate()`` adds a key (and may drop the old ones), ``mode`` makes it
answer normally (``"ok"``), fail (``"error"``: 500), return garbage
(``"garbage"``) or stall (``"slow"``: ``delay`` seconds before answering).
``fetches`` counts the JWKS requests; ``mint(...)`` signs a token with one
of the server's keys.  With ``ssl_context`` it is served over TLS
(``https://127.0.0.1:<port>``, discovery naming an ``https`` ``jwks_uri``).
"""

from __future__ import annotations

import base64
import json
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import jwt
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSListener, TLSStream
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gatekeep._miniserver import ASGI, _connection
from gatekeep.testing import serve_asgi

_ALGS = {"RS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}


def new_private_key(alg: str) -> Any:
    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(alg)


def public_jwk(private_key: Any, alg: str, kid: str | None) -> dict[str, Any]:
    algo = jwt.get_algorithm_by_name(alg)
    public = private_key.public_key()
    jwk: dict[str, Any] = json.loads(algo.to_jwk(public))
    if isinstance(public, ec.EllipticCurvePublicKey):
        # RFC 7518 §6.2.1.2: each coordinate is the full size of the curve, leading
        # zeros kept, as issuers publish it.  pyjwt 2.8 drops them (then refuses its own
        # JWK, ~1 key in 64); every release reads the full-size form.
        size = (public.curve.key_size + 7) // 8
        numbers = public.public_numbers()
        for name, value in (("x", numbers.x), ("y", numbers.y)):
            jwk[name] = base64.urlsafe_b64encode(value.to_bytes(size, "big")).rstrip(b"=").decode()
    jwk["alg"] = alg
    jwk["use"] = "sig"
    if kid is not None:
        jwk["kid"] = kid
    return jwk


def mint(
    private_key: Any,
    alg: str,
    claims: Mapping[str, Any],
    *,
    kid: str | None = None,
    headers: Mapping[str, Any] | None = None,
) -> str:
    extra = dict(headers or {})
    if kid is not None:
        extra["kid"] = kid
    return jwt.encode(dict(claims), private_key, algorithm=alg, headers=extra or None)


class JWKSServer:
    def __init__(self, alg: str = "RS256") -> None:
        self.alg = alg
        self.keys: list[tuple[str, Any]] = []
        self.mode = "ok"
        self.delay = 0.0
        self.max_age: int | None = 300
        self.fetches = 0
        self.discoveries = 0
        self.issuer = ""
        self.extra_keys: list[dict[str, Any]] = []
        self._n = 0
        self.rotate()

    @property
    def jwks_uri(self) -> str:
        return self.issuer + "/jwks"

    def rotate(self, *, keep: bool = True) -> str:
        """Add a new signing key (the current one from now on); drop the others unless ``keep``."""
        self._n += 1
        kid = f"key-{self._n}"
        entry = (kid, new_private_key(self.alg))
        self.keys = [*self.keys, entry] if keep else [entry]
        return kid

    @property
    def kid(self) -> str:
        return self.keys[-1][0]

    @property
    def private_key(self) -> Any:
        return self.keys[-1][1]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(k, self.alg, kid) for kid, k in self.keys] + self.extra_keys}

    def mint(self, **claims: Any) -> str:
        now = int(time.time())
        full = {"iss": self.issuer, "sub": "alice", "aud": "orders", "iat": now, "exp": now + 300}
        full.update(claims)
        return mint(
            self.private_key, self.alg, {k: v for k, v in full.items() if v is not None}, kid=self.kid
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"]
        if path == "/.well-known/openid-configuration":
            self.discoveries += 1
            body = json.dumps({"issuer": self.issuer, "jwks_uri": self.jwks_uri}).encode()
            await _answer(send, 200, body)
            return
        if path != "/jwks":
            await _answer(send, 404, b"{}")
            return
        self.fetches += 1
        mode = self.mode
        if mode == "slow":
            await anyio.sleep(self.delay)
        if mode == "error":
            await _answer(send, 500, b"oops")
        elif mode == "garbage":
            await _answer(send, 200, b"<html>not json</html>")
        else:
            headers = (
                [(b"cache-control", f"max-age={self.max_age}".encode())] if self.max_age is not None else []
            )
            await _answer(send, 200, json.dumps(self.jwks()).encode(), headers)


async def _answer(
    send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def serve_tls(app: ASGI, context: ssl.SSLContext) -> AsyncIterator[int]:
    """Serve ``app`` over TLS on 127.0.0.1 (gatekeep's h11 server behind anyio's TLS listener)."""
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port: int = tcp.extra(SocketAttribute.local_port)
    listener = TLSListener(tcp, context, standard_compatible=False, handshake_timeout=5)

    async def handle(stream: TLSStream) -> None:
        await _connection(stream, app)  # type: ignore[arg-type]

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle, tg)
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def jwks_server(
    alg: str = "RS256", *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[JWKSServer]:
    server = JWKSServer(alg)
    if ssl_context is None:
        async with serve_asgi(server) as port:
            server.issuer = f"http://127.0.0.1:{port}"
            yield server
    else:
        async with serve_tls(server, ssl_context) as port:
            server.issuer = f"https://127.0.0.1:{port}"
            yield server
