"""User accounts: list and read (user:read), create and change (user:manage)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.status import HTTP_201_CREATED

from sslclm.api.deps import AuditDep, PlatformDep, SessionDep, get_principal, require
from sslclm.api.routes.auth import forget_initial_password
from sslclm.audit.service import AuditContext
from sslclm.auth import service
from sslclm.auth.models import ApiToken, User
from sslclm.auth.permissions import Permission, Role, role_within
from sslclm.auth.principal import Principal
from sslclm.auth.schemas import UserCreate, UserOut, UserUpdate
from sslclm.errors import ConflictError

# Authentication at router level runs before any body or path validation, so an anonymous
# caller gets 401 and never learns what a valid request would look like.
router = APIRouter(prefix="/users", tags=["users"], dependencies=[Depends(get_principal)])

UserReader = Annotated[Principal, Depends(require(Permission.USER_READ))]
UserManager = Annotated[Principal, Depends(require(Permission.USER_MANAGE))]


@router.get("", response_model=list[UserOut])
def list_users(_: UserReader, session: SessionDep) -> list[UserOut]:
    return [UserOut.of(user) for user in service.list_users(session)]


@router.post("", response_model=UserOut, status_code=HTTP_201_CREATED)
def create_user(body: UserCreate, _: UserManager, session: SessionDep, ctx: AuditDep) -> UserOut:
    user = service.create_user(session, ctx, body.username, body.password.get_secret_value(), body.role)
    session.commit()
    return UserOut.of(user)


@router.get("/{username}", response_model=UserOut)
def get_user(username: str, _: UserReader, session: SessionDep) -> UserOut:
    return UserOut.of(service.get_user(session, username))


def _keep_an_admin(session: Session, user: User, body: UserUpdate) -> None:
    """Refuses to demote or disable the last enabled admin: nobody could manage users afterwards."""
    if user.role != Role.ADMIN or user.disabled:
        return
    demoted = body.role is not None and body.role != Role.ADMIN
    if not demoted and body.disabled is not True:
        return
    others = session.execute(
        select(func.count())
        .select_from(User)
        .where(User.role == Role.ADMIN.value, User.disabled.is_(False), User.id != user.id)
    ).scalar_one()
    if others == 0:
        field = "role" if demoted else "disabled"
        raise ConflictError(f"'{user.username}' is the last enabled admin", field=field)


def _tokens_of(session: Session, user: User) -> Sequence[ApiToken]:
    return (
        session.execute(select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None)))
        .scalars()
        .all()
    )


def _revoke_tokens_above(session: Session, ctx: AuditContext, user: User) -> None:
    """A token may never outrank its owner, so a demotion revokes the tokens the new role cannot hold."""
    for token in _tokens_of(session, user):
        if not role_within(token.role, user.role):
            service.revoke_token(session, ctx, token)


@router.patch("/{username}", response_model=UserOut)
def update_user(
    username: str,
    body: UserUpdate,
    _: UserManager,
    request: Request,
    session: SessionDep,
    ctx: AuditDep,
    platform: PlatformDep,
) -> UserOut:
    """Changes role, disabled flag or password. Disabling or a new password ends the user's UI sessions."""
    user = service.get_user(session, username)
    _keep_an_admin(session, user, body)
    old_role = user.role
    token_ids = [token.id for token in _tokens_of(session, user)]
    service.update_user(
        session,
        ctx,
        user,
        role=body.role,
        disabled=body.disabled,
        password=body.password.get_secret_value() if body.password is not None else None,
    )
    if user.role != old_role:
        _revoke_tokens_above(session, ctx, user)
    session.commit()
    # This node trusts a verified token for a few seconds; drop them so a new role or a disable
    # applies to the next request.
    for token_id in token_ids:
        request.app.state.token_cache.forget_token(token_id)
    if body.password is not None:
        forget_initial_password(platform, user)
    return UserOut.of(user)
