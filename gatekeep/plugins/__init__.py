"""The built-in plugins: one module per plugin, above the core.

Each is registered through the ``gatekeep.plugins`` entry points of gatekeep's
own package metadata, exactly as a third-party plugin is, and uses only the
public SDK (``gatekeep``) and the libraries plugins share (``gatekeep.auth``,
``gatekeep.authz``, ``gatekeep.observability``, the rate limiters).  Nothing
below this package imports it: the core finds a plugin by its entry-point name
when a config names it (``tests/test_architecture.py`` checks both).
"""
