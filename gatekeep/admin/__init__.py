"""The Admin API: Kong's Admin API (a subset) over gatekeep's config store.

See docs/admin-api.md.  ``AdminSettings`` is the ``[admin]`` table (imported by
the config module, so this package imports nothing else);
``gatekeep.AdminAPI`` is the ASGI app and ``gatekeep.serve_admin`` runs it on
its own listener; ``gatekeep serve`` starts it when the config has an
``[admin]`` table.
"""

from __future__ import annotations

from ._settings import AdminSettings, AdminTLS

__all__ = ["AdminSettings", "AdminTLS"]
