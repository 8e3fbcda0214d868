"""docs/serving.md's examples, run: every TOML block loads, the ``[server.tls]`` example serves
mTLS with its own file names, and the config errors it shows are the ones gatekeep prints."""

from __future__ import annotations

import asyncio
import socket
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from gatekeep import ConfigError, Gateway, asgi, load_config
from gatekeep._front import ServerSettings, check_tls
from gatekeep._front._server import serve
from gatekeep.testing import EchoUpstream, serve_asgi
from tests._docs import DOCS, blocks

pytestmark = pytest.mark.anyio

PAGE = "serving.md"


def test_every_toml_block_is_a_valid_config() -> None:
    for block in blocks(PAGE, "toml"):
        load_config(tomllib.loads(block))


def tls_block() -> dict[str, Any]:
    return next(t for t in map(tomllib.loads, blocks(PAGE, "toml")) if "tls" in t.get("server", {}))


def mtls_block() -> dict[str, Any]:
    return next(t for t in map(tomllib.loads, blocks(PAGE, "toml")) if t.get("plugins"))


class ExampleCerts:
    """The files the example names, from a trustme CA, in ``directory/certs``."""

    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        certs = directory / "certs"
        certs.mkdir()
        self.ca.cert_pem.write_to_path(str(certs / "clients.pem"))
        for name, hosts in (
            ("gateway", ("127.0.0.1",)),
            ("api", ("api.example.com",)),
            ("shop", ("*.shop.example",)),
        ):
            leaf = self.ca.issue_cert(*hosts)
            leaf.cert_chain_pems[0].write_to_path(str(certs / f"{name}.pem"))
            leaf.private_key_pem.write_to_path(str(certs / f"{name}.key"))
        self.client = self.ca.issue_cert("payments.internal")

    def client_context(self, with_certificate: bool) -> Any:
        import ssl

        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if with_certificate:
            self.client.configure_cert(context)
        return context


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ExampleCerts:
    monkeypatch.chdir(tmp_path)  # the example's paths are relative to the working directory
    return ExampleCerts(tmp_path)


async def test_the_tls_example_serves_mtls_auth(example: ExampleCerts) -> None:
    async with serve_asgi(EchoUpstream()) as upstream:
        config = {
            **tls_block(),
            **mtls_block(),
            "services": [
                {
                    "name": "pay",
                    "url": f"http://127.0.0.1:{upstream}",
                    "routes": [{"name": "pay", "paths": ["/"]}],
                }
            ],
        }
        settings: ServerSettings = load_config(config).server
        check_tls(settings.tls)
        sock = socket.create_server(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        stop = asyncio.Event()
        task = asyncio.create_task(serve(asgi(Gateway(config)), settings, sock=sock, stop=stop))
        try:
            await asyncio.sleep(0.3)
            url = f"https://127.0.0.1:{port}/pay"
            async with httpx.AsyncClient(verify=example.client_context(True)) as client:
                answer = await client.get(url)
            assert answer.status_code == 200, answer.text
            assert answer.json()["headers"]["x-consumer-username"] == "payments.internal"
            async with httpx.AsyncClient(verify=example.client_context(False)) as client:
                refused = await client.get(url)
            assert refused.status_code == 401  # verify_client = "optional": mtls-auth decides
        finally:
            stop.set()
            assert await asyncio.wait_for(task, 10) == 0


def test_the_config_errors_shown_are_the_ones_printed(example: ExampleCerts) -> None:
    shown = next(
        b for lang, b in _blocks_with_language() if lang == "text" and "server.tls" in b
    ).splitlines()
    base = tls_block()["server"]["tls"]
    other = example.ca.issue_cert("127.0.0.1")
    Path("certs/junk.pem").write_text("junk\n")
    variants = [
        {**base, "cert_file": "certs/gateway.pem"},
        {**base, "key_file": "certs/gateway.key"},
        {**base, "client_ca_file": "certs/clients.pem"},
        {**base, "verify_client": "yes"},
        {**base, "verify_client": "required", "client_ca_file": None},
    ]
    Path("certs/gateway.pem").unlink()
    printed = set(_errors(variants[0]))
    example.ca.issue_cert("127.0.0.1").cert_chain_pems[0].write_to_path("certs/gateway.pem")
    other.private_key_pem.write_to_path("certs/gateway.key")
    printed |= set(_errors(variants[1]))
    Path("certs/clients.pem").write_text("junk\n")
    printed |= set(_errors(variants[2]))
    for variant in variants[3:]:
        printed |= set(_errors({k: v for k, v in variant.items() if v is not None}))
    assert set(shown) <= printed, (shown, printed)


def _errors(table: dict[str, Any]) -> list[str]:
    try:
        check_tls(load_config({"server": {"tls": table}}).server.tls)
    except ConfigError as exc:
        return [str(e) for e in exc.errors]
    return []


def _blocks_with_language() -> list[tuple[str, str]]:
    import re

    text = (DOCS / PAGE).read_text()
    return re.findall(r"^```(\w+)\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
