"""Framework integrations: the caller's identity, guards and metrics in your app.

For an app that gatekeep wraps in middleware mode (``gatekeep.asgi(gateway,
app=...)`` / ``gatekeep.wsgi(gateway, app=...)``).  One module per framework,
each importing its framework only when it is imported itself (the core never
imports this package):

* ``gatekeep.integrations.fastapi``: dependencies (required identity, optional
  identity, roles), ``install`` (denials as problem+json) and ``document``
  (the gateway's security schemes and 401/403/429 answers in the OpenAPI
  document);
* ``gatekeep.integrations.flask``: ``init_app`` (``flask.g.identity``, the
  url rule for metrics) and view decorators;
* ``gatekeep.integrations.django``: ``GatekeepMiddleware``
  (``request.identity``, the resolver's route for metrics) and view decorators.

Every denial is the RFC 9457 problem document the gateway itself sends
(``AuthenticationRequired`` 401 with ``WWW-Authenticate: Bearer``,
``InsufficientRole``/``InsufficientScope`` 403), with the request id.
"""

from __future__ import annotations

__all__: list[str] = []
