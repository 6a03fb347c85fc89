"""Built-in connectors, one folder or module each, registered through entry points like any plugin.

Connectors import only ``sslclm.spi``, ``sslclm.pki`` and ``sslclm.errors`` (a test enforces it), so each
could move to its own distribution without change.
"""
