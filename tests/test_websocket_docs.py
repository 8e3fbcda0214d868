"""docs/serving.md's WebSocket example, run: its config on the front server, its client against it."""

from __future__ import annotations

import importlib.util
import json
import tomllib
from typing import Any

import pytest

from gatekeep import Gateway, asgi, load_config
from tests._docs import blocks
from tests._websocket_upstream import websocket_upstream
from tests._wire import front_server

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(importlib.util.find_spec("websockets") is None, reason="needs websockets"),
]


def example_config() -> dict[str, Any]:
    block = next(b for b in blocks("serving.md", "toml") if "[gateway.websocket]" in b)
    config: dict[str, Any] = tomllib.loads(block)
    load_config(config)  # valid as written
    return config


def example_client(name: str = "chat") -> Any:
    code = next(b for b in blocks("serving.md", "python") if "websockets.asyncio.client" in b)
    namespace: dict[str, Any] = {}
    exec(compile(code, "serving.md[websocket client]", "exec"), namespace)
    return namespace[name]


async def test_the_websocket_example_serves_its_client() -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    config = example_config()
    assert config["gateway"]["websocket"]["max_message_bytes"] == 1024 * 1024
    with websocket_upstream() as upstream:
        config["services"][0]["url"] = f"http://127.0.0.1:{upstream.port}"
        async with front_server(asgi(Gateway(config))) as port:
            chat = example_client()
            assert await chat(f"ws://127.0.0.1:{port}/chat/echo") == "chat.v2: hello"
            compression = example_client("compression")
            answer = await compression(f"ws://127.0.0.1:{port}/chat/echo")
            assert answer == "permessage-deflate; client_max_window_bits=12"
            with pytest.raises(InvalidStatus) as denied:
                async with connect(f"ws://127.0.0.1:{port}/chat/echo"):
                    pass
            assert denied.value.response.status_code == 401
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"ws://127.0.0.1:{port}/uploads/x"):
                    pass
            assert refused.value.response.status_code == 403
            assert json.loads(refused.value.response.body)["type"].endswith("/websocket-refused")
