"""API tokens: everyone sees their own; token:own creates and revokes one's own; token:manage anyone's.

The secret is returned once, in the creation response, and stored only as a hash.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy import select
from starlette.status import HTTP_201_CREATED

from sslclm.api.deps import AuditDep, CurrentPrincipal, PlatformDep, SessionDep, get_principal, require
from sslclm.auth import service
from sslclm.auth.models import ApiToken, User
from sslclm.auth.permissions import Permission, Role, role_within
from sslclm.auth.principal import Principal
from sslclm.auth.schemas import Page, TokenCreate, TokenCreated, TokenOut, TokenQuery
from sslclm.core.clock import as_utc
from sslclm.errors import InvalidInputError, NotFoundError

router = APIRouter(prefix="/tokens", tags=["tokens"], dependencies=[Depends(get_principal)])

KNOWN_ROLES = frozenset(role.value for role in Role)
TokenHolder = Annotated[Principal, Depends(require(Permission.TOKEN_OWN))]


@router.get("", response_model=Page[TokenOut])
def list_tokens(
    query: Annotated[TokenQuery, Query()], principal: CurrentPrincipal, session: SessionDep
) -> Page[TokenOut]:
    """The caller's tokens; with token:manage everyone's, or one user's with ``?user=``. Oldest first."""
    statement = select(ApiToken, User.username).join(User, User.id == ApiToken.user_id)
    if query.user is not None and query.user != principal.username:
        principal.require(Permission.TOKEN_MANAGE)
        statement = statement.where(User.username == query.user)
    elif query.user is not None or not principal.can(Permission.TOKEN_MANAGE):
        statement = statement.where(ApiToken.user_id == principal.user_id)
    if query.cursor is not None:
        statement = statement.where(ApiToken.id > query.cursor)
    rows = session.execute(statement.order_by(ApiToken.id).limit(query.limit + 1)).all()
    items = [TokenOut.of(token, username) for token, username in rows[: query.limit]]
    return Page[TokenOut](items=items, next_cursor=items[-1].id if len(rows) > query.limit else None)


def _default_role(principal: Principal, owner: User) -> str:
    # A caller working through a narrower token mints at most what that token may do.
    return owner.role if role_within(owner.role, principal.role) else principal.role


@router.post("", response_model=TokenCreated, status_code=HTTP_201_CREATED)
def create_token(
    body: TokenCreate,
    principal: TokenHolder,
    response: Response,
    session: SessionDep,
    ctx: AuditDep,
    platform: PlatformDep,
) -> TokenCreated:
    owner: User | None
    if body.user is not None and body.user != principal.username:
        principal.require(Permission.TOKEN_MANAGE)
        owner = service.get_user(session, body.user)
    else:
        owner = session.get(User, principal.user_id) if principal.user_id is not None else None
    if owner is None:
        raise InvalidInputError("name the user who owns the token", field="user")
    role = body.role or _default_role(principal, owner)
    # An unknown role is left to the service, which names the valid ones.
    if role in KNOWN_ROLES and not role_within(role, principal.role):
        raise InvalidInputError(
            f"a token cannot have more rights than the caller ('{principal.role}')", field="role"
        )
    expires_at: datetime | None = None
    if body.expires_in_days is not None:
        expires_at = platform.clock() + timedelta(days=body.expires_in_days)
    elif body.expires_at is not None:
        expires_at = as_utc(body.expires_at)
    issued = service.create_token(session, ctx, owner, body.name, role=role, expires_at=expires_at)
    session.commit()
    response.headers["Cache-Control"] = "no-store"
    out = TokenOut.of(issued.token, owner.username)
    return TokenCreated(**out.model_dump(), token=issued.secret)


@router.delete("/{token_id}", response_model=TokenOut)
def revoke_token(
    token_id: int, principal: TokenHolder, request: Request, session: SessionDep, ctx: AuditDep
) -> TokenOut:
    """Revokes a token at once on this node (other nodes stop trusting it within seconds)."""
    token = session.get(ApiToken, token_id)
    # Someone else's token is reported as missing, so ids cannot be probed for existence.
    if token is None or (token.user_id != principal.user_id and not principal.can(Permission.TOKEN_MANAGE)):
        raise NotFoundError(f"no API token with id {token_id}", field="token_id")
    service.revoke_token(session, ctx, token)
    owner = session.get(User, token.user_id)
    session.commit()
    request.app.state.token_cache.forget_token(token.id)
    return TokenOut.of(token, owner.username if owner else "")
