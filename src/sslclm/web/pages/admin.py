"""Users (admins manage, auditors read) and API tokens (one's own; admins see everyone's)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Request
from sqlalchemy import select
from starlette.responses import Response

from sslclm.api.deps import PlatformDep, SessionDep
from sslclm.auth import service
from sslclm.auth.models import ApiToken, User
from sslclm.auth.permissions import Permission, Role, role_within
from sslclm.auth.principal import Principal
from sslclm.errors import InvalidInputError, NotFoundError, SslClmError
from sslclm.web.common import WebPrincipal, audit_context, error_message, redirect, render

router = APIRouter(include_in_schema=False)
ROLES = [role.value for role in Role]


def _users_page(
    request: Request, principal: Principal, session: SessionDep, error: str | None = None, status: int = 200
) -> Response:
    return render(
        request,
        "users.html",
        {"users": service.list_users(session), "roles": ROLES, "error": error},
        principal=principal,
        status_code=status,
    )


@router.get("/users")
def users(request: Request, principal: WebPrincipal, session: SessionDep) -> Response:
    principal.require(Permission.USER_READ)
    return _users_page(request, principal, session)


@router.post("/users")
def create_user(
    request: Request,
    principal: WebPrincipal,
    session: SessionDep,
    username: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    role: Annotated[str, Form()] = "viewer",
) -> Response:
    principal.require(Permission.USER_MANAGE)
    try:
        service.create_user(session, audit_context(request, principal), username.strip(), password, role)
        session.commit()
    except SslClmError as exc:
        session.rollback()
        return _users_page(request, principal, session, error_message(exc), exc.http_status)
    return redirect("/ui/users", "created")


@router.post("/users/{username}")
def update_user(
    username: str,
    request: Request,
    principal: WebPrincipal,
    session: SessionDep,
    role: Annotated[str, Form()] = "",
    disabled: Annotated[str, Form()] = "",
) -> Response:
    principal.require(Permission.USER_MANAGE)
    try:
        user = service.get_user(session, username)
        service.update_user(
            session, audit_context(request, principal), user, role=role or None, disabled=disabled == "1"
        )
        session.commit()
    except SslClmError as exc:
        session.rollback()
        return _users_page(request, principal, session, error_message(exc), exc.http_status)
    return redirect("/ui/users", "updated")


def _tokens_page(
    request: Request,
    principal: Principal,
    session: SessionDep,
    *,
    error: str | None = None,
    secret: str | None = None,
    status: int = 200,
) -> Response:
    stmt = (
        select(ApiToken, User.username).join(User, User.id == ApiToken.user_id).order_by(ApiToken.id.desc())
    )
    if not principal.can(Permission.TOKEN_MANAGE):
        stmt = stmt.where(ApiToken.user_id == principal.user_id)
    rows = session.execute(stmt.limit(200)).all()
    roles = [r for r in ROLES if role_within(r, principal.role)]
    return render(
        request,
        "tokens.html",
        {"tokens": rows, "roles": roles, "error": error, "secret": secret},
        principal=principal,
        status_code=status,
    )


def _token_holder(principal: Principal) -> None:
    if not (principal.can(Permission.TOKEN_OWN) or principal.can(Permission.TOKEN_MANAGE)):
        principal.require(Permission.TOKEN_OWN)


@router.get("/tokens")
def tokens(request: Request, principal: WebPrincipal, session: SessionDep) -> Response:
    _token_holder(principal)
    return _tokens_page(request, principal, session)


@router.post("/tokens")
def create_token(
    request: Request,
    principal: WebPrincipal,
    session: SessionDep,
    platform: PlatformDep,
    name: Annotated[str, Form()] = "",
    role: Annotated[str, Form()] = "",
    expires_in_days: Annotated[str, Form()] = "",
) -> Response:
    _token_holder(principal)
    try:
        owner = session.get(User, principal.user_id) if principal.user_id is not None else None
        if owner is None:
            raise InvalidInputError("only a signed-in user can own a token", field="user")
        if not name.strip() or len(name) > 150:
            raise InvalidInputError("give the token a name of 1-150 characters", field="name")
        chosen = role or principal.role
        if chosen not in ROLES or not role_within(chosen, principal.role):
            raise InvalidInputError(
                f"a token cannot have more rights than you ('{principal.role}')", field="role"
            )
        expires_at = None
        if expires_in_days.strip():
            if not expires_in_days.strip().isdigit() or not 1 <= int(expires_in_days) <= 3650:
                raise InvalidInputError("expiry is 1-3650 days", field="expires_in_days")
            expires_at = platform.clock() + timedelta(days=int(expires_in_days))
        issued = service.create_token(
            session,
            audit_context(request, principal),
            owner,
            name.strip(),
            role=chosen,
            expires_at=expires_at,
        )
        session.commit()
    except SslClmError as exc:
        session.rollback()
        return _tokens_page(request, principal, session, error=error_message(exc), status=exc.http_status)
    # The secret is shown once, on this response only (no-store), and never stored.
    return _tokens_page(request, principal, session, secret=issued.secret, status=201)


@router.post("/tokens/{token_id}/revoke")
def revoke_token(token_id: int, request: Request, principal: WebPrincipal, session: SessionDep) -> Response:
    _token_holder(principal)
    try:
        token = session.get(ApiToken, token_id)
        if token is None or (
            token.user_id != principal.user_id and not principal.can(Permission.TOKEN_MANAGE)
        ):
            raise NotFoundError(f"no API token with id {token_id}", field="token_id")
        service.revoke_token(session, audit_context(request, principal), token)
        session.commit()
        request.app.state.token_cache.forget_token(token.id)
    except SslClmError as exc:
        session.rollback()
        return _tokens_page(request, principal, session, error=error_message(exc), status=exc.http_status)
    return redirect("/ui/tokens", "revoked")
