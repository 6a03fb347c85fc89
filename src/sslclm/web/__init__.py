"""The web UI: server-rendered pages served by the API app."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

WEB_DIR = Path(__file__).resolve().parent
UI_PREFIX = "/ui"


def install_web(app: FastAPI) -> None:
    """Mounts the UI routes and static assets on ``app``."""
    from sslclm.web.routes import LoginRequiredError, login_required_page, root_router, router

    app.state.templates = Jinja2Templates(directory=WEB_DIR / "templates")
    app.include_router(router, prefix=UI_PREFIX)
    app.include_router(root_router)
    app.mount(f"{UI_PREFIX}/static", StaticFiles(directory=WEB_DIR / "static"), name="static")
    app.add_exception_handler(LoginRequiredError, login_required_page)
