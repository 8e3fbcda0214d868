"""Choosing the upstream codec by name (``[gateway] http_codec``).

Kept apart from ``_codec.py`` because it is the one place that knows both
codecs: ``_httptools_codec`` builds on ``_codec``, so the choice cannot live
there without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable

from ._codec import Codec, H11Codec

__all__ = ["codec_for"]


def codec_for(name: str) -> Callable[[], Codec]:
    """The codec class for ``http_codec`` = ``"auto"`` | ``"h11"`` | ``"httptools"``.

    Raises:
        ImportError: ``"httptools"`` was asked for and is not installed.
    """
    if name == "h11":
        return H11Codec
    try:
        from ._httptools_codec import HttptoolsCodec  # optional: httptools may be absent
    except ImportError:
        if name == "httptools":
            raise
        return H11Codec
    return HttptoolsCodec
