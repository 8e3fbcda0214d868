"""Adapters: how a server drives a gateway (ASGI, WSGI).

Each adapter turns its server's requests into ``Request``s, calls
``Gateway.handle`` and sends the ``Response`` back; none changes the gateway.
In middleware mode the wrapped app is the upstream of ``app://`` routes: the
adapter hands its caller to ``Gateway.handle`` (``_asgi_app.py`` for ASGI,
``_wsgi_app.py`` for WSGI).
gatekeep's own front server (``gatekeep serve``) lives in ``gatekeep._front``.
"""

from ._asgi import ASGIApp, Middleware, asgi
from ._wsgi import WSGIApp, wsgi

__all__ = ["ASGIApp", "Middleware", "WSGIApp", "asgi", "wsgi"]
