"""``response-transformer``: change headers and JSON bodies on the way back (Kong's plugin).

Fields (Kong's): ``remove`` (``headers``, ``json``: names), ``rename``
(``"old:new"``), ``replace``, ``add``, ``append`` (``"name:value"``, plus
``json_types``: one of ``string``, ``number``, ``boolean`` per ``json``
entry).  Applied in Kong's order with Kong's meanings (``gatekeep.transform``),
to every response of the route, the gateway's own answers included.  Ours:
``max_body_size`` (bytes, default 1 MiB).

Bodies: with no ``json`` rule the body streams through untouched.  With one,
a response with ``Content-Type: application/json``, no ``Content-Encoding``
and a body (not HEAD, 204 or 304) is read whole — at most ``max_body_size``
bytes, else the answer is a 502 problem — and, if it is a JSON object,
re-serialised compactly with a new ``Content-Length``.  Anything else streams
untouched.  Only top-level members are changed.

Safety: a rule may not set a hop-by-hop header or ``Content-Length``:
refused at load.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import attrs

from gatekeep import BasePlugin, Request, Response, UpstreamError, validators
from gatekeep.transform import (
    HOP_BY_HOP,
    FieldRules,
    HeaderRules,
    JsonType,
    check_header_names,
    check_json_types,
    check_names,
    check_pairs,
    check_rename,
    config_entries,
    config_json_types,
    dump_json,
    header_rules_validator,
    json_object,
    over_limit,
    plain_media_type,
)

__all__ = [
    "ResponseAdd",
    "ResponseRemove",
    "ResponseRename",
    "ResponseTransformerConfig",
    "ResponseTransformerFilter",
]

_PROTECTED = HOP_BY_HOP | {b"content-length"}
_JSON = b"application/json"
_set_headers = header_rules_validator(_PROTECTED)
_rename_headers = header_rules_validator(_PROTECTED, rename=True)


@attrs.frozen
class ResponseRemove:
    kong_names: ClassVar[Mapping[str, str]] = validators.kong_fields("headers", "json")

    # Header names to drop.
    headers: tuple[str, ...] = attrs.field(default=(), validator=check_header_names)
    # Top-level JSON member names to drop.
    json: tuple[str, ...] = attrs.field(default=(), validator=check_names)


@attrs.frozen
class ResponseRename:
    kong_names: ClassVar[Mapping[str, str]] = validators.kong_fields("headers", "json")

    # "old:new" header names; never to a hop-by-hop header or Content-Length.
    headers: tuple[str, ...] = attrs.field(default=(), validator=_rename_headers)
    # "old:new" JSON member names.
    json: tuple[str, ...] = attrs.field(default=(), validator=check_rename)


@attrs.frozen
class ResponseAdd:
    """``add``, ``append`` and ``replace``: ``name:value`` entries."""

    kong_names: ClassVar[Mapping[str, str]] = validators.kong_fields("headers", "json", "json_types")

    # "name:value" headers; never a hop-by-hop header or Content-Length.
    headers: tuple[str, ...] = attrs.field(default=(), validator=_set_headers)
    # "name:value" top-level JSON members.
    json: tuple[str, ...] = attrs.field(default=(), validator=check_pairs)
    # One of string, number, boolean per json entry; empty: all strings.
    json_types: tuple[JsonType, ...] = ()

    def __attrs_post_init__(self) -> None:
        if not attrs.validators.get_disabled():
            check_json_types(self.json, self.json_types)


@attrs.frozen
class ResponseTransformerConfig:
    kong_names: ClassVar[Mapping[str, str]] = validators.kong_fields(
        "remove", "rename", "replace", "add", "append"
    )

    remove: ResponseRemove = ResponseRemove()
    rename: ResponseRename = ResponseRename()
    replace: ResponseAdd = ResponseAdd()
    add: ResponseAdd = ResponseAdd()
    append: ResponseAdd = ResponseAdd()
    # Ours: the largest JSON body a json rule reads (bytes); a larger one is a 502.
    max_body_size: int = attrs.field(default=1024 * 1024, validator=validators.positive)


class ResponseTooLarge(UpstreamError):
    title = "Upstream Response Too Large"
    slug = "upstream-response-too-large"


class ResponseTransformerFilter(BasePlugin[ResponseTransformerConfig]):
    name: ClassVar[str] = "response-transformer"
    priority: ClassVar[int] = 800
    config: ResponseTransformerConfig

    def __init__(self, config: ResponseTransformerConfig | None = None) -> None:
        super().__init__(config)
        c = self.config
        self.headers = HeaderRules.compile(*config_entries(c, "headers"))
        self.json = FieldRules.compile(*config_entries(c, "json"), types=config_json_types(c))

    async def on_response(self, request: Request, response: Response) -> Response | None:
        if self.headers:
            self.headers.apply(response.headers)
        if self.json and self._json_body(request, response):
            await self._transform(response)
        return None

    @staticmethod
    def _json_body(request: Request, response: Response) -> bool:
        if request.method == "HEAD" or response.status in (204, 304):
            return False
        return plain_media_type(response.headers) == _JSON

    async def _transform(self, response: Response) -> None:
        cap = self.config.max_body_size
        too_large = ResponseTooLarge(
            f"the upstream's JSON body is larger than {cap} bytes (response-transformer)"
        )
        if over_limit(response.headers, cap):
            raise too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.iter_body():
            size += len(chunk)
            if size > cap:
                raise too_large
            chunks.append(chunk)
        data = b"".join(chunks)
        doc = json_object(data)
        new = data if doc is None else dump_json(self.json.apply_json(doc))
        response.body = new
        response.headers.remove(b"transfer-encoding")
        response.headers.set(b"content-length", str(len(new)).encode("ascii"))
