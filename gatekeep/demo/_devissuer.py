"""A small development OAuth2/OIDC issuer (never for production).

An ASGI app serving:

- ``GET /.well-known/openid-configuration``: the discovery document;
- ``GET /jwks``: its RS256 public key (``Cache-Control: max-age=300``);
- ``POST /token``: the client-credentials grant (RFC 6749 §4.4), client
  authentication by HTTP Basic or ``client_id``/``client_secret`` in the
  form; answers an RFC 9068 access token (``typ: at+jwt``) with ``roles``.

Demo clients: ``alice`` (secret ``alice-secret``, role ``user``) and ``bob``
(secret ``bob-secret``, role ``admin``)::

    issuer = DevIssuer()
    async with serve_asgi(issuer) as port:
        issuer.issuer = f"http://127.0.0.1:{port}"
        token = issuer.mint("alice", roles=["user"])

The key is generated at start, or kept in ``key_file`` (created with mode
0600 when missing) so that another process (``gatekeep token``) signs with
the same key; ``mint`` signs tokens directly.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import attrs
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["DEMO_CLIENTS", "DevClient", "DevIssuer"]


@attrs.frozen
class DevClient:
    secret: str
    roles: tuple[str, ...] = ()
    scope: str = ""


DEMO_CLIENTS: Mapping[str, DevClient] = {
    "alice": DevClient("alice-secret", ("user",), "orders"),
    "bob": DevClient("bob-secret", ("admin",), "orders"),
}


class DevIssuer:
    def __init__(
        self,
        issuer: str = "",
        *,
        audience: str = "gatekeep-demo",
        clients: Mapping[str, DevClient] = DEMO_CLIENTS,
        lifetime: int = 300,
        key_file: str | Path | None = None,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.clients = dict(clients)
        self.lifetime = lifetime
        self._key = _load_or_create_key(Path(key_file) if key_file is not None else None)
        public = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.kid = hashlib.sha256(public).hexdigest()[:16]
        jwk: dict[str, Any] = json.loads(jwt.get_algorithm_by_name("RS256").to_jwk(self._key.public_key()))
        jwk.update({"kid": self.kid, "alg": "RS256", "use": "sig"})
        self.jwk = jwk

    def mint(
        self,
        subject: str,
        *,
        roles: Iterable[str] = (),
        scope: str = "",
        audience: str | None = None,
        lifetime: int | None = None,
        **claims: Any,
    ) -> str:
        """A signed access token for ``subject``."""
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience or self.audience,
            "iat": now,
            "exp": now + (lifetime or self.lifetime),
            "jti": secrets.token_hex(8),
            "client_id": subject,
            "roles": list(roles),
        }
        if scope:
            body["scope"] = scope
        body.update(claims)
        return jwt.encode(body, self._key, algorithm="RS256", headers={"kid": self.kid, "typ": "at+jwt"})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/.well-known/openid-configuration" and method == "GET":
            await _json(send, 200, self.discovery())
        elif path == "/jwks" and method == "GET":
            await _json(send, 200, {"keys": [self.jwk]}, [(b"cache-control", b"max-age=300")])
        elif path == "/token" and method == "POST":
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if len(body) > 16384:
                    await _json(send, 413, {"error": "invalid_request"})
                    return
                if not message.get("more_body", False):
                    break
            status, answer = self.token_response(dict(scope["headers"]).get(b"authorization"), body)
            await _json(send, status, answer, [(b"cache-control", b"no-store")])
        else:
            await _json(send, 404, {"error": "not_found"})

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.issuer + "/jwks",
            "token_endpoint": self.issuer + "/token",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def token_response(self, authorization: bytes | None, body: bytes) -> tuple[int, dict[str, Any]]:
        form = dict(parse_qsl(body.decode("latin-1")))
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if authorization and authorization[:6].lower() == b"basic ":
            try:
                client_id, _, secret = base64.b64decode(authorization[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return 400, {"error": "invalid_request"}
        client = self.clients.get(client_id or "")
        if client is None or not secrets.compare_digest((secret or "").encode(), client.secret.encode()):
            return 401, {"error": "invalid_client"}
        assert client_id is not None
        token = self.mint(client_id, roles=client.roles, scope=form.get("scope") or client.scope)
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime}


def _load_or_create_key(path: Path | None) -> rsa.RSAPrivateKey:
    if path is not None and path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path} does not hold an RSA private key")
        return key
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if path is not None:
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
    return key


async def _json(send: Any, status: int, doc: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(doc).encode()
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
