"""``request-transformer``: change headers, query string and body on the way upstream (Kong's plugin).

Fields (Kong's): ``http_method``; ``remove`` (``headers``, ``querystring``,
``body``: names); ``rename`` (the same, ``"old:new"``); ``replace``, ``add``
and ``append`` (the same, ``"name:value"``, plus ``json_types``: one of
``string``, ``number``, ``boolean`` per ``body`` entry).  Applied in Kong's
order — remove, rename, replace, add, append — with Kong's meanings (see
``gatekeep.transform``).  Ours: ``max_body_size`` (bytes, default 1 MiB).

Bodies: with no ``body`` rule the body streams through untouched.  With one,
a body that announces ``application/json`` (an object) or
``application/x-www-form-urlencoded`` — and no ``Content-Encoding`` — is read
whole (at most ``max_body_size`` bytes: a larger one is a 413 problem),
transformed, and sent with a new ``Content-Length``; JSON is re-serialised
compactly.  Any other body (multipart, binary, a JSON array, invalid JSON)
streams untouched.  Values are literals (Kong's ``$(...)`` templates are not
supported), and ``replace.uri`` is not supported (route ``strip_path`` and
the service ``path`` decide the upstream path).

Safety: a rule may not set a hop-by-hop header, ``Host``, ``Content-Length``,
``Expect`` or an identity header (``X-Consumer-*`` …): refused at load.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from gatekeep import BasePlugin, PayloadTooLarge, Request, Response, validators
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
    "RequestAdd",
    "RequestRemove",
    "RequestRename",
    "RequestReplace",
    "RequestTransformerConfig",
    "RequestTransformerFilter",
]

_PROTECTED = HOP_BY_HOP | {b"host", b"content-length", b"expect"}
_set_headers = header_rules_validator(_PROTECTED)
_rename_headers = header_rules_validator(_PROTECTED, rename=True)
_JSON = b"application/json"
_FORM = b"application/x-www-form-urlencoded"
_METHOD = re.compile(r"[A-Z]{1,20}")


def _method(_: Any, attribute: Any, value: str | None) -> None:
    if value is not None and not _METHOD.fullmatch(value):
        raise ValueError(f"{value!r} is not an HTTP method (upper-case letters)")


@attrs.frozen
class RequestRemove:
    kong_names: ClassVar[Mapping[str, str]] = validators.kong_fields("headers", "querystring", "body")

    # Header names to drop.
    headers: tuple[str, ...] = attrs.field(default=(), validator=check_header_names)
    # Query parameter names to drop.
    querystring: tuple[str, ...] = attrs.field(default=(), validator=check_names)
    # Body field names (JSON members, form fields) to drop.
    body: tuple[str, ...] = attrs.field(default=(), validator=check_names)


@attrs.frozen
class RequestRename:
    kong_names: ClassVar[Mapping[str, str]] = validators.kong_fields("headers", "querystring", "body")

    # "old:new" header names; never to a hop-by-hop, Host, Content-Length or identity header.
    headers: tuple[str, ...] = attrs.field(default=(), validator=_rename_headers)
    # "old:new" query parameter names.
    querystring: tuple[str, ...] = attrs.field(default=(), validator=check_rename)
    # "old:new" body field names.
    body: tuple[str, ...] = attrs.field(default=(), validator=check_rename)


@attrs.frozen
class RequestAdd:
    """``add``, ``append`` and ``replace``: ``name:value`` entries."""

    kong_names: ClassVar[Mapping[str, str]] = validators.kong_fields(
        "headers", "querystring", "body", "json_types"
    )

    # "name:value" headers; never a hop-by-hop, Host, Content-Length, Expect or identity header.
    headers: tuple[str, ...] = attrs.field(default=(), validator=_set_headers)
    # "name:value" query parameters.
    querystring: tuple[str, ...] = attrs.field(default=(), validator=check_pairs)
    # "name:value" body fields (JSON object members, form fields).
    body: tuple[str, ...] = attrs.field(default=(), validator=check_pairs)
    # One of string, number, boolean per body entry (JSON); empty: all strings.
    json_types: tuple[JsonType, ...] = ()

    def __attrs_post_init__(self) -> None:
        if not attrs.validators.get_disabled():
            check_json_types(self.body, self.json_types)


RequestReplace = RequestAdd


@attrs.frozen
class RequestTransformerConfig:
    kong_names: ClassVar[Mapping[str, str]] = validators.kong_fields(
        "http_method", "remove", "rename", "replace", "add", "append"
    )

    # The method sent upstream.
    http_method: str | None = attrs.field(default=None, validator=_method)
    remove: RequestRemove = RequestRemove()
    rename: RequestRename = RequestRename()
    replace: RequestAdd = RequestAdd()
    add: RequestAdd = RequestAdd()
    append: RequestAdd = RequestAdd()
    # Ours: the largest body a body rule reads (bytes); a larger one is a 413.
    max_body_size: int = attrs.field(default=1024 * 1024, validator=validators.positive)


class RequestTransformerFilter(BasePlugin[RequestTransformerConfig]):
    name: ClassVar[str] = "request-transformer"
    priority: ClassVar[int] = 801
    config: RequestTransformerConfig

    def __init__(self, config: RequestTransformerConfig | None = None) -> None:
        super().__init__(config)
        c = self.config
        self.headers = HeaderRules.compile(*config_entries(c, "headers"))
        self.query = FieldRules.compile(*config_entries(c, "querystring"))
        self.body = FieldRules.compile(*config_entries(c, "body"), types=config_json_types(c))

    async def on_request(self, request: Request) -> Response | None:
        method = self.config.http_method
        if method is not None:
            request.method = method
        if self.headers:
            self.headers.apply(request.headers)
        if self.query:
            request.query_string = self.query.apply_form(request.query_string)
        if self.body:
            await self._transform_body(request)
        return None

    async def _transform_body(self, request: Request) -> None:
        ctype = plain_media_type(request.headers)
        if ctype not in (_JSON, _FORM):
            return
        cap = self.config.max_body_size
        if over_limit(request.headers, cap):
            raise PayloadTooLarge(f"request body is larger than {cap} bytes (request-transformer)")
        data = await request.read(cap)
        if ctype == _FORM:
            new = self.body.apply_form(data)
        else:
            doc = json_object(data)
            if doc is None:
                return
            new = dump_json(self.body.apply_json(doc))
        if new != data:
            request.replace_body(new)
