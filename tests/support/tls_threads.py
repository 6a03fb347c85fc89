"""Zoo servers on an event loop of their own thread, for tests whose code under test runs its own loop.

``run_scan`` and ``sslclm scan`` call ``asyncio.run`` themselves, so the servers they scan cannot
share that loop: :class:`ServerThread` keeps them on a background loop and hands out their ports.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from support.tls_zoo import Handler, Server

T = TypeVar("T")


class ServerThread:
    """Starts :class:`~support.tls_zoo.Server` instances on a background loop; stops them on exit."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="zoo-servers", daemon=True)
        self._servers: list[Server] = []

    def __enter__(self) -> ServerThread:
        self._thread.start()
        return self

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def serve(
        self,
        handler: Handler | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
    ) -> Server:
        server = (
            Server(handler, ssl_context=ssl_context, host=host)
            if handler
            else Server(ssl_context=ssl_context, host=host)
        )
        self.run(server.__aenter__())
        self._servers.append(server)
        return server

    def stop(self, server: Server) -> None:
        self._servers.remove(server)
        self.run(server.__aexit__(None, None, None))

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for server in reversed(self._servers):
            self.run(server.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
