"""The exception a gatekeep denial travels in through a FastAPI dependency.

It is Starlette's ``HTTPException``, so an app answers the right status and
headers (``WWW-Authenticate``) whatever it installed; an app that ran
``gatekeep.integrations.fastapi.install(app)`` answers it as the RFC 9457
problem document the gateway itself sends.  It lives apart from both of its
raisers (``gatekeep.service.Guard.dependency`` and the FastAPI integration's
dependencies) so that neither imports the other, and it is imported only where
Starlette is installed.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException

from ._errors import GatekeepError

__all__ = ["ProblemException"]


class ProblemException(HTTPException):
    """A gatekeep denial raised by a dependency; ``install`` answers it as problem+json.

    It is Starlette's ``HTTPException``, so an app that did not ``install``
    still answers the right status and headers (as FastAPI's ``{"detail"}``).
    """

    def __init__(self, error: GatekeepError, request_id: str = "") -> None:
        super().__init__(error.status, error.detail, headers=dict(error.headers) or None)
        self.error = error
        self.request_id = request_id
