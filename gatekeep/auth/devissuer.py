"""Moved: the development issuer is ``gatekeep.demo.DevIssuer`` now.

docs/authentication.md showed ``from gatekeep.auth.devissuer import DevIssuer`` until the
demo became a package; this alias keeps that import working, with a DeprecationWarning,
for one release.
"""

from __future__ import annotations

import warnings

from ..demo._devissuer import DEMO_CLIENTS, DevClient, DevIssuer

__all__ = ["DEMO_CLIENTS", "DevClient", "DevIssuer"]

warnings.warn(
    "gatekeep.auth.devissuer moved to gatekeep.demo: import DevIssuer, DevClient and DEMO_CLIENTS from there",
    DeprecationWarning,
    stacklevel=2,
)
