"""Login, logout, "who am I" and changing one's own password.

Login is the one public route here. The session cookie is Secure, HttpOnly and SameSite=Strict;
the CSRF token returned with it must accompany every changing request made with the cookie.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.status import HTTP_204_NO_CONTENT

from sslclm.api.deps import SESSION_COOKIE, AuditDep, CurrentPrincipal, PlatformDep, SessionDep
from sslclm.audit.service import AuditContext, record
from sslclm.auth import service
from sslclm.auth.bootstrap import PASSWORD_FILE
from sslclm.auth.models import User
from sslclm.auth.schemas import LoginRequest, LoginResponse, PasswordChange, PrincipalOut
from sslclm.auth.secrets import verify_password
from sslclm.auth.throttle import LoginLimits
from sslclm.core.platform import Platform
from sslclm.errors import AuthenticationError, InvalidInputError

router = APIRouter(prefix="/auth", tags=["auth"])
NO_STORE = {"Cache-Control": "no-store"}


def anonymous_context(request: Request, claimed: str) -> AuditContext:
    """Audit context for a request made before anyone is authenticated: named by the claimed user."""
    return AuditContext(
        actor=claimed[:150],
        request_id=getattr(request.state, "request_id", None),
        source_address=request.client.host if request.client else None,
    )


def set_session_cookie(response: Response, session_id: str, hours: int) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=hours * 3600,
        path="/",
        secure=True,
        httponly=True,
        samesite="strict",
    )


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")


def forget_initial_password(platform: Platform, user: User) -> None:
    """The generated first-admin password file is only a reminder until that admin picks a password."""
    if user.username == platform.settings.admin_username:
        (platform.settings.home / PASSWORD_FILE).unlink(missing_ok=True)


@router.post(
    "/login",
    response_model=LoginResponse,
    responses={401: {"description": "Wrong credentials"}, 429: {"description": "Too many failed logins"}},
)
def login(
    body: LoginRequest, request: Request, response: Response, session: SessionDep, platform: PlatformDep
) -> LoginResponse:
    """Opens a UI session: sets the session cookie and returns the CSRF token that goes with it."""
    result = service.login(
        session,
        anonymous_context(request, body.username),
        body.username,
        body.password.get_secret_value(),
        hours=platform.settings.session_hours,
        limits=LoginLimits.from_settings(platform.settings),
    )
    session.commit()
    set_session_cookie(response, result.session_id, platform.settings.session_hours)
    response.headers.update(NO_STORE)
    return LoginResponse(
        username=result.user.username,
        role=result.user.role,
        csrf_token=result.csrf_token,
        expires_at=result.expires_at,
    )


@router.post("/logout", status_code=HTTP_204_NO_CONTENT)
def logout(request: Request, principal: CurrentPrincipal, session: SessionDep, ctx: AuditDep) -> Response:
    """Ends the UI session named by the cookie. A bearer token is revoked with DELETE /tokens/{id} instead."""
    raw = request.cookies.get(SESSION_COOKIE)
    if raw:
        service.logout(session, ctx, raw)
        session.commit()
    response = Response(status_code=HTTP_204_NO_CONTENT)
    clear_session_cookie(response)
    return response


@router.get("/me", response_model=PrincipalOut)
def me(principal: CurrentPrincipal, response: Response) -> PrincipalOut:
    response.headers.update(NO_STORE)
    return PrincipalOut(
        username=principal.username,
        role=principal.role,
        via=principal.via,
        token_id=principal.token_id,
        csrf_token=principal.csrf_token,
    )


@router.post("/password", status_code=HTTP_204_NO_CONTENT)
def change_own_password(
    body: PasswordChange,
    principal: CurrentPrincipal,
    session: SessionDep,
    ctx: AuditDep,
    platform: PlatformDep,
) -> Response:
    """Changes the caller's own password; every role may. Open UI sessions end, so log in again."""
    user = session.get(User, principal.user_id) if principal.user_id is not None else None
    if user is None:
        raise AuthenticationError("only a user account has a password to change")
    # The current password is asked for so that a stolen session or token cannot take over the account.
    if not verify_password(user.password_hash, body.current_password.get_secret_value()):
        record(session, ctx, "auth.password-change-failed", "user", user.id, {"username": user.username})
        session.commit()
        raise InvalidInputError("the current password is wrong", field="current_password")
    try:
        service.update_user(session, ctx, user, password=body.new_password.get_secret_value())
    except InvalidInputError as exc:
        raise InvalidInputError(exc.message, field="new_password") from None
    session.commit()
    forget_initial_password(platform, user)
    response = Response(status_code=HTTP_204_NO_CONTENT)
    clear_session_cookie(response)
    return response
