"""Authorization library: the RBAC policy engine and its claim paths.

The ``rbac`` plugin (``gatekeep.plugins.rbac``) and ``gatekeep.service``'s
middleware enforce the same ``Policy``; see ``docs/authorization.md``.
"""

from __future__ import annotations

from ._policy import (
    DEFAULT_ROLES_CLAIMS,
    DEFAULT_SCOPES_CLAIMS,
    AuthenticationRequired,
    Grants,
    InsufficientRole,
    InsufficientScope,
    Policy,
    RbacConfig,
    RuleConfig,
    role_closure,
)

__all__ = [
    "DEFAULT_ROLES_CLAIMS",
    "DEFAULT_SCOPES_CLAIMS",
    "AuthenticationRequired",
    "Grants",
    "InsufficientRole",
    "InsufficientScope",
    "Policy",
    "RbacConfig",
    "RuleConfig",
    "role_closure",
]
