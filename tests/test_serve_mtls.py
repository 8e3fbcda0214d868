"""``gatekeep serve`` terminating TLS and mTLS itself, as a real process (issue 14, point 2).

With ``verify_client = "required"`` a client without a certificate from the
client CA is refused in the handshake; with ``"optional"`` it gets through the
handshake and ``mtls-auth`` decides (401 without a certificate, 403 from
``rbac`` for one whose consumer lacks the role).  The upstream learns who
called from the identity headers, never from the client's.  SIGHUP reloads the
certificate files in every worker; a bad file refuses to start with its path.
"""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from gatekeep.testing import EchoUpstream
from tests._servers import ServerProcess, free_port, running, upstream_thread
from tests.test_mtls_server import Certs, https

pytestmark = pytest.mark.anyio

CONFIG = """
[server]
drain_timeout = 5

[server.tls]
cert_file = "server.pem"
key_file = "server.key"
client_ca_file = "ca.pem"
verify_client = "{verify_client}"

[[services]]
name = "orders"
url = "http://127.0.0.1:{upstream}"

  [[services.routes]]
  name = "orders"
  paths = ["/orders"]

  [[services.plugins]]
  name = "mtls-auth"

  [[services.plugins]]
  name = "rbac"
  config = {{ rules = [{{ methods = ["GET"], any_of = ["internal"] }}] }}

[[consumers]]
username = "gateway.internal"
groups = ["internal"]

[[consumers]]
username = "partner"
custom_id = "mallory"
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    with upstream_thread(EchoUpstream()) as port:
        yield port


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs.make(tmp_path)


def serve(certs: Certs, upstream: int, verify_client: str, *extra: str) -> Any:
    config = certs.directory / "gatekeep.toml"
    config.write_text(CONFIG.format(upstream=upstream, verify_client=verify_client))
    port = free_port()
    argv = [sys.executable, "-m", "gatekeep", "serve", str(config), "--port", str(port), *extra]
    # Relative certificate paths are read from the working directory, as nginx's and gunicorn's are.
    return running("gatekeep-tls", "", app_dir=certs.directory, argv=argv, port=port)


async def test_required_admits_a_valid_certificate_and_refuses_none_in_the_handshake(
    certs: Certs, upstream: int
) -> None:
    with serve(certs, upstream, "required") as (_, port):
        ok = await https(port, certs, certs.gateway, "GET", "/orders", {"x-consumer-username": "admin"})
        assert ok.status_code == 200, ok.text
        seen = ok.json()["headers"]
        # The upstream sees the certificate's identity; the client's claim is replaced.
        assert seen["x-consumer-username"] == "gateway.internal"
        assert seen["x-consumer-groups"] == "internal"
        assert seen["x-forwarded-proto"] == "https"
        denied = await https(port, certs, certs.mallory, "GET", "/orders")
        assert denied.status_code == 403
        assert denied.headers["content-type"] == "application/problem+json"
        for leaf in (None, certs.stranger):
            with pytest.raises((httpx.TransportError, ssl.SSLError)):
                await https(port, certs, leaf, "GET", "/orders")


async def test_optional_lets_mtls_auth_decide(certs: Certs, upstream: int) -> None:
    unknown = certs.ca.issue_cert("nobody.internal", common_name="nobody")
    with serve(certs, upstream, "optional") as (_, port):
        assert (await https(port, certs, certs.gateway, "GET", "/orders")).status_code == 200
        anonymous = await https(port, certs, None, "GET", "/orders")
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"] == "application/problem+json"
        assert anonymous.json()["type"].endswith("/no-client-certificate")
        stranger = await https(port, certs, unknown, "GET", "/orders")
        assert stranger.status_code == 401
        assert stranger.json()["type"].endswith("/unknown-client-certificate")
        assert (await https(port, certs, certs.mallory, "GET", "/orders")).status_code == 403
        # A certificate the client CA did not sign still fails the handshake.
        with pytest.raises((httpx.TransportError, ssl.SSLError)):
            await https(port, certs, certs.stranger, "GET", "/orders")


def served_serial(port: int, certs: Certs) -> int:
    context = certs.client_context(certs.gateway)
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def wait_for_log(proc: ServerProcess, text: str, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while proc.log().count(text) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.log().count(text) >= count, proc.log()


def test_sighup_reloads_the_certificate_in_every_worker(certs: Certs, upstream: int) -> None:
    with serve(certs, upstream, "required", "--workers", "2") as (proc, port):
        wait_for_log(proc, "Application startup complete", 2)
        before = served_serial(port, certs)
        renewed = certs.ca.issue_cert("127.0.0.1", "localhost")
        renewed.cert_chain_pems[0].write_to_path(certs.path("server.pem"))
        renewed.private_key_pem.write_to_path(certs.path("server.key"))
        proc.process.send_signal(signal.SIGHUP)
        wait_for_log(proc, "TLS certificates reloaded", 2)
        serials = {served_serial(port, certs) for _ in range(8)}
        assert before not in serials and len(serials) == 1
        # A renewal gone wrong (a key of another certificate): every worker keeps serving the last good one.
        certs.server.private_key_pem.write_to_path(certs.path("server.key"))
        proc.process.send_signal(signal.SIGHUP)
        wait_for_log(proc, "TLS reload failed, keeping the certificates in use", 2)
        assert {served_serial(port, certs) for _ in range(8)} == serials
        proc.process.send_signal(signal.SIGTERM)
        assert proc.process.wait(15) == 0, proc.log()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_key_that_does_not_match_refuses_to_start_naming_its_path(
    certs: Certs, upstream: int, workers: str
) -> None:
    other = certs.ca.issue_cert("127.0.0.1")
    other.private_key_pem.write_to_path(certs.path("server.key"))
    config = certs.directory / "gatekeep.toml"
    config.write_text(CONFIG.format(upstream=upstream, verify_client="required"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gatekeep",
            "serve",
            str(config),
            "--port",
            str(free_port()),
            "--workers",
            workers,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=certs.directory,
    )
    assert result.returncode == 1, result.stderr
    assert (
        "server.tls.key_file: 'server.key' is not the key of the certificate in 'server.pem'" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_many_requests_on_one_tls_connection(certs: Certs, upstream: int) -> None:
    """Keep-alive over TLS (uvloop in the server process): the identity holds for every request."""
    import json
    import socket

    with serve(certs, upstream, "required") as (_, port):
        context = certs.client_context(certs.gateway)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                reader = tls.makefile("rb")
                for n in range(200):
                    tls.sendall(b"GET /orders/%d HTTP/1.1\r\nhost: gk\r\n\r\n" % n)
                    status = reader.readline()
                    assert status.startswith(b"HTTP/1.1 200"), status
                    length = 0
                    while (line := reader.readline()) != b"\r\n":
                        name, _, value = line.partition(b":")
                        if name.lower() == b"content-length":
                            length = int(value)
                    assert length, "the echo answers with a Content-Length"
                    seen = json.loads(reader.read(length))["headers"]
                    assert seen["x-consumer-username"] == "gateway.internal"
