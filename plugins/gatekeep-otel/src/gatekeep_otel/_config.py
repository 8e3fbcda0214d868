"""The ``config`` table of the ``otel`` plugin."""

from __future__ import annotations

import re
import types
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs

__all__ = ["OtelConfig"]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _non_empty(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.strip():
        raise ValueError("must not be empty")


def _ratio(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be between 0 and 1, got {value}")


def _url(_: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is None:
        return
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")


def _frozen_headers(value: Mapping[str, str]) -> Mapping[str, str]:
    return types.MappingProxyType(dict(value))


def _check_headers(_: object, attribute: Any, value: Mapping[str, str]) -> None:
    for name, text in value.items():
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"{name!r} is not a header name")
        if any(c in text for c in "\r\n\0"):
            raise ValueError(f"the value of {name!r} contains a line break")


@attrs.frozen
class OtelConfig:
    """The ``config`` table of the ``otel`` plugin.

    Attributes:
        service_name: ``service.name`` of the gateway's spans (the resource).
        exporter: ``otlp-http`` (an OpenTelemetry Collector, Jaeger, Tempo ...),
            ``console`` (JSON on stdout) or ``none`` (kept in memory: for
            tests; nothing leaves the process).
        endpoint: the OTLP/HTTP traces URL, e.g. ``http://collector:4318/v1/traces``.
            Left out: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, else the SDK's
            default ``http://localhost:4318/v1/traces``.
        sample_ratio: share of traces that *start* at the gateway that are
            recorded; a caller's ``traceparent`` sampled flag is followed
            (parent-based sampling, as OpenTelemetry SDKs do by default).
        headers: sent with every export (``Authorization`` ...); values may be
            secret references (``{env://OTLP_TOKEN}``).  Left out:
            ``OTEL_EXPORTER_OTLP_TRACES_HEADERS`` / ``OTEL_EXPORTER_OTLP_HEADERS``.
    """

    service_name: str = attrs.field(default="gatekeep", validator=_non_empty)
    exporter: Literal["otlp-http", "console", "none"] = "otlp-http"
    endpoint: str | None = attrs.field(default=None, validator=_url)
    sample_ratio: float = attrs.field(default=1.0, converter=float, validator=_ratio)
    headers: Mapping[str, str] = attrs.field(
        factory=dict, converter=_frozen_headers, validator=_check_headers
    )
