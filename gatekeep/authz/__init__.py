"""Authorization: the ``rbac`` filter and its rule engine, claim paths, and
the ``mtls-auth`` peer-certificate authenticator."""

from __future__ import annotations

from .rbac import (
    AuthenticationRequired,
    Grants,
    InsufficientRole,
    InsufficientScope,
    Policy,
    RbacConfig,
    RbacFilter,
    RuleConfig,
    role_closure,
)

__all__ = [
    "AuthenticationRequired",
    "Grants",
    "InsufficientRole",
    "InsufficientScope",
    "Policy",
    "RbacConfig",
    "RbacFilter",
    "RuleConfig",
    "role_closure",
]
