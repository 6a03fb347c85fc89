"""The agent program: runs on a managed host, talks to the server over mutual TLS, outbound only.

It imports only ``sslclm.spi``, ``sslclm.pki``, ``sslclm.protocol``, ``sslclm.errors`` and the
connectors it runs, never the server's database or web stack (a test checks this).
"""
