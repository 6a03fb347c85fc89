"""Keeps the certificate a running server presents current, without a restart.

``ensure_server_tls`` re-issues the server certificate when it is within ``RENEW_WITHIN`` of expiry;
at start that is enough, but a server that runs for months would otherwise present an expired
certificate. The renewer checks once an hour from a background thread and, when the files changed,
loads the new pair into the listeners' live ``SSLContext`` objects: new connections get the new
certificate, open ones keep theirs. The load runs on the event loop's thread, because the loop
performs handshakes with that context and OpenSSL does not expect it to change under a handshake.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable, Sequence

from sslclm.core.platform import Platform
from sslclm.core.tls import SERVER_CERT_FILE, ServerTls, ensure_server_tls, tls_dir

log = logging.getLogger(__name__)
CHECK_INTERVAL_SECONDS = 3600.0

ContextSource = Callable[[], Sequence[ssl.SSLContext]]


class ServerCertificateRenewer:
    """Re-issues the server certificate when due and swaps it into the live TLS contexts."""

    def __init__(
        self,
        platform: Platform,
        host: str | None,
        contexts: ContextSource,
        *,
        interval: float = CHECK_INTERVAL_SECONDS,
    ) -> None:
        self._platform = platform
        self._host = host
        self._contexts = contexts
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._presented: bytes | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # What the listeners loaded when they started: the files as they are now.
        self._presented = (tls_dir(self._platform.settings) / SERVER_CERT_FILE).read_bytes()
        self._thread = threading.Thread(target=self._run, name="server-cert-renewer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.check_once()
            except Exception:
                # The server keeps its current certificate and the next check tries again.
                log.exception("checking the server certificate failed")

    def check_once(self) -> bool:
        """Renews when due; returns True when a new certificate was handed to the listeners."""
        tls = ensure_server_tls(self._platform, self._host)
        current = tls.cert_file.read_bytes()
        if current == self._presented:
            return False
        if self._loop is None:
            raise RuntimeError("the renewer has not been started")
        done = threading.Event()
        errors: list[BaseException] = []
        self._loop.call_soon_threadsafe(self._load, tls, done, errors)
        if not done.wait(timeout=30):
            raise TimeoutError("the event loop did not load the renewed server certificate")
        if errors:
            raise errors[0]
        self._presented = current
        log.info("server certificate renewed: %s", tls.cert_file)
        return True

    def _load(self, tls: ServerTls, done: threading.Event, errors: list[BaseException]) -> None:
        try:
            for context in self._contexts():
                context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        except (OSError, ssl.SSLError) as exc:
            errors.append(exc)
        finally:
            done.set()
