"""JWT verifications per second: HS256, RS256, ES256, EdDSA, cold versus cached.

For each algorithm, in one process:

- ``pyjwt``: ``jwt.decode`` with the key (the reference);
- ``cold``: ``JWTVerifier.verify`` with the verified-token cache off
  (parse, key lookup, signature, claims, identity);
- ``cached``: ``JWTVerifier.verify`` of a token already verified;
- ``filter``: the ``jwt`` filter's whole request phase for a cached token
  (token extraction, verification, identity headers).

    python benchmarks/jwt.py [--seconds 1] [--rounds 3]

Prints a table and writes ``benchmarks/results/jwt.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._timing import us_per_call

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, this file's directory comes first on sys.path and this
# module (jwt.py) would shadow pyjwt.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

import jwt as pyjwt  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # noqa: E402

from gatekeep._http import Headers, Request  # noqa: E402
from gatekeep.auth import JWTVerifier, KeyConfig, VerifierConfig  # noqa: E402
from gatekeep.plugins.jwt import JWTFilter, JWTFilterConfig  # noqa: E402

SECRET = "benchmark-secret-0123456789abcdef"


def keys(alg: str) -> tuple[Any, Any, KeyConfig]:
    if alg == "HS256":
        return SECRET, SECRET.encode(), KeyConfig(algorithm="HS256", kid="k", secret=SECRET)
    private: Any
    if alg == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    public = private.public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public, KeyConfig(algorithm=alg, kid="k", pem=pem.decode())  # type: ignore[arg-type]


async def bench(alg: str, seconds: float, rounds: int) -> dict[str, float]:
    private, public, key_config = keys(alg)
    claims = {
        "iss": "https://idp.example",
        "sub": "alice",
        "aud": "orders",
        "exp": int(time.time()) + 3600,
        "realm_access": {"roles": ["user"]},
        "scope": "openid orders",
    }
    token = pyjwt.encode(claims, private, algorithm=alg, headers={"kid": "k"})
    cold = JWTVerifier(VerifierConfig(keys=(key_config,), cache_size=0))
    cached = JWTVerifier(VerifierConfig(keys=(key_config,)))
    f = JWTFilter(JWTFilterConfig(keys=(key_config,)))
    header = b"Bearer " + token.encode()

    async def run_pyjwt() -> None:
        pyjwt.decode(token, public, algorithms=[alg], audience="orders")

    async def run_cold() -> None:
        await cold.verify(token)

    async def run_cached() -> None:
        await cached.verify(token)

    async def run_filter() -> None:
        request = Request("GET", "/", headers=Headers([(b"host", b"x"), (b"authorization", header)]))
        await f.on_request(request)

    out: dict[str, float] = {}
    for name, fn in (
        ("pyjwt", run_pyjwt),
        ("cold", run_cold),
        ("cached", run_cached),
        ("filter", run_filter),
    ):
        await fn()
        out[name] = statistics.median(
            [1e6 / await us_per_call(fn, seconds, batch=200) for _ in range(rounds)]
        )
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = {
        alg: await bench(alg, args.seconds, args.rounds) for alg in ("HS256", "RS256", "ES256", "EdDSA")
    }
    print(
        f"{'alg':<7}{'pyjwt/s':>12}{'cold/s':>12}{'cached/s':>12}{'filter/s':>12}"
        f"{'cold µs':>10}{'cached µs':>11}"
    )
    for alg, r in results.items():
        print(
            f"{alg:<7}{r['pyjwt']:>12,.0f}{r['cold']:>12,.0f}{r['cached']:>12,.0f}{r['filter']:>12,.0f}"
            f"{1e6 / r['cold']:>10.1f}{1e6 / r['cached']:>11.2f}"
        )
    out = ROOT / "benchmarks" / "results" / "jwt.json"
    out.write_text(
        json.dumps(
            {
                "machine": {"python": platform.python_version(), "platform": platform.platform()},
                "seconds": args.seconds,
                "rounds": args.rounds,
                "per_second": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
