"""The web UI: server-rendered pages served by the API app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

from sslclm.errors import SslClmError

WEB_DIR = Path(__file__).resolve().parent
UI_PREFIX = "/ui"


def install_web(app: FastAPI) -> None:
    """Mounts the UI routes and static assets on ``app``."""
    from sslclm.web.common import format_day, format_time
    from sslclm.web.pages import ROUTERS
    from sslclm.web.routes import LoginRequiredError, login_required_page, root_router, router

    templates = Jinja2Templates(directory=WEB_DIR / "templates")
    # Every value a certificate carries is untrusted: escape everything, whatever the file name.
    templates.env.autoescape = True
    templates.env.filters["dt"] = format_time
    templates.env.filters["day"] = format_day
    app.state.templates = templates
    app.include_router(router, prefix=UI_PREFIX)
    for page_router in ROUTERS:
        app.include_router(page_router, prefix=UI_PREFIX)
    app.include_router(root_router)
    app.mount(f"{UI_PREFIX}/static", StaticFiles(directory=WEB_DIR / "static"), name="static")
    app.add_exception_handler(LoginRequiredError, login_required_page)
    _pages_answer_errors_as_html(app)


def _pages_answer_errors_as_html(app: FastAPI) -> None:
    """Errors under /ui render as a page; the API keeps its problem+json answers."""
    api_handler: Any = app.exception_handlers.get(SslClmError)

    async def handler(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith(f"{UI_PREFIX}/") and isinstance(exc, SslClmError):
            from sslclm.web.common import error_message, render

            principal = getattr(request.state, "principal", None)
            title = {401: "Log in", 403: "Not allowed", 404: "Not found"}.get(exc.http_status, "Not done")
            return render(
                request,
                "error.html",
                {"title": title, "message": error_message(exc)},
                principal=principal,
                status_code=exc.http_status,
            )
        response: Response = await api_handler(request, exc)
        return response

    if api_handler is not None:
        app.add_exception_handler(SslClmError, handler)
