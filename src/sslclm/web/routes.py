"""The UI's front door: login and logout (the pages behind it live in ``sslclm.web.pages``).

Pages use the same session cookie as ``POST /api/v1/auth/login``. A page that needs a login answers
401 with the login form itself (no redirect), so the address bar keeps the page to return to.
The login form carries its own CSRF token (double-submit cookie) so another site cannot log a
browser in under the attacker's account.
"""

from __future__ import annotations

import secrets
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

from sslclm.api.deps import SESSION_COOKIE, PlatformDep, SessionDep, get_principal
from sslclm.api.routes.auth import anonymous_context, clear_session_cookie, set_session_cookie
from sslclm.audit.service import AuditContext
from sslclm.auth import service
from sslclm.auth.schemas import MAX_PASSWORD
from sslclm.auth.throttle import LoginLimits
from sslclm.errors import AuthenticationError, TooManyAttemptsError
from sslclm.web.common import SECURITY_HEADERS, LoginRequiredError, WebPrincipal, web_principal

__all__ = ["LoginRequiredError", "login_required_page", "root_router", "router", "safe_next", "web_principal"]

router = APIRouter(include_in_schema=False)
root_router = APIRouter(include_in_schema=False)

HOME = "/ui/"
LOGIN = "/ui/login"
LOGIN_CSRF_COOKIE = "sslclm_login_csrf"


def safe_next(value: str | None) -> str:
    """Where to go after login: only a page of this UI, never another site (no open redirect)."""
    if not value or not value.isprintable() or "\\" in value:
        return HOME
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith(HOME):
        return HOME
    return value


def _templates(request: Request) -> Jinja2Templates:
    templates: Jinja2Templates = request.app.state.templates
    return templates


def _login_page(
    request: Request, *, status_code: int, error: str | None = None, next_url: str = HOME, username: str = ""
) -> Response:
    token = secrets.token_urlsafe(32)
    response = _templates(request).TemplateResponse(
        request,
        "login.html",
        {"csrf_token": token, "error": error, "next": next_url, "username": username},
        status_code=status_code,
        headers=SECURITY_HEADERS,
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE, token, max_age=3600, path=LOGIN, secure=True, httponly=True, samesite="strict"
    )
    return response


async def login_required_page(request: Request, exc: Exception) -> Response:
    """Exception handler for ``LoginRequiredError``: the login form, status 401."""
    had_session = SESSION_COOKIE in request.cookies
    target = HOME
    if request.method == "GET":
        target = safe_next(
            f"{request.url.path}?{request.url.query}" if request.url.query else request.url.path
        )
    message = exc.message if had_session and isinstance(exc, AuthenticationError) else None
    response = _login_page(request, status_code=401, error=message, next_url=target)
    response.headers["WWW-Authenticate"] = "Bearer"
    if had_session:
        clear_session_cookie(response)
    return response


@root_router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse(HOME, status_code=302)


@router.get("/login")
async def login_form(request: Request, next_url: Annotated[str, Query(alias="next")] = HOME) -> Response:
    try:
        await get_principal(request)
    except AuthenticationError:
        return _login_page(request, status_code=200, next_url=safe_next(next_url))
    return RedirectResponse(safe_next(next_url), status_code=303, headers=SECURITY_HEADERS)


@router.post("/login")
def login_submit(
    request: Request,
    session: SessionDep,
    platform: PlatformDep,
    username: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
    next_url: Annotated[str, Form(alias="next")] = HOME,
) -> Response:
    target = safe_next(next_url)
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not secrets.compare_digest(expected.encode(), csrf_token.encode()):
        return _login_page(
            request, status_code=403, error="The login form expired; please try again.", next_url=target
        )
    if not username or not password:
        return _login_page(
            request,
            status_code=400,
            error="Enter your username and password.",
            next_url=target,
            username=username[:150],
        )
    try:
        if len(username) > 150 or len(password) > MAX_PASSWORD:
            raise AuthenticationError("wrong username or password")
        result = service.login(
            session,
            anonymous_context(request, username),
            username,
            password,
            hours=platform.settings.session_hours,
            limits=LoginLimits.from_settings(platform.settings),
        )
    except AuthenticationError:
        return _login_page(
            request,
            status_code=401,
            error="Wrong username or password.",
            next_url=target,
            username=username[:150],
        )
    except TooManyAttemptsError as exc:
        return _login_page(
            request,
            status_code=429,
            error=f"Too many failed sign-ins: {exc.message.split('; ', 1)[-1]}.",
            next_url=target,
            username=username[:150],
        )
    session.commit()
    response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
    set_session_cookie(response, result.session_id, platform.settings.session_hours)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path=LOGIN, secure=True, httponly=True, samesite="strict")
    return response


@router.post("/logout")
def logout(request: Request, principal: WebPrincipal, session: SessionDep) -> Response:
    raw = request.cookies.get(SESSION_COOKIE)
    if raw:
        ctx = AuditContext(
            actor=principal.actor,
            request_id=getattr(request.state, "request_id", None),
            source_address=request.client.host if request.client else None,
        )
        service.logout(session, ctx, raw)
        session.commit()
    response = RedirectResponse(LOGIN, status_code=303, headers=SECURITY_HEADERS)
    clear_session_cookie(response)
    return response
