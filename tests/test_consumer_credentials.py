"""Consumer credentials belong to the plugins that declare them (Kong's DAO schema).

``consumers[].<field>`` is checked with the class the owning plugin declares in
``consumer_credentials``; the core knows no credential field.  A third-party
``hmac-auth`` plugin, written here as its author would, adds its own.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import attrs
import pytest

import gatekeep
from gatekeep import BaseFilter, ConfigError, ConsumerConfig, Identity, Request, Response, load_config
from gatekeep.auth import InvalidCredentials, MissingCredentials, authenticate
from gatekeep.plugins.jwt import JWTSecret
from gatekeep.testing import gateway_for

if TYPE_CHECKING:
    from gatekeep import PluginContext

pytestmark = pytest.mark.anyio


# -- a third-party plugin with its own credential --------------------------------------------


def _not_empty(_: object, attribute: object, value: str) -> None:
    if not value:
        raise ValueError("must not be empty")


@attrs.frozen
class HmacCredential:
    """One entry of a consumer's ``hmacauth_credentials`` (Kong's shape)."""

    username: str = attrs.field(validator=_not_empty)
    secret: str = attrs.field(validator=_not_empty, repr=False)
    algorithm: Literal["hmac-sha256", "hmac-sha512"] = "hmac-sha256"


class HmacAuthFilter(BaseFilter):
    """``x-hmac-username`` + ``x-hmac-signature`` = HMAC(secret, "METHOD path")."""

    name: ClassVar[str] = "hmac-auth"
    priority: ClassVar[int] = 1030
    consumer_credentials: ClassVar[Mapping[str, type[Any]]] = {"hmacauth_credentials": HmacCredential}

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.keys: dict[bytes, tuple[HmacCredential, ConsumerConfig]] = {}

    def bind(self, context: PluginContext) -> None:
        for consumer in context.config.consumers:
            entries: tuple[HmacCredential, ...] = consumer.credentials.get("hmacauth_credentials", ())
            for entry in entries:
                self.keys[entry.username.encode()] = (entry, consumer)

    async def on_request(self, request: Request) -> Response | None:
        username = request.headers.get(b"x-hmac-username")
        signature = request.headers.get(b"x-hmac-signature")
        if not username or not signature:
            raise MissingCredentials("no HMAC signature", scheme="hmac")
        found = self.keys.get(username)
        if found is None:
            raise InvalidCredentials("unknown HMAC username")
        entry, consumer = found
        digest = hashlib.sha256 if entry.algorithm == "hmac-sha256" else hashlib.sha512
        expected = hmac.new(entry.secret.encode(), f"{request.method} {request.path}".encode(), digest)
        if not hmac.compare_digest(expected.hexdigest().encode(), signature):
            raise InvalidCredentials("HMAC signature does not match")
        identity = Identity(subject=entry.username, consumer=consumer.key, credential=entry.username)
        authenticate(request, identity, consumer)
        return None


# Given to each gateway and config check (per-gateway registration: no entry point, nothing global).
PLUGINS = [HmacAuthFilter]


def _sign(secret: str, line: str) -> str:
    return hmac.new(secret.encode(), line.encode(), hashlib.sha256).hexdigest()


def _config(
    *consumers: Mapping[str, Any], plugins: Any = (), url: str = "http://127.0.0.1:9"
) -> dict[str, Any]:
    return {
        "services": [{"name": "up", "url": url, "routes": [{"paths": ["/"]}]}],
        "plugins": list(plugins),
        "consumers": list(consumers),
    }


async def test_a_third_party_plugin_declares_checks_and_reads_its_own_credential() -> None:
    alice = {"username": "alice", "hmacauth_credentials": [{"username": "alice-hmac", "secret": "s3cret"}]}
    async with gateway_for(
        _config(alice, plugins=[{"name": "hmac-auth"}], url="{upstream}"), plugin_classes=PLUGINS
    ) as gw:
        (consumer,) = gw.gateway.config.consumers
        assert consumer.credentials == {"hmacauth_credentials": (HmacCredential("alice-hmac", "s3cret"),)}

        signed = {"x-hmac-username": "alice-hmac", "x-hmac-signature": _sign("s3cret", "GET /orders")}
        answer = await gw.client.get("/orders", headers=signed)
        assert answer.status == 200
        assert gw.upstream.requests[-1].headers["x-consumer-username"] == "alice"

        forged = {**signed, "x-hmac-signature": _sign("guess", "GET /orders")}
        assert (await gw.client.get("/orders", headers=forged)).status == 401


def test_credential_errors_name_their_path() -> None:
    bad = _config(
        {"username": "a", "hmacauth_credentials": [{"username": "u", "secret": "s"}, {"username": "v"}]},
        {"username": "b", "hmacauth_credentials": [{"username": "w", "secret": "", "algorithm": "md5"}]},
        {"username": "c", "jwt_secrets": [{"key": "k", "secret": "s"}, {"key": "", "secret": 5}]},
    )
    with pytest.raises(ConfigError) as refused:
        load_config(bad, plugins=PLUGINS)
    errors = {e.path: e.message for e in refused.value.errors}
    assert errors == {
        "consumers[0].hmacauth_credentials[1].secret": "is required",
        "consumers[1].hmacauth_credentials[0].secret": "must not be empty",
        "consumers[1].hmacauth_credentials[0].algorithm": (
            "must be one of 'hmac-sha256', 'hmac-sha512', got 'md5'"
        ),
        "consumers[2].jwt_secrets[1].key": "must not be empty",
        "consumers[2].jwt_secrets[1].secret": "expected a string, got number 5",
    }


def test_an_unknown_credential_field_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(
            _config({"username": "a", "oauth2_credentials": [{"client_id": "a", "client_secret": "p"}]}),
            plugins=PLUGINS,
        )
    (error,) = refused.value.errors
    assert error.path == "consumers[0].oauth2_credentials"
    assert error.message.startswith(
        "unknown field (expected one of: custom_id, groups, id, plugins, username; "
        "credential fields of installed plugins: "
    )
    for field in ("hmacauth_credentials", "jwt_secrets", "keyauth_credentials", "basicauth_credentials"):
        assert field in error.message


def test_two_plugins_declaring_one_field_is_refused_where_it_is_used() -> None:
    class Impostor(BaseFilter):
        name: ClassVar[str] = "hmac-impostor"
        consumer_credentials: ClassVar[Mapping[str, type[Any]]] = {"hmacauth_credentials": JWTSecret}

    both = [HmacAuthFilter, Impostor]
    with pytest.raises(ConfigError) as refused:
        load_config(_config({"username": "a", "hmacauth_credentials": []}), plugins=both)
    (error,) = refused.value.errors
    assert error.path == "consumers[0].hmacauth_credentials"
    assert "'hmac-auth' and 'hmac-impostor'" in error.message
    load_config(_config({"username": "a"}), plugins=both)  # a config that does not use the field is fine


def test_consumers_built_in_python_carry_typed_credentials() -> None:
    secret = JWTSecret(key="issuer-a", secret="s")
    config = gatekeep.GatewayConfig(
        services=load_config(_config()).services,
        consumers=(ConsumerConfig(username="a", credentials={"jwt_secrets": (secret,)}),),
    )
    (consumer,) = load_config(config).consumers
    assert consumer.credentials["jwt_secrets"] == (secret,)
    # The core knows no credential field: they are all plugins'.
    assert {f.name for f in attrs.fields(ConsumerConfig)} == {
        "username",
        "id",
        "custom_id",
        "groups",
        "plugins",
        "credentials",
    }
