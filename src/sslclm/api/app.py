"""The FastAPI application factory."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sslclm import __version__
from sslclm.api.deps import TokenCache
from sslclm.api.errors import install_error_handlers
from sslclm.api.routes import ROUTERS
from sslclm.api.routes.metrics import root_router as metrics_root_router
from sslclm.api.routes.workflows import challenge_router as acme_challenge_router
from sslclm.core.config import Settings
from sslclm.core.platform import Platform

API_PREFIX = "/api/v1"


def create_app(settings: Settings | None = None, *, platform: Platform | None = None) -> FastAPI:
    """Builds the app; the database and keys are opened at startup, not here."""
    settings = settings or (platform.settings if platform else Settings())
    owns_platform = platform is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if app.state.platform is None:
            app.state.platform = Platform.open(settings)
        for hook in app.state.startup_hooks:
            hook(app.state.platform)
        try:
            yield
        finally:
            for hook in app.state.shutdown_hooks:
                hook(app.state.platform)
            if owns_platform:
                app.state.platform.close()

    app = FastAPI(
        title="SSL-CLM",
        version=__version__,
        description="Certificate lifecycle management: inventory, discovery, policy, issuance and renewal.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=f"{API_PREFIX}/redoc",
        lifespan=lifespan,
    )
    app.state.platform = platform
    app.state.settings = settings
    app.state.token_cache = TokenCache()
    app.state.startup_hooks = []
    app.state.shutdown_hooks = []

    app.add_middleware(RequestIdMiddleware)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(acme_challenge_router)
    app.include_router(metrics_root_router)  # /metrics, where Prometheus scrapes by default
    _mount_web(app)
    return app


class RequestIdMiddleware:
    """Gives each request an id (the caller's X-Request-ID, or a new one) and security headers.

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` would wrap every response in a task
    group and a stream, a measurable cost on the list endpoints.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id", "")
        request_id = incoming[:64] if incoming and incoming.isprintable() else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
                headers.setdefault("X-Content-Type-Options", "nosniff")
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _mount_web(app: FastAPI) -> None:
    # The web UI lives in its own package; it is optional for API-only tests that build a bare app.
    from sslclm.web import install_web

    install_web(app)
